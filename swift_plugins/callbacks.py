"""Trainer callbacks: ``save_delay_steps`` and a per-rank record of the data order.

Importing this module registers ``callbacks_map["swiftpack_data_order"]``;
:func:`register_save_delay` binds ``callbacks_map["swiftpack_save_delay"]`` to a step count (the
entry point and the sidecar plugin call it; ``callbacks: [swiftpack_save_delay]`` selects it).

save_delay_steps, worked example (``save_steps 1, save_delay_steps 2, max_steps 3``)::

    step            1      2      3
    HF wants save   yes    yes    yes
    delayed         yes    no     no     -> checkpoint-2, checkpoint-3 (no checkpoint-1)
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, List, Optional

from swift.callbacks import TrainerCallback, callbacks_map

from .config import CALLBACK_DATA_ORDER, CALLBACK_SAVE_DELAY
from .data import atomic_write_text

__all__ = ["DataOrderCallback", "SaveDelayCallback", "epoch_batches", "register_save_delay", "save_allowed"]


def save_allowed(global_step: int, save_delay_steps: int) -> bool:
    """A checkpoint at ``global_step`` is allowed once ``global_step >= save_delay_steps``."""
    return global_step >= save_delay_steps


class SaveDelayCallback(TrainerCallback):
    """Cancels every save HF's flow asks for before ``save_delay_steps`` (step and epoch saves,
    and the final save of a run shorter than the delay). Runs after ``DefaultFlowCallback``,
    which sets ``control.should_save``: callbacks passed to the trainer come after the defaults."""

    def __init__(self, args, trainer, save_delay_steps: int = 0):
        super().__init__(args, trainer)
        self.save_delay_steps = save_delay_steps

    def _gate(self, state, control):
        if control.should_save and not save_allowed(state.global_step, self.save_delay_steps):
            control.should_save = False
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._gate(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._gate(state, control)


def register_save_delay(save_delay_steps: int) -> None:
    """Bind ``callbacks_map["swiftpack_save_delay"]`` to ``save_delay_steps``."""
    callbacks_map[CALLBACK_SAVE_DELAY] = functools.partial(SaveDelayCallback, save_delay_steps=save_delay_steps)


def epoch_batches(train_dataloader: Any) -> Optional[List[List[int]]]:
    """The dataset indices of every batch this rank's dataloader yields in the current epoch.

    Reads the batch sampler (ms-swift's ``BatchSamplerShard``: a seeded permutation, the same on
    every rank, dealt ``perm[rank::world_size]``); iterating it loads no data and changes no
    state. None for a dataloader without one (an iterable dataset).
    """
    sampler = getattr(train_dataloader, "batch_sampler", None)
    if sampler is None:
        return None
    return [[int(i) for i in batch] for batch in sampler]


class DataOrderCallback(TrainerCallback):
    """At the start of training each rank writes ``<output_dir>/data_order/rank<R>.json``::

        {"rank": 0, "world_size": 2, "global_step": 0, "first_batch": [5, 1],
         "batches": [[5, 1], [7, 0], ...], "sha256": "<of batches>"}

    Two ranks that got their shards from the same permutation have disjoint index sets whose
    union is the dataset (minus a dropped remainder); ``first_batch`` is also logged.
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        from swift.utils import get_logger

        batches = epoch_batches(train_dataloader)
        record = {"rank": args.process_index, "world_size": args.world_size, "global_step": state.global_step,
                  "first_batch": batches[0] if batches else None, "batches": batches,
                  "sha256": hashlib.sha256(json.dumps(batches).encode()).hexdigest()}
        path = os.path.join(args.output_dir, "data_order", f"rank{args.process_index}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(record) + "\n")
        get_logger().info(f"swiftpack data order: rank {args.process_index}/{args.world_size} first batch "
                          f"{record['first_batch']}, {len(batches or [])} batches, sha256 {record['sha256'][:16]} "
                          f"({path})")
        return control


callbacks_map[CALLBACK_DATA_ORDER] = DataOrderCallback
