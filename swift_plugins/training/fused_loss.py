"""The fused loss inside ms-swift: ``--loss_type swiftpack_fused_ce`` (``training.fused_loss``, default true).

The numbers are today's: ignore index -100, ``logits[t]`` predicts ``labels[t + 1]``, the sum over
tokens divided by ``num_items_in_batch`` (the token count of the whole optimizer step, as ms-swift
and transformers weight it) or, without it, by this batch's label tokens; computed by
:func:`swift_plugins.training.linear_ce.linear_cross_entropy` a chunk of tokens at a time.

How it plugs into ms-swift, without patching a class: ms-swift's loss registry. The config key
``training.fused_loss`` sets ``--loss_type swiftpack_fused_ce``; ms-swift builds
:class:`FusedCrossEntropyLoss` with the trainer and calls it with the model outputs. Before the
forward, :meth:`FusedCrossEntropyLoss.prepare_inputs` (called by the trainer's
:class:`~swift_plugins.training.metrics.BatchRecorder`) asks the model, through two forward
argument transformers provides, for no logits (``logits_to_keep`` = an all-false mask); the final
hidden states are what the decoder's final norm returns, kept by a forward hook on that module
(torch's hook API; it also sees them under ms-swift's DeepSpeed forward of Qwen3-VL, which returns
only ``last_hidden_state`` and drops ``hidden_states``)::

    BatchRecorder.compute_loss -> prepare_inputs: logits_to_keep=[False] * L
      ms-swift compute_loss -> model(...) -> decoder.norm output (B, L, H) kept, logits (B, 0, V)
        FusedCrossEntropyLoss(outputs, labels, num_items_in_batch): hidden at ms-swift's kept positions
          -> linear_cross_entropy(hidden, lm_head.weight, labels shifted, layer=lm_head) / num_items_in_batch
          -> token_acc (ms-swift's compute_acc on the chunks' argmax), per-row sums for eval_token_mean_loss

Not supported (refused or said): an adapter on lm_head (UserError), ms-swift's per-token
``loss_scale`` (UserError), ``acc_strategy seq`` on packed rows (not logged, a warning), eval
metrics that read the logits (``eval_metric``: UserError; set ``training.fused_loss false``).
"""
from __future__ import annotations

from typing import Optional

import torch
from swift.loss import BaseLoss, loss_map
from swift.utils import get_logger

from swift_plugins.analysis.memory import LOSS_CHUNK_TOKENS
from swift_plugins.errors import UserError
from swift_plugins.names import FUSED_LOSS
from swift_plugins.training.linear_ce import (BACKEND_LIGER, IGNORE_INDEX, gradient_through_layer,
                                              linear_cross_entropy, loss_backend, shift_targets)

__all__ = ["FusedCrossEntropyLoss", "ZERO3_TRAINED_LINE", "loss_path_line", "output_layer", "register"]

logger = get_logger()
ZERO3_TRAINED_LINE = ("swiftpack loss: lm_head is trained and partitioned by DeepSpeed ZeRO-3; its gradient goes to "
                      "DeepSpeed's reduce-scatter through lm_head (one (hidden, vocab) probe per step)")


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

        if getattr(args, "eval_metric", None) is not None:
            raise UserError(f"swift.eval_metric: {args.eval_metric} reads the logits, which the fused loss never builds "
                            f"(set training.fused_loss false)")

        self._keep = None
        self._hidden: Optional[torch.Tensor] = None  # the decoder's final-norm output of the last forward
        self._hooked: Optional[torch.nn.Module] = None
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
        self._hook_final_norm(self.trainer.model)  # ``model`` may be a DDP / DeepSpeed wrapper; this is not
        self._hidden = None
        inputs["logits_to_keep"] = torch.zeros(ids.shape[1], dtype=torch.bool, device=ids.device)

    def _hook_final_norm(self, model) -> None:
        """Keep the output of the decoder's final norm (the hidden states lm_head reads), once per model."""
        norm = model.get_decoder().norm
        if self._hooked is not norm:
            norm.register_forward_hook(self._keep_hidden)
            self._hooked = norm

    def _keep_hidden(self, module, args, output) -> None:
        self._hidden = output

    def __call__(self, outputs, labels, *, num_items_in_batch=None, loss_scale=None, **kwargs) -> torch.Tensor:
        if loss_scale is not None:
            raise UserError("training.fused_loss: ms-swift passed a per-token loss_scale, which the fused loss does "
                            "not apply (set training.fused_loss false)")
        if self._hidden is None:
            raise RuntimeError("fused loss: the decoder's final norm did not run in this forward")
        hidden, self._hidden = _kept(self._hidden, self._keep), None
        targets = shift_targets(labels).to(hidden.device)
        head = output_layer(self.trainer.model)
        if gradient_through_layer(head.weight):  # the route linear_cross_entropy takes below
            logger.info_once(ZERO3_TRAINED_LINE)
        loss_sum, token_loss, preds = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight,
                                                           targets.reshape(-1), layer=head)
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


def output_layer(model) -> torch.nn.Linear:
    """``lm_head`` of ``model`` (a PeftModel or the model); refuses an adapted or biased lm_head."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise UserError(f"training.fused_loss: the output layer is a {type(head).__name__} (an adapter on lm_head, or a "
                        f"bias); the fused loss reads a plain lm_head weight (set training.fused_loss false)")
    return head


def register() -> None:
    """``loss_map['swiftpack_fused_ce']`` (idempotent)."""
    loss_map[FUSED_LOSS] = FusedCrossEntropyLoss
