"""Fused linear cross-entropy: the training loss without the (L, vocab) logits.

transformers computes ``logits = lm_head(hidden)`` for every kept position, upcasts them to fp32
and takes the cross-entropy: at L tokens and Qwen's 151,936-row vocabulary that is L x 151,936
x (2 + 4 + 4) bytes (bf16 logits, fp32 copy, its gradient), 30 GB at L = 20,000. Here the
tokens go through ``lm_head`` a chunk at a time; each chunk's loss AND gradients (hidden states,
and ``lm_head`` when it trains) are computed at once and the chunk's logits freed, so the peak
is one chunk x vocab (``LOSS_CHUNK_TOKENS`` tokens)::

    hidden (N, H) --chunk c--> logits_c = (h_c @ W.T).float()      (c, V), freed after the chunk
                                 loss    += sum over valid t of logsumexp(logits_c[t]) - logits_c[t, y_t]
                                 dlogits  = softmax(logits_c) - onehot(y)   (rows with y = -100: 0)
                                 grad_h[c] = dlogits @ W ;  grad_W += dlogits.T @ h_c   (if W trains)
    backward: grad_h * g, grad_W * g   (g: the upstream gradient of the summed loss)

The numbers are today's: ignore index -100, ``logits[t]`` predicts ``labels[t + 1]``, the sum over
tokens divided by ``num_items_in_batch`` (the token count of the whole optimizer step, as ms-swift
and transformers weight it) or, without it, by this batch's label tokens.

How it plugs into ms-swift, without patching a class: ms-swift's loss registry. The config key
``training.fused_loss`` (default true) sets ``--loss_type swiftpack_fused_ce``; ms-swift builds
:class:`FusedCrossEntropyLoss` with the trainer and calls it with the model outputs. Before the
forward, :meth:`FusedCrossEntropyLoss.prepare_inputs` (called by the trainer's
:class:`~swift_plugins.training.metrics.BatchRecorder`) asks the model, through two forward
arguments transformers provides, for no logits (``logits_to_keep`` = an all-false mask) and for
the final hidden states (``output_hidden_states=[last layer]``: only that layer is kept).
``token_acc`` is computed from the chunks' argmax; ``eval_token_mean_loss`` from the per-token
losses. Backends, chosen in :func:`loss_backend` only: liger-kernel's fused kernel (Triton) on
CUDA when it is installed, else the chunked PyTorch path below (CPU and CUDA).
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Optional, Tuple

import torch
from swift.loss import BaseLoss, loss_map
from swift.utils import get_logger

from swift_plugins.analysis.memory import LOSS_CHUNK_TOKENS
from swift_plugins.errors import UserError
from swift_plugins.names import FUSED_LOSS

__all__ = ["BACKEND_CHUNKED", "BACKEND_LIGER", "IGNORE_INDEX", "FusedCrossEntropyLoss", "LinearCrossEntropy",
           "gathered", "linear_cross_entropy", "loss_backend", "loss_path_line", "output_weight", "register",
           "shift_targets"]

IGNORE_INDEX = -100
BACKEND_CHUNKED, BACKEND_LIGER = "chunked", "liger"
logger = get_logger()


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


@contextlib.contextmanager
def gathered(weight: torch.nn.Parameter):
    """The full ``weight`` inside: a DeepSpeed ZeRO-3 partitioned parameter is gathered (all ranks
    take part), any other tensor is used as it is."""
    if getattr(weight, "ds_id", None) is None:
        yield weight
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
        yield weight


class LinearCrossEntropy(torch.autograd.Function):
    """``apply(hidden (N, H), weight (V, H), targets (N,), chunk)`` -> (summed loss (fp32 scalar),
    per-token loss (N,) fp32, argmax prediction (N,) int64); only the sum has a gradient.

    Worked example: hidden [[1, 0]], weight [[0, 0], [ln 3, 0]] -> logits [0, ln 3] (softmax
    [1/4, 3/4]); target 1: loss = -ln(3/4) = 0.2877, prediction 1, d loss / d logits = [1/4, -1/4].
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
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
            del logits
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has, ctx.dtypes = (need_h, need_w), (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(token_loss, preds)
        return token_loss.sum(), token_loss, preds

    @staticmethod
    def backward(ctx, grad_loss, _grad_tokens, _grad_preds):
        saved = list(ctx.saved_tensors)
        grads = [None, None]
        for k in (0, 1):
            if ctx.has[k]:
                grads[k] = (saved.pop(0).float() * grad_loss).to(ctx.dtypes[k])
        return grads[0], grads[1], None, None


def _liger(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy, summed over the valid tokens (CUDA, Triton)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = LOSS_CHUNK_TOKENS) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum of ``cross_entropy(hidden @ weight.T, targets)`` over the tokens with ``targets != -100``,
    with its per-token losses and argmax predictions, never holding more than ``chunk`` rows of logits.

    ``hidden`` (N, H), ``weight`` (V, H) (a ZeRO-3 partitioned one is gathered), ``targets`` (N,).
    On the liger backend the gradient comes from liger's kernel and the per-token numbers from a
    no-grad chunked pass.
    """
    with gathered(weight) as w:
        if loss_backend(hidden.device) == BACKEND_LIGER and torch.is_grad_enabled():
            loss = _liger(hidden, w, targets)
            with torch.no_grad():
                _, token_loss, preds = _apply(hidden.detach(), w.detach(), targets, chunk)
            return loss, token_loss, preds
        return _apply(hidden, w, targets, chunk)


def _apply(hidden, weight, targets, chunk):
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk)


def loss_path_line(device: torch.device, fused: bool) -> str:
    """The start-up log line naming the loss path that runs."""
    if not fused:
        return "swiftpack loss: full logits (transformers' cross-entropy over (L, vocab) fp32 logits; training.fused_loss false)"
    if loss_backend(device) == BACKEND_LIGER:
        return "swiftpack loss: fused linear cross-entropy (liger-kernel, CUDA); no (L, vocab) logits"
    return (f"swiftpack loss: fused linear cross-entropy (chunked PyTorch, {LOSS_CHUNK_TOKENS} tokens per chunk); "
            f"no (L, vocab) logits")


class FusedCrossEntropyLoss(BaseLoss):
    """ms-swift's ``compute_loss_func`` for ``--loss_type swiftpack_fused_ce`` (see the module docstring).

    Attaches the trainer's :class:`~swift_plugins.training.metrics.BatchRecorder`, which calls
    :meth:`prepare_inputs` before every forward; ``eval_rows`` holds the last batch's per-row
    (loss sum, label tokens) for ``eval_token_mean_loss``.
    """

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        from swift_plugins.training.metrics import BatchRecorder

        self._keep = None
        self.eval_rows: Optional[torch.Tensor] = None
        BatchRecorder.attach(trainer)
        logger.info(loss_path_line(args.device, fused=True))

    def prepare_inputs(self, model, inputs: dict) -> None:
        """Ask the model for the last hidden states and no logits; remember which positions ms-swift kept."""
        if "labels" not in inputs:
            return
        keep = inputs.get("logits_to_keep")
        self._keep = None if isinstance(keep, int) and keep == 0 else keep  # 0: every position
        ids = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
        length = ids.shape[1]
        config = self.trainer.model.config  # ``model`` may be a DDP / DeepSpeed wrapper
        config = getattr(config, "text_config", config)
        inputs["logits_to_keep"] = torch.zeros(length, dtype=torch.bool, device=ids.device)
        inputs["output_hidden_states"] = [config.num_hidden_layers - 1]

    def __call__(self, outputs, labels, *, num_items_in_batch=None, loss_scale=None, **kwargs) -> torch.Tensor:
        if loss_scale is not None:
            raise UserError("training.fused_loss: ms-swift passed a per-token loss_scale, which the fused loss does "
                            "not apply (set training.fused_loss false)")
        hidden = _kept(outputs.hidden_states[-1], self._keep)
        targets = shift_targets(labels).to(hidden.device)
        weight = output_weight(self.trainer.model)
        loss_sum, token_loss, preds = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                           targets.reshape(-1))
        if num_items_in_batch is None:
            num_items_in_batch = (targets != IGNORE_INDEX).sum()
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        self._record(token_loss.view(targets.shape), preds.view(targets.shape), labels, targets)
        outputs.logits = outputs.hidden_states = None  # nothing of size (L, vocab); ms-swift skips its acc
        return loss_sum / num_items_in_batch

    def _record(self, token_loss, preds, labels, targets) -> None:
        """token_acc as ms-swift's ``_compute_acc`` logs it; the per-row sums for the eval token mean."""
        from swift.metrics import compute_acc

        trainer = self.trainer
        mode = "train" if trainer.model.training else "eval"
        if not (self.args.acc_strategy == "seq" and trainer.template.padding_free):
            for key, value in compute_acc(preds, labels, acc_strategy=self.args.acc_strategy).items():
                trainer.custom_metrics[mode][key].update(value)
        else:
            logger.warning_once("swiftpack loss: acc_strategy seq of packed rows is not logged with the fused loss")
        valid = targets != IGNORE_INDEX
        self.eval_rows = torch.stack([token_loss.double().sum(dim=1), valid.sum(dim=1).double()], dim=1)


def _kept(hidden: torch.Tensor, keep) -> torch.Tensor:
    """The hidden states of the positions ms-swift kept logits for (``logits_to_keep``: a mask or a suffix length)."""
    if keep is None:
        return hidden
    if isinstance(keep, int):
        return hidden[:, -keep:]
    return hidden[:, keep.to(hidden.device)]


def output_weight(model) -> torch.nn.Parameter:
    """``lm_head.weight`` of ``model`` (a PeftModel or the model); refuses an adapted or biased lm_head."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise UserError(f"training.fused_loss: the output layer is a {type(head).__name__} (an adapter on lm_head, or a "
                        f"bias); the fused loss reads a plain lm_head weight (set training.fused_loss false)")
    return head.weight


def register() -> None:
    """``loss_map['swiftpack_fused_ce']`` (idempotent)."""
    loss_map[FUSED_LOSS] = FusedCrossEntropyLoss
