"""Linear cross-entropy without the (L, vocab) logits: pure PyTorch (no ms-swift), used by the
training loss (:mod:`swift_plugins.training.fused_loss`) and the benchmarks (also on the GPU machine).

transformers computes ``logits = lm_head(hidden)`` for every kept position, upcasts them to fp32
and takes the cross-entropy: at L tokens and Qwen's 151,936-row vocabulary that is L x 151,936
x (2 + 4 + 4) bytes (bf16 logits, fp32 copy, its gradient), 30 GB at L = 20,000. Here the
tokens go through ``lm_head`` a chunk at a time; each chunk's loss AND gradients (hidden states,
and ``lm_head`` when it trains) are computed at once and the chunk's logits freed, so the peak
is one chunk x vocab (``LOSS_CHUNK_TOKENS`` tokens)::

    hidden (N, H) --chunk c--> logits_c = (h_c @ W.T).float()      (c, V), one buffer, freed after the chunk
                                 loss    += sum over valid t of logsumexp(logits_c[t]) - logits_c[t, y_t]
                                 dlogits  = softmax(logits_c) - onehot(y)   (rows with y = -100: 0)
                                 grad_h[c] = dlogits @ W ;  grad_W += dlogits.T @ h_c   (if W trains)
    backward: grad_h * g, grad_W * g   (g: the upstream gradient of the summed loss)

Backends, chosen in :func:`loss_backend` only: liger-kernel's fused kernel (Triton) on CUDA when
it is installed, else the chunked PyTorch path below (CPU and CUDA).

DeepSpeed ZeRO-3 partitions ``lm_head``: its weight is gathered for the forward (:func:`gathered`);
the backward only scales the gradients computed there, so it needs no second gather. When that
weight trains (full tuning), its gradient must reach DeepSpeed's own reduce-scatter, which runs
when a gradient accumulates into a parameter that DeepSpeed's module hooks gathered for the
backward. So the (V, H) gradient G computed in the chunks is handed over through the layer itself
(:func:`_through_layer`)::

    probe = sum(layer(I_H) * G.T)      layer(I_H) = W.T (H, V), DeepSpeed gathers W for the call
    loss  = loss_sum + (probe - probe.detach())      same value; d loss / d W = G, reduce-scattered

The tradeoff in numbers: the probe costs H^2 * V multiply-adds forward and as many backward, next
to the loss's own 3 * L * H * V (logits, grad_h, grad_W): a fraction 2H / (3L) more, 17% at
H = 4096, L = 16,384; in memory one (H, V) output the size of the weight, besides the fp32 (V, H)
gradient every full-tuning fused loss keeps. This route always takes the chunked path.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Optional, Tuple

import torch

from swift_plugins.analysis.memory import LOSS_CHUNK_TOKENS

__all__ = ["BACKEND_CHUNKED", "BACKEND_LIGER", "IGNORE_INDEX", "LinearCrossEntropy", "gathered",
           "gradient_through_layer", "linear_cross_entropy", "loss_backend", "partitioned", "shift_targets"]

IGNORE_INDEX = -100
BACKEND_CHUNKED, BACKEND_LIGER = "chunked", "liger"


def loss_backend(device: torch.device) -> str:
    """THE one place a backend is chosen: liger-kernel on CUDA when importable, else chunked PyTorch."""
    if torch.device(device).type == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        return BACKEND_LIGER
    return BACKEND_CHUNKED


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """``labels[t + 1]`` at position t, -100 at the last position (transformers' ``ForCausalLMLoss``).

    ``[[-100, 5, 6]] -> [[5, 6, -100]]``
    """
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def partitioned(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a DeepSpeed ZeRO-3 partitioned parameter (it carries a ``ds_id``)."""
    return getattr(weight, "ds_id", None) is not None


def gradient_through_layer(weight: torch.Tensor) -> bool:
    """Whether the loss sends ``weight``'s gradient through its layer: a partitioned weight that trains,
    with gradients on (module docstring)."""
    return partitioned(weight) and weight.requires_grad and torch.is_grad_enabled()


@contextlib.contextmanager
def gathered(weight: torch.nn.Parameter):
    """The full ``weight`` inside: a DeepSpeed ZeRO-3 partitioned parameter is gathered (all ranks
    take part), any other tensor is used as it is."""
    if not partitioned(weight):
        yield weight
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
        yield weight


class LinearCrossEntropy(torch.autograd.Function):
    """``apply(hidden (N, H), weight (V, H), targets (N,), chunk, weight_grad_out=False)`` -> (summed
    loss (fp32 scalar), per-token loss (N,) fp32, argmax prediction (N,) int64, the weight's gradient
    of the sum (V, H) fp32 when ``weight_grad_out``, else an empty tensor); only the sum has a gradient.

    Worked example: hidden [[1, 0]], weight [[0, 0], [ln 3, 0]] -> logits [0, ln 3] (softmax
    [1/4, 3/4]); target 1: loss = -ln(3/4) = 0.2877, prediction 1, d loss / d logits = [1/4, -1/4].
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, weight_grad_out: bool = False):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or weight_grad_out
        n = hidden.shape[0]
        token_loss = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        preds = torch.empty(n, dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, n, chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.T).float()  # as transformers: logits in the model dtype, then upcast
            valid = t != IGNORE_INDEX
            safe = torch.where(valid, t, 0)
            picked = logits.gather(1, safe[:, None])
            top, best = logits.max(dim=-1, keepdim=True)
            preds[start:start + chunk] = best[:, 0]
            total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # in place: one (chunk, V) buffer
            token_loss[start:start + chunk] = ((top + total.log() - picked)[:, 0]) * valid
            if need_h or need_w:
                dlogits = logits.div_(total)  # softmax
                dlogits.scatter_add_(1, safe[:, None], -valid[:, None].to(dlogits.dtype))
                dlogits.mul_(valid[:, None])
                dlogits = dlogits.to(hidden.dtype)
                if need_h:
                    grad_h[start:start + chunk] = dlogits @ weight
                if need_w:
                    grad_w.addmm_(dlogits.T.float(), h.float())
                del dlogits  # the same buffer as logits: both names go, or the next chunk's allocation doubles the peak
            del logits
        # weight_grad_out: the weight's gradient is handed out, not back through autograd (it came in detached)
        out_w = grad_w if weight_grad_out else torch.empty(0, device=hidden.device)
        saved_w = None if weight_grad_out else grad_w
        ctx.save_for_backward(*(g for g in (grad_h, saved_w) if g is not None))
        ctx.has, ctx.dtypes = (need_h, saved_w is not None), (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(token_loss, preds, out_w)
        return token_loss.sum(), token_loss, preds, out_w

    @staticmethod
    def backward(ctx, grad_loss, _grad_tokens, _grad_preds, _grad_w):
        saved = list(ctx.saved_tensors)
        grads = [None, None]
        for k in (0, 1):
            if ctx.has[k]:
                grads[k] = (saved.pop(0).float() * grad_loss).to(ctx.dtypes[k])
        return grads[0], grads[1], None, None, None


def _liger(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy, summed over the valid tokens (CUDA, Triton)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = LOSS_CHUNK_TOKENS,
                         layer: Optional[torch.nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum of ``cross_entropy(hidden @ weight.T, targets)`` over the tokens with ``targets != -100``,
    with its per-token losses and argmax predictions, never holding more than ``chunk`` rows of logits.

    ``hidden`` (N, H), ``weight`` (V, H), ``targets`` (N,). A ZeRO-3 partitioned ``weight`` is
    gathered; when it also trains, ``layer`` is the module that owns it (``lm_head``), through
    which its gradient goes (module docstring). On the liger backend the gradient comes from
    liger's kernel and the per-token numbers from a no-grad chunked pass.
    """
    if gradient_through_layer(weight):
        return _through_layer(hidden, weight, targets, chunk, layer)
    with gathered(weight) as w:
        if loss_backend(hidden.device) == BACKEND_LIGER and torch.is_grad_enabled():
            loss = _liger(hidden, w, targets)
            with torch.no_grad():
                _, token_loss, preds = _apply(hidden.detach(), w.detach(), targets, chunk)
            return loss, token_loss, preds
        return _apply(hidden, w, targets, chunk)


def _apply(hidden, weight, targets, chunk):
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk)[:3]


def _through_layer(hidden, weight, targets, chunk, layer):
    """A trained ZeRO-3 partitioned weight: its gradient reaches DeepSpeed through ``layer`` (module docstring)."""
    if layer is None or layer.weight is not weight:
        raise ValueError("a trained ZeRO-3 partitioned weight needs the layer that owns it (layer=lm_head)")
    with gathered(weight) as w:
        loss, token_loss, preds, grad_w = LinearCrossEntropy.apply(hidden, w.detach(), targets, chunk, True)
    eye = torch.eye(weight.ds_shape[1], dtype=weight.dtype, device=hidden.device)
    probe = (layer(eye) * grad_w.T.to(weight.dtype)).sum()
    return loss + (probe - probe.detach()), token_loss, preds
