"""What the run actually did, measured where the trainer computes the loss.

One :class:`BatchRecorder` per trainer wraps ``trainer.compute_loss`` and
``trainer.evaluation_loop`` (once, whichever callback attaches it first). Why the instance and
not a trainer subclass: ms-swift 4.6 builds the trainer inside ``SwiftSft.run`` from
``TrainerFactory``'s fixed mapping, with no argument or method that picks the class, so a
subclass would need a copy of ``run`` or an edit of that global mapping. Wrapping two methods of
this run's own trainer object changes no class or global and ends with the trainer::

    dataloader --batch--> compute_loss wrapper --batch without swiftpack_served--> ms-swift's compute_loss
                           |  fused loss (training.fused_loss): its prepare_inputs (hidden states, no logits)
                           |  train: the served packs (position, samples, tokens) -> train_served
                           |  eval:  per row, the sum of its token losses and its label tokens
                           |         (from the logits, or from the fused loss's chunks)
                           v
    evaluation_loop wrapper: eval_token_mean_loss = sum of token losses / label tokens over the eval set

``eval_loss`` (ms-swift / transformers) is a mean of each eval step's token mean, the step
weighted by its rows (``evaluation_loop`` repeats the step's loss ``batch_size`` times): one
20,000-token pack of 40 samples weighs 1, a padded step of two 300-token samples weighs 2, so
packed and padded evaluation of the same set disagree whenever loss correlates with length. The token mean
over the whole set does not depend on how the set is batched::

    eval_token_mean_loss = sum over eval label tokens of their loss / number of eval label tokens

Rows repeated to even out the last batch across ranks are dropped by ``gather_for_metrics``
(accelerate's remainder), so every eval row counts exactly once (``eval_samples`` says how many
samples that was, ``eval_tokens`` how many label tokens).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from swift_plugins.training.template import SERVED_KEY

__all__ = ["EVAL_METRICS", "BatchRecorder", "row_token_losses"]

# Added to the eval metrics (prefixed eval_): logging.jsonl keys eval_token_mean_loss, ...;
# TensorBoard tags eval/token_mean_loss, eval/tokens, eval/samples.
EVAL_METRICS = ("token_mean_loss", "tokens", "samples")
_CHUNK = 1024  # rows of logits upcast to fp32 at once: 1024 x 151,936 x 4 B = 0.6 GB


def row_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: (sum of token cross-entropies, label tokens), as a (batch, 2) float64 tensor.

    Causal shift as ms-swift's loss: logits[t] predicts labels[t + 1]; -100 is ignored.
    Upcast to fp32 in chunks of tokens, so a long packed row does not need a full fp32 copy.
    """
    target = torch.roll(labels, shifts=-1, dims=-1).to(logits.device)
    target[:, -1] = -100
    out = torch.zeros(logits.shape[0], 2, dtype=torch.float64, device=logits.device)
    for b in range(logits.shape[0]):
        for start in range(0, logits.shape[1], _CHUNK):
            t = target[b, start:start + _CHUNK]
            valid = t != -100
            if not valid.any():
                continue
            out[b, 0] += F.cross_entropy(logits[b, start:start + _CHUNK].float(), t, ignore_index=-100,
                                         reduction="sum").double()
            out[b, 1] += valid.sum()
    return out


class BatchRecorder:
    """Attached to one trainer (``BatchRecorder.attach(trainer)``); see the module docstring."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.train_served: List[torch.Tensor] = []   # since the last optimizer step, this rank
        self._eval: Optional[torch.Tensor] = None     # [loss sum, tokens, samples] over the eval set
        self._compute_loss = trainer.compute_loss
        self._evaluation_loop = trainer.evaluation_loop
        trainer.compute_loss = self.compute_loss
        trainer.evaluation_loop = self.evaluation_loop

    @classmethod
    def attach(cls, trainer) -> "BatchRecorder":
        recorder = getattr(trainer, "_swiftpack_recorder", None)
        if recorder is None:
            recorder = trainer._swiftpack_recorder = cls(trainer)
        return recorder

    def take_train_served(self) -> List[torch.Tensor]:
        """The served rows (position, samples, tokens, sample ids...) of each batch trained since the last call."""
        served, self.train_served = self.train_served, []
        return served

    # -- wrappers -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs: bool = False, **kwargs):
        served = inputs.pop(SERVED_KEY, None)
        fused = getattr(self.trainer, "compute_loss_func", None)
        prepare = getattr(fused, "prepare_inputs", None)  # the fused loss: hidden states, no logits
        if prepare is not None:
            prepare(model, inputs)
        if model.training or self._eval is None:
            if served is not None and model.training:
                self.train_served.append(served.detach().to("cpu"))
            return self._compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        labels = inputs.get("labels")  # prepared (trimmed to logits_to_keep): aligned with the logits
        loss, outputs = self._compute_loss(model, inputs, return_outputs=True, **kwargs)
        rows = self._eval_rows(outputs, labels, fused if prepare is not None else None)
        if rows is not None:
            samples = (served[:, 1].to(rows) if served is not None else torch.ones(len(rows), dtype=rows.dtype,
                                                                                      device=rows.device))
            rows = torch.cat([rows, samples[:, None].to(rows.device)], dim=1)
            rows = self.trainer.accelerator.gather_for_metrics(rows)  # drops the rows repeated for even batches
            self._eval += rows.sum(dim=0).to(self._eval.device)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _eval_rows(outputs, labels, fused) -> Optional[torch.Tensor]:
        """Per row (loss sum, label tokens): from the fused loss's chunks, else from the logits."""
        if fused is not None:
            rows, fused.eval_rows = fused.eval_rows, None
            return rows
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if labels is None or logits is None:
            return None
        return row_token_losses(logits.detach(), labels)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        self._eval = torch.zeros(3, dtype=torch.float64)
        try:
            output = self._evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                           ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            loss_sum, tokens, samples = self._eval.tolist()
        finally:
            self._eval = None
        values = (loss_sum / tokens if tokens else float("nan"), int(tokens), int(samples))
        output.metrics.update({f"{metric_key_prefix}_{name}": v for name, v in zip(EVAL_METRICS, values)})
        return output
