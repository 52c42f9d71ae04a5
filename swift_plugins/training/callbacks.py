"""Trainer callbacks: ``save_delay_steps``, a per-rank record of the data order, packing metrics,
the token-mean eval loss.

The stateless ones are registered by name (``swift_plugins.training.register_all``:
``callbacks_map`` entries ``swiftpack_data_order``, ``swiftpack_eval_token_mean``; ms-swift's
``callbacks`` argument selects them). The ones that hold a run's values (the save delay, the
packed dataset's metrics) are handed to the trainer by the pipeline
(:func:`swift_plugins.training.pipeline.add_run_callbacks`), so nothing run-specific sits in
ms-swift's registry.

save_delay_steps, worked example (``save_steps 1, save_delay_steps 2, max_steps 3``)::

    step            1      2      3
    HF wants save   yes    yes    yes
    delayed         yes    no     no     -> checkpoint-2, checkpoint-3 (no checkpoint-1)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, List, Optional

import torch
from swift.callbacks import TrainerCallback, callbacks_map

from swift_plugins.files import atomic_write_text
from swift_plugins.names import CALLBACK_DATA_ORDER, CALLBACK_EVAL_TOKEN_MEAN
from swift_plugins.packing.resume import PACKING_STATE_FILE
from swift_plugins.training.metrics import BatchRecorder
from swift_plugins.training.packed_dataset import PackedDataset

__all__ = ["DataOrderCallback", "EvalTokenMeanCallback", "PackingCallback", "SaveDelayCallback", "epoch_batches",
           "register", "save_allowed"]


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


class PackingCallback(TrainerCallback):
    """Packed training: the epoch's pack order, and packing metrics of what was trained.

    ``on_epoch_begin``: the packed train dataset switches to the epoch's order before the
    dataloader's workers start (transformers calls it right before iterating the epoch; on
    resume ``state.epoch`` is the fraction reached, whose floor is the epoch to continue).

    ``on_step_end``: the packs this optimizer step trained, as the batches carried them
    (:class:`~swift_plugins.training.metrics.BatchRecorder`), summed over ranks::

        packing_efficiency = real tokens / (packs x global_max_length)
        samples_per_step   = samples in those packs

    added to ms-swift's train metrics (averaged over the logging window into ``logging.jsonl``
    and TensorBoard next to the loss). With ``log_data_order`` each rank also appends the step's
    packs to ``<output_dir>/packing/served_rank<R>.jsonl``: ``{"step": 3, "positions": [4, 6],
    "samples": [[12, 40], [7]], "tokens": [618, 302]}`` (positions in the epoch's order).

    ``on_save``: ``<checkpoint>/swiftpack_packing.json`` records the world size and the plan's
    digest, so a resume with another world size or another plan stops with a clear error.
    """

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        if trainer is not None:
            BatchRecorder.attach(trainer)

    def _dataset(self) -> Optional[PackedDataset]:
        dataset = getattr(self.trainer, "train_dataset", None)
        return dataset if isinstance(dataset, PackedDataset) else None

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is not None:
            dataset.set_epoch(int(math.floor(state.epoch + 1e-9)))
        return control

    def _served_log(self, args) -> str:
        return os.path.join(args.output_dir, "packing", f"served_rank{args.process_index}.jsonl")

    def on_train_begin(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is not None and dataset.log_served and os.path.exists(self._served_log(args)):
            # a fresh run starts an empty log; a resumed one keeps the steps before its checkpoint
            with open(self._served_log(args), encoding="utf-8") as f:
                kept = [line for line in f if json.loads(line)["step"] <= state.global_step]
            atomic_write_text(self._served_log(args), "".join(kept))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is None:
            return control
        served = BatchRecorder.attach(self.trainer).take_train_served()
        rows = [r for batch in served for r in batch.tolist()]
        totals = torch.tensor([sum(r[1] for r in rows), sum(r[2] for r in rows), len(rows)], dtype=torch.float64)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            device = args.device if torch.distributed.get_backend() == "nccl" else "cpu"
            totals = totals.to(device)
            torch.distributed.all_reduce(totals)
        samples, tokens, packs = (float(x) for x in totals.tolist())
        if packs:
            metrics = self.trainer.custom_metrics["train"]
            metrics["packing_efficiency"].update(tokens / (packs * dataset.sp.plan.max_length))
            metrics["samples_per_step"].update(samples)
        if dataset.log_served:
            record = {"step": state.global_step, "epoch": dataset.epoch, "positions": [r[0] for r in rows],
                      "samples": [[s for s in r[3:3 + r[1]]] for r in rows], "tokens": [r[2] for r in rows]}
            path = self._served_log(args)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:  # a log appended step by step, not a result file
                f.write(json.dumps(record) + "\n")
        return control

    def on_save(self, args, state, control, **kwargs):
        dataset = self._dataset()
        if dataset is not None and args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                atomic_write_text(os.path.join(folder, PACKING_STATE_FILE), json.dumps(dataset.resume_state()) + "\n")
        return control


class EvalTokenMeanCallback(TrainerCallback):
    """``eval_token_mean_loss``, ``eval_tokens``, ``eval_samples`` in every evaluation, packed or padded
    (:mod:`swift_plugins.training.metrics`)."""

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        if trainer is not None:
            BatchRecorder.attach(trainer)


def register() -> None:
    """Idempotent: the stateless callbacks, selected by name in ms-swift's ``callbacks`` argument."""
    callbacks_map[CALLBACK_DATA_ORDER] = DataOrderCallback
    callbacks_map[CALLBACK_EVAL_TOKEN_MEAN] = EvalTokenMeanCallback
