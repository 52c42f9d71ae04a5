"""The packing plan turned into a training dataset: planned from lengths, encoded lazily per pack.

Before the first step (every rank, same inputs -> same result; rank 0 fills the length cache)::

    train.jsonl --count_dataset (exact lengths, no image decoded, cached)--> lengths
        --overlong=split: dense records cut into pieces that fit (same image, consecutive objects)
        --plan_packs (bfd, buffer / min-fill / drop-last)--> PackPlan  (saved: packing/plan.json)

Each epoch (seeded by ``packing_seed + epoch``)::

    packs --shuffle--> --deal_packs(world_size): packs of one step have similar compute-->
    global order p0 p1 p2 p3 | p4 ...   rank r reads p_r, p_{r+W}, ...  (BatchSamplerShard, no shuffle)

``dataset[i]`` reads the pack's records from the JSONL (byte offsets, no records held in memory),
encodes them with the template in the dataloader worker, and checks each encoded length against
the planned length: a mismatch is a hard error naming ``path:line``. The template's collator
packs them into one row (``swift_plugins.template``).

Accounting (logged and written to ``packing/summary.json``)::

    records read = skipped by the validator + samples (+ extra pieces from splitting)
    samples      = packed + dropped (overlong, drop_last, ...)   each dropped one listed with its reason
    per epoch    = every pack once: the pack count is made a multiple of the world size by
                   splitting packs, not by dropping or repeating them (``pack_count_multiple_of``)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from swift_plugins import data as data_mod
from swift_plugins.data import ConversationOptions, RecordError, atomic_write_text
from swift_plugins.dataset_lengths import count_dataset, record_length, skipped_record
from swift_plugins.lengths import DetectionAnswerCounter, LengthCounter
from swift_plugins.packing import PackPlan, deal_packs, plan_packs

OVERLONG_CHOICES = ("drop", "error", "split")


def line_offsets(path) -> np.ndarray:
    """Byte offset of the start of every line (index = line number - 1)."""
    raw = np.fromfile(os.fspath(path), dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    return np.concatenate([[0], ends + 1]).astype(np.int64)


def read_line(path, offsets: np.ndarray, line: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(int(offsets[line - 1]))
        return f.readline()


@dataclass
class SamplePlan:
    """Samples of one JSONL file and their packs. Sample k is record ``lines[k]`` (``parts[k]`` =
    -1: whole record; p >= 0: piece p of its split) with ``lengths[k]`` tokens."""
    path: str
    lines: np.ndarray
    parts: np.ndarray
    lengths: np.ndarray
    plan: PackPlan
    read_summary: dict
    skipped: list                       # SkippedRecord of the validator (+ unsplittable records)
    split_records: int = 0
    options: dict = field(default_factory=dict)

    def dropped_rows(self) -> list[dict]:
        return [{"line": int(self.lines[i]), "part": int(self.parts[i]), "length": int(self.lengths[i]),
                 "reason": self.plan.drop_reasons[i]} for i in self.plan.dropped]

    def summary(self) -> dict:
        st = self.plan.stats(self.lengths)
        return {
            "jsonl": self.path, "records_read": self.read_summary["read"],
            "records_skipped": len(self.skipped),  # the validator's skips + unsplittable records
            "records_split": self.split_records, "samples": int(len(self.lengths)),
            "samples_packed": st["num_packed"], "samples_dropped": st["samples_dropped"],
            "dropped_by_reason": st["dropped_by_reason"], "num_packs": st["num_packs"],
            "avg_samples_per_pack": round(st["avg_samples_per_pack"], 3), "efficiency": round(st["efficiency"], 6),
            "global_max_length": self.plan.max_length, "strategy": self.plan.strategy, **self.options,
        }


def build_sample_plan(path, counter: LengthCounter, conversation: ConversationOptions, *, global_max_length: int,
                      strategy: str = "bfd", seed: int = 0, buffer_size: Optional[int] = None,
                      min_fill_ratio: float = 0.0, drop_last: bool = False, overlong: str = "drop",
                      on_error: str = "raise", check_images: bool = True, cache_dir=None) -> SamplePlan:
    """Exact lengths of every record, dense records split if asked, and the packing plan."""
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"overlong: {overlong!r} is not one of {list(OVERLONG_CHOICES)}")
    path = os.fspath(path)
    counted = count_dataset(path, counter, conversation, on_error=on_error, check_images=check_images,
                            cache_dir=cache_dir)
    lines, lengths = counted.line, counted.total_tokens
    parts = np.full(len(lines), -1, dtype=np.int64)
    skipped = list(counted.skipped)
    split_count = 0
    if overlong == "split" and len(lengths) and lengths.max() > global_max_length:
        lines, parts, lengths, split_count, unsplittable = _split_overlong(
            path, counter, conversation, lines, lengths, global_max_length, on_error)
        skipped += unsplittable
    plan = plan_packs(lengths, global_max_length, strategy=strategy, seed=seed, buffer_size=buffer_size,
                      min_fill_ratio=min_fill_ratio, drop_last=drop_last,
                      overlong="error" if overlong == "error" else "drop")
    options = {"overlong": overlong, "buffer_size": buffer_size, "min_fill_ratio": min_fill_ratio,
               "drop_last": drop_last, "seed": seed}
    return SamplePlan(path, lines, parts, lengths, plan, counted.summary.to_dict(), skipped, split_count, options)


def _split_overlong(path, counter, conversation, lines, lengths, max_length, on_error):
    offsets = line_offsets(path)
    answers = DetectionAnswerCounter(counter.text_tokens)
    frame = counter.frame("<image>" + conversation.resolved_prompt, 1)
    new_lines, new_parts, new_lengths, unsplittable, split_count = [], [], [], [], 0
    for line, length in zip(lines.tolist(), lengths.tolist()):
        if length <= max_length:
            new_lines.append(line); new_parts.append(-1); new_lengths.append(length)
            continue
        raw = read_line(path, offsets, line)
        record = data_mod.parse_record(raw, path=path, line=line)
        try:
            pieces = split_pieces(record, line, conversation, counter, answers, frame, max_length, path)
        except RecordError as e:
            if on_error == "raise":
                raise
            unsplittable.append(skipped_record(e, raw))
            continue
        split_count += 1
        for p, piece in enumerate(pieces):
            new_lines.append(line); new_parts.append(p)
            new_lengths.append(record_length(piece, counter, answers, frame, conversation.emit_norm))
    as_array = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return as_array(new_lines), as_array(new_parts), as_array(new_lengths), split_count, unsplittable


def split_pieces(record, line, conversation, counter, answers, frame, max_length, path):
    """The pieces ``data.split_record`` cuts ``record`` into, measured with the exact length rule."""
    return data_mod.split_record(
        record, max_length=max_length, object_ordering=conversation.object_ordering, seed=conversation.seed,
        sample_key=line, path=path, line=line,
        length_of=lambda r: record_length(r, counter, answers, frame, conversation.emit_norm))


def pack_count_multiple_of(plan: PackPlan, lengths, multiple: int) -> PackPlan:
    """Make the number of packs a multiple of ``multiple`` (the data-parallel world size).

    Data-parallel ranks must run the same number of steps. Instead of dropping the last
    ``num_packs % multiple`` packs (what a sampler with drop_last does) or repeating packs (what a
    padding sampler does), split ``multiple - remainder`` packs holding the most samples into two
    (longest samples dealt alternately), so every sample still trains once per epoch. E.g. 10 packs
    on 4 ranks -> 2 packs split -> 12 packs, 3 steps. Only when too few packs hold two samples are
    the ``remainder`` least-filled packs dropped, each sample reported.
    """
    remainder = plan.num_packs % multiple
    if multiple <= 1 or remainder == 0:
        return plan
    lengths = np.asarray(lengths)
    packs = [list(p) for p in plan.packs]
    need = multiple - remainder
    splittable = sorted((i for i, p in enumerate(packs) if len(p) >= 2), key=lambda i: (-len(packs[i]), i))
    dropped, reasons = list(plan.dropped), dict(plan.drop_reasons)
    if len(splittable) >= need:
        for i in splittable[:need]:
            ordered = sorted(packs[i], key=lambda s: (-int(lengths[s]), s))
            packs[i] = sorted(ordered[0::2])
            packs.append(sorted(ordered[1::2]))
    else:
        fill = sorted(range(len(packs)), key=lambda i: (int(lengths[packs[i]].sum()), i))[:remainder]
        for i in fill:
            for s in packs[i]:
                dropped.append(s)
                reasons[s] = f"world_size remainder: {plan.num_packs} packs do not fill steps of {multiple} ranks"
        packs = [p for i, p in enumerate(packs) if i not in set(fill)]
    return dataclasses.replace(plan, packs=packs, dropped=sorted(dropped), drop_reasons=reasons)


class PackLengthMismatch(RuntimeError):
    """The template encoded a sample to a different length than planned: never train on a wrong plan."""


class PackedDataset:
    """Map-style dataset over packs of a :class:`SamplePlan` (see module docstring).

    ``train=True``: per-epoch shuffled, rank-balanced order; ``train=False`` (eval): packs in plan
    order, undealt. Items are lists of encoded samples; the template's collator packs them.
    """

    def __init__(self, sample_plan: SamplePlan, template, conversation: ConversationOptions, *, world_size: int = 1,
                 seed: int = 0, train: bool = True, counter: Optional[LengthCounter] = None):
        self.sp = sample_plan
        self.template = template
        self.conversation = conversation
        self.world_size = max(1, int(world_size))
        self.seed = seed
        self.train = train
        self.counter = counter
        if train:  # equal step counts on every rank without dropping or repeating samples
            sample_plan.plan = pack_count_multiple_of(sample_plan.plan, sample_plan.lengths, self.world_size)
        self.base_dir = os.path.dirname(os.path.abspath(sample_plan.path))
        self._offsets = line_offsets(sample_plan.path)
        self._answers: Optional[DetectionAnswerCounter] = None  # built on first split piece (rare)
        self.epoch = 0
        self.order = self.epoch_order(0)

    # -- order ---------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[list[int]]:
        """Packs (lists of sample indices) in the order the ranks read them this epoch.

        Train plans hold a multiple of ``world_size`` packs (:func:`pack_count_multiple_of`), so
        every step has one pack per rank and the epoch length never changes."""
        packs = [list(p) for p in self.sp.plan.packs]
        if not self.train:
            return packs
        rng = np.random.default_rng([self.seed, epoch])
        packs = [packs[i] for i in rng.permutation(len(packs))]
        deal = deal_packs(packs, self.sp.lengths, self.world_size, seed=self.seed + epoch)
        if deal.leftover:
            raise RuntimeError(f"{len(packs)} packs do not fill whole steps of {self.world_size} ranks")
        return [packs[i] for i in deal.global_order()]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = self.epoch_order(epoch)

    def step_stats(self, micro_batches_per_step: int) -> list[dict]:
        """Per optimizer step of the current epoch: samples, real tokens and packs over all ranks."""
        key = (self.epoch, micro_batches_per_step)
        if getattr(self, "_step_stats_key", None) == key:
            return self._step_stats
        per_step = micro_batches_per_step * self.world_size
        out = []
        for start in range(0, len(self.order), per_step):
            packs = self.order[start:start + per_step]
            tokens = sum(int(self.sp.lengths[s]) for p in packs for s in p)
            out.append({"samples": sum(len(p) for p in packs), "tokens": tokens, "packs": len(packs),
                        "efficiency": tokens / (len(packs) * self.sp.plan.max_length)})
        self._step_stats_key, self._step_stats = key, out
        return out

    @property
    def packed_length(self) -> list[int]:
        """Tokens per pack in plan order (what ms-swift's dataset statistics read)."""
        return self.sp.plan.pack_lengths(self.sp.lengths)

    # -- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.order)

    def row(self, sample: int) -> dict:
        """The ms-swift row of sample index ``sample`` (read from disk, converted like training)."""
        line, part = int(self.sp.lines[sample]), int(self.sp.parts[sample])
        record = data_mod.parse_record(read_line(self.sp.path, self._offsets, line), path=self.sp.path, line=line)
        opts = self.conversation.to_dict()
        if part >= 0:
            if self._answers is None:
                self._answers = DetectionAnswerCounter(self.counter.text_tokens)
            frame = self.counter.frame("<image>" + self.conversation.resolved_prompt, 1)
            record = split_pieces(record, line, self.conversation, self.counter, self._answers, frame,
                                  self.sp.plan.max_length, self.sp.path)[part]
            opts["object_ordering"] = "none"  # pieces are already in conversation order
        return data_mod.to_swift_row(record, base_dir=self.base_dir, sample_key=line, **opts)

    def __getitem__(self, index: int) -> list[dict]:
        encoded = []
        for sample in self.order[index]:
            enc = self.template.encode(self.row(sample), return_length=True)
            planned = int(self.sp.lengths[sample])
            if enc["length"] != planned:
                raise PackLengthMismatch(
                    f"{self.sp.path}:{int(self.sp.lines[sample])}: encoded length {enc['length']} != planned "
                    f"{planned} (part {int(self.sp.parts[sample])}); the length rule and the template disagree - "
                    "check template max_pixels / MAX_PIXELS and the conversation options")
            encoded.append(enc)
        return encoded


# ------------------------------------------------------------------------------ ms-swift glue
def build_packed_datasets(sft, train_dataset, val_dataset):
    """``SwiftSft._post_process_datasets`` with packing: plan from the JSONL files, return datasets.

    ``train_dataset`` / ``val_dataset`` (ms-swift's loaded rows, if any) are not used: samples
    are read from the JSONL by line, so nothing is held in memory and lengths are exact.
    """
    import torch.distributed as dist
    from swift.utils import get_dist_setting, get_logger, is_master

    logger = get_logger()
    opts = sft.swiftpack_options
    args = sft.args
    template = sft.template
    if not getattr(template, "_swiftpack_packing", False):
        from swift_plugins.template import TEMPLATE_TYPE
        if type(template).__name__ != "Qwen3VLPackingTemplate":
            raise ValueError(f"training.packing needs template.template: {TEMPLATE_TYPE} (got {args.template!r}); "
                             "the config layer sets it when packing is on")
    if args.training_args.dataloader_persistent_workers and args.training_args.dataloader_num_workers > 0:
        raise ValueError("training.packing needs dataloader_persistent_workers false: persistent workers keep the "
                         "first epoch's pack order")
    template.padding_free = True
    template.packing = True
    template.max_length = opts.global_max_length
    _, _, world_size, _ = get_dist_setting()
    world_size = max(1, world_size)
    rank = dist.get_rank() if dist.is_initialized() else 0
    conversation = opts.conversation_options()
    counter = LengthCounter.from_template(template)
    cache_dir = opts.length_cache_dir
    common = dict(strategy=opts.packing_strategy, seed=opts.packing_seed,
                  buffer_size=opts.packing_buffer or None, overlong=opts.packing_overlong,
                  on_error=opts.on_error, check_images=opts.check_images, cache_dir=cache_dir)

    def plan(path, train):
        kw = dict(common)
        if train:
            kw.update(min_fill_ratio=opts.packing_min_fill_ratio, drop_last=opts.packing_drop_last)
        else:
            kw.update(buffer_size=None)  # eval: plan globally, keep every pack
        distributed = dist.is_initialized() and world_size > 1
        if distributed and rank != 0:
            dist.barrier()  # rank 0 counts first and fills the cache; the others then read it
        result = build_sample_plan(path, counter, conversation, global_max_length=opts.global_max_length, **kw)
        if distributed and rank == 0:
            dist.barrier()
        return result

    train_plan = plan(opts.train_jsonl, True)
    train = PackedDataset(train_plan, template, conversation, world_size=world_size, seed=opts.packing_seed,
                          counter=counter)
    val = None
    if opts.val_jsonl:
        val_plan = plan(opts.val_jsonl, False)
        if not opts.eval_packing:  # one sample per item (overlong ones dropped as planned); a batch is still isolated
            kept = sorted(s for p in val_plan.plan.packs for s in p)
            val_plan.plan = dataclasses.replace(val_plan.plan, packs=[[s] for s in kept], strategy="none")
        val = PackedDataset(val_plan, template, conversation, world_size=world_size, seed=opts.packing_seed,
                            train=False, counter=counter)
    _report(args.output_dir, train_plan, val.sp if val else None, is_master(), logger, world_size,
            args.gradient_accumulation_steps, len(train))
    from swift_plugins.packing_callback import CALLBACK_PACKING, register as register_callback
    register_callback()
    for holder in (args, args.training_args):  # the trainer reads training_args.callbacks
        if CALLBACK_PACKING not in (holder.callbacks or []):
            holder.callbacks = list(holder.callbacks or []) + [CALLBACK_PACKING]
    return train, val


def _report(output_dir, train_plan: SamplePlan, val_plan: Optional[SamplePlan], write: bool, logger, world_size,
            ga, train_len) -> None:
    summary = {"train": train_plan.summary()}
    if val_plan is not None:
        summary["val"] = val_plan.summary()
    steps = math.ceil(train_len / world_size / ga)
    summary["train"].update({"world_size": world_size, "gradient_accumulation_steps": ga,
                             "optimizer_steps_per_epoch": steps})
    t = summary["train"]
    logger.info(
        f"swiftpack packing: {t['jsonl']}: records read {t['records_read']} = valid "
        f"{t['records_read'] - t['records_skipped']} + skipped {t['records_skipped']}; "
        f"{t['records_split']} dense record(s) split -> {t['samples']} samples = packed {t['samples_packed']} "
        f"+ dropped {t['samples_dropped']} {t['dropped_by_reason']}; {t['num_packs']} packs of "
        f"{t['global_max_length']} tokens ({t['avg_samples_per_pack']} samples/pack, efficiency "
        f"{t['efficiency']:.2%}); {steps} optimizer steps/epoch (world {world_size} x grad accum {ga}); "
        f"dropped/skipped list: {os.path.join(output_dir, 'packing', 'dropped_samples.jsonl')}")
    if not write:
        return
    folder = os.path.join(output_dir, "packing")
    os.makedirs(folder, exist_ok=True)
    train_plan.plan.save(os.path.join(folder, "plan.json"))
    atomic_write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=2) + "\n")
    rows = [{"split": "train", **r} for r in train_plan.dropped_rows()]
    rows += [{"split": "train", "line": s.line, "part": -1, "length": None, "reason": f"{s.kind}: {s.reason}"}
             for s in train_plan.skipped]
    if val_plan is not None:
        rows += [{"split": "val", **r} for r in val_plan.dropped_rows()]
        rows += [{"split": "val", "line": s.line, "part": -1, "length": None, "reason": f"{s.kind}: {s.reason}"}
                 for s in val_plan.skipped]
    atomic_write_text(os.path.join(folder, "dropped_samples.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
