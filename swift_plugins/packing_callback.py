"""Trainer callback of packed training: per-epoch pack order and packing metrics in the logs.

``on_epoch_begin``: the packed train dataset switches to the epoch's order before the
dataloader's workers start (transformers calls it right before iterating the epoch; on resume
``state.epoch`` is the fraction reached, whose floor is the epoch to continue).

``on_step_end``: adds this optimizer step's ``packing_efficiency`` (real tokens / (packs x
global_max_length)) and ``samples_per_step`` (samples over all ranks) to ms-swift's train
metrics, so they are averaged over the logging window and land in ``logging.jsonl`` and
TensorBoard next to the loss. Every rank computes the same numbers from the plan.
"""
from __future__ import annotations

import math

from swift.callbacks import TrainerCallback, callbacks_map

CALLBACK_PACKING = "swiftpack_packing"


class PackingCallback(TrainerCallback):

    def _dataset(self):
        from swift_plugins.packed_dataset import PackedDataset

        dataset = getattr(self.trainer, "train_dataset", None)
        return dataset if isinstance(dataset, PackedDataset) else None

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is not None:
            dataset.set_epoch(int(math.floor(state.epoch + 1e-9)))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is None:
            return control
        ga = args.gradient_accumulation_steps
        steps = dataset.step_stats(ga)
        index = state.global_step - 1 - dataset.epoch * len(steps)
        if 0 <= index < len(steps):
            metrics = self.trainer.custom_metrics["train"]
            metrics["packing_efficiency"].update(steps[index]["efficiency"])
            metrics["samples_per_step"].update(steps[index]["samples"])
        return control


def register() -> None:
    callbacks_map[CALLBACK_PACKING] = PackingCallback
