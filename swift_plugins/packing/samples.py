"""Records -> samples -> packs: the plan of one JSONL file, made from exact lengths alone.

Before the first step (every rank, same inputs -> same result)::

    train.jsonl --count_dataset (exact lengths, no image decoded, cached)--> lengths
        --overlong=split: dense records cut into pieces that fit (same image, consecutive objects)
        --plan_packs (strategy, buffer / min-fill / drop-last)--> PackPlan
        --pack_count_multiple_of(world_size): split packs so every rank runs the same steps

Each epoch (seeded by ``seed + epoch``)::

    packs --shuffle--> --deal_packs(world_size): packs of one step have similar compute-->
    global order p0 p1 p2 p3 | p4 ...   rank r reads p_r, p_{r+W}, ...

Accounting::

    records read = skipped by the validator + samples (+ extra pieces from splitting)
    samples      = packed + dropped (overlong, drop_last, ...)   each dropped one listed with its reason
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.data.reader import skipped_record
from swift_plugins.data.records import RecordError, parse_record
from swift_plugins.data.split import split_record
from swift_plugins.files import line_offsets, read_line
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter
from swift_plugins.lengths.dataset import count_dataset, record_length
from swift_plugins.packing.deal import deal_packs
from swift_plugins.packing.planner import DEFAULT_STRATEGY, OVERLONG_CHOICES, PackPlan, plan_packs

__all__ = ["SamplePlan", "SplitSamples", "build_sample_plan", "epoch_order", "pack_count_multiple_of", "split_overlong",
           "split_pieces"]


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
                      strategy: str = DEFAULT_STRATEGY, seed: int = 0, buffer_size: Optional[int] = None,
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
        split = split_overlong(path, counter, conversation, lines, lengths, global_max_length, on_error=on_error)
        lines, parts, lengths, split_count = split.lines, split.parts, split.lengths, split.records_split
        skipped += split.unsplittable
    plan = plan_packs(lengths, global_max_length, strategy=strategy, seed=seed, buffer_size=buffer_size,
                      min_fill_ratio=min_fill_ratio, drop_last=drop_last,
                      overlong="error" if overlong == "error" else "drop")
    options = {"overlong": overlong, "buffer_size": buffer_size, "min_fill_ratio": min_fill_ratio,
               "drop_last": drop_last, "seed": seed}
    return SamplePlan(path, lines, parts, lengths, plan, counted.summary.to_dict(), skipped, split_count, options)


@dataclass(frozen=True)
class SplitSamples:
    """Records -> samples with every record over the limit cut into pieces: sample k is line
    ``lines[k]``, piece ``parts[k]`` (-1: the whole record), ``lengths[k]`` tokens."""
    lines: np.ndarray
    parts: np.ndarray
    lengths: np.ndarray
    records_split: int
    unsplittable: list  # SkippedRecord of records with an object too long alone (skip policy)


def split_overlong(path, counter: LengthCounter, conversation: ConversationOptions, lines, lengths,
                   max_length: int, *, on_error: str = "raise") -> SplitSamples:
    """The samples training makes with ``packing_overlong: split`` (exact piece lengths).

    Records of at most ``max_length`` tokens stay whole; a longer one is read from the JSONL and
    cut by :func:`swift_plugins.data.split_record` into pieces that fit, each measured with the
    exact length rule. Worked (max 45, a record of 5 objects at 10 + 10 per object): pieces of
    objects [0, 1, 2] (40 tokens) and [3, 4] (30 tokens): ``lines [7, 7]``, ``parts [0, 1]``.
    An object too long alone raises (``on_error="raise"``) or makes the record unsplittable:
    listed in ``unsplittable``, in no sample.
    """
    offsets = line_offsets(path)
    answers = DetectionAnswerCounter(counter.text_tokens)
    frame = counter.frame("<image>" + conversation.resolved_prompt, 1)
    new_lines, new_parts, new_lengths, unsplittable, split_count = [], [], [], [], 0
    for line, length in zip(lines.tolist(), lengths.tolist()):
        if length <= max_length:
            new_lines.append(line); new_parts.append(-1); new_lengths.append(length)
            continue
        raw = read_line(path, offsets, line)
        record = parse_record(raw, path=path, line=line)
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
    return SplitSamples(as_array(new_lines), as_array(new_parts), as_array(new_lengths), split_count, unsplittable)


def split_pieces(record, line, conversation, counter, answers, frame, max_length, path):
    """The pieces ``data.split_record`` cuts ``record`` into, measured with the exact length rule."""
    return split_record(
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


def epoch_order(packs, lengths, world_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Packs (lists of sample indices) in the order the ranks read them in ``epoch``.

    The plan's packs are shuffled with ``default_rng([seed, epoch])`` and dealt with
    :func:`deal_packs` (seed ``seed + epoch``); the global order holds rank r's packs at
    positions r, r + W, ... (what ms-swift's unshuffled ``BatchSamplerShard`` hands rank r). The
    pack count must be a multiple of ``world_size`` (:func:`pack_count_multiple_of`), so every
    step has one pack per rank and the epoch length never changes.
    """
    packs = [list(p) for p in packs]
    rng = np.random.default_rng([seed, epoch])
    packs = [packs[i] for i in rng.permutation(len(packs))]
    deal = deal_packs(packs, lengths, world_size, seed=seed + epoch)
    if deal.leftover:
        raise ValueError(f"{len(packs)} packs do not fill whole steps of {world_size} ranks; "
                         "make the count a multiple first (pack_count_multiple_of)")
    return [packs[i] for i in deal.global_order()]
