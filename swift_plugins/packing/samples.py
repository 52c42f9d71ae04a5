"""Records -> samples -> packs: the plan of one JSONL file, made from exact lengths alone.

Before the first step (every rank, same inputs -> same result)::

    a.jsonl, b.jsonl --count_dataset (exact lengths, no image decoded, cached)--> lengths
        --overlong=split: dense detection records cut into pieces that fit (same image,
          consecutive objects); a messages row that does not fit is dropped and reported
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
from typing import List, Optional

import numpy as np

from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.data.reader import skipped_record
from swift_plugins.data.records import RecordError, parse_record
from swift_plugins.data.split import split_record
from swift_plugins.errors import UserError
from swift_plugins.files import line_offsets, read_line
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter
from swift_plugins.lengths.dataset import KIND_CODES, count_dataset, record_length
from swift_plugins.packing.deal import deal_packs
from swift_plugins.packing.planner import DEFAULT_STRATEGY, OVERLONG_CHOICES, PackPlan, plan_packs

__all__ = ["SamplePlan", "SplitSamples", "build_sample_plan", "epoch_order", "pack_count_multiple_of", "split_overlong",
           "split_pieces"]

LVIS = KIND_CODES["lvis"]


@dataclass
class SamplePlan:
    """Samples of one or more JSONL files and their packs.

    Sample k is record ``lines[k]`` of ``paths[files[k]]``, of kind ``kinds[k]`` (``KIND_CODES``:
    0 lvis, 1 messages); ``parts[k]`` is -1 for the whole record, p >= 0 for piece p of a split
    detection record; it has ``lengths[k]`` tokens. ``read_summaries[f]`` counts file f's records.
    """
    paths: List[str]
    files: np.ndarray
    lines: np.ndarray
    parts: np.ndarray
    kinds: np.ndarray
    lengths: np.ndarray
    plan: PackPlan
    read_summaries: List[dict]
    skipped: list                       # SkippedRecord of the validator (+ unsplittable records), every file
    split_records: int = 0
    options: dict = field(default_factory=dict)

    def dropped_rows(self) -> list[dict]:
        return [{"jsonl": self.paths[int(self.files[i])], "line": int(self.lines[i]), "part": int(self.parts[i]),
                 "length": int(self.lengths[i]), "reason": self.plan.drop_reasons[i]} for i in self.plan.dropped]

    def summary(self) -> dict:
        """Totals (``records_read = records_skipped + records in samples``; ``samples = packed + dropped``)
        and the same per file under ``files``."""
        st = self.plan.stats(self.lengths)
        packed = np.zeros(len(self.lengths), bool)
        packed[[i for p in self.plan.packs for i in p]] = True
        files = []
        for f, path in enumerate(self.paths):
            mine = self.files == f
            first = mine & (self.parts <= 0)  # a whole record (-1) or the first piece of a split one (0)
            kinds = {name: int((self.kinds[first] == code).sum()) for name, code in KIND_CODES.items()}
            files.append({"jsonl": path, "records_read": self.read_summaries[f]["read"],
                          "records_skipped": sum(1 for r in self.skipped if r.path == path),
                          "records_by_kind": kinds, "samples": int(mine.sum()),
                          "samples_packed": int((mine & packed).sum()), "samples_dropped": int((mine & ~packed).sum()),
                          "tokens": int(self.lengths[mine].sum())})
        return {
            "jsonl": list(self.paths), "records_read": sum(r["read"] for r in self.read_summaries),
            "records_skipped": len(self.skipped),  # the validator's skips + unsplittable records
            "records_split": self.split_records, "samples": int(len(self.lengths)),
            "samples_packed": st["num_packed"], "samples_dropped": st["samples_dropped"],
            "dropped_by_reason": st["dropped_by_reason"], "num_packs": st["num_packs"],
            "avg_samples_per_pack": round(st["avg_samples_per_pack"], 3), "efficiency": round(st["efficiency"], 6),
            "global_max_length": self.plan.max_length, "strategy": self.plan.strategy, **self.options,
            "files": files,
        }


def build_sample_plan(paths, counter: LengthCounter, conversation: ConversationOptions, *, global_max_length: int,
                      strategy: str = DEFAULT_STRATEGY, seed: int = 0, buffer_size: Optional[int] = None,
                      min_fill_ratio: float = 0.0, drop_last: bool = False, overlong: str = "drop",
                      on_error: str = "raise", check_images: bool = True, cache_dir=None,
                      record_format: str = "auto") -> SamplePlan:
    """Exact lengths of every record of ``paths`` (one path or a list), dense detection records split
    if asked, and one packing plan over all of them.

    ``overlong="split"`` cuts LVIS records only; a messages row longer than ``global_max_length``
    cannot be cut (its turns belong together) and is dropped with reason ``overlong`` (listed in
    the drop report), or stops the run with ``overlong="error"``.
    """
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"overlong: {overlong!r} is not one of {list(OVERLONG_CHOICES)}")
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    parts_of = {k: [] for k in ("files", "lines", "parts", "kinds", "lengths")}
    summaries, skipped, split_count = [], [], 0
    for f, path in enumerate(paths):
        counted = count_dataset(path, counter, conversation, on_error=on_error, check_images=check_images,
                                cache_dir=cache_dir, record_format=record_format)
        summaries.append(counted.summary.to_dict())
        skipped += counted.skipped
        samples = split_overlong(path, counter, conversation, counted.line, counted.total_tokens,
                                 global_max_length, kinds=counted.kind, on_error=on_error) \
            if overlong == "split" else SplitSamples.whole(counted.line, counted.total_tokens, counted.kind)
        skipped += samples.unsplittable
        split_count += samples.records_split
        for key, value in (("files", np.full(len(samples.lines), f, np.int64)), ("lines", samples.lines),
                           ("parts", samples.parts), ("kinds", samples.kinds), ("lengths", samples.lengths)):
            parts_of[key].append(value)
    arrays = {k: np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64) for k, v in parts_of.items()}
    if overlong == "error":
        _refuse_overlong(paths, arrays, global_max_length)
    plan = plan_packs(arrays["lengths"], global_max_length, strategy=strategy, seed=seed, buffer_size=buffer_size,
                      min_fill_ratio=min_fill_ratio, drop_last=drop_last,
                      overlong="error" if overlong == "error" else "drop")
    if not plan.packs:
        _refuse_empty(paths, summaries, arrays["lengths"], global_max_length)
    options = {"overlong": overlong, "buffer_size": buffer_size, "min_fill_ratio": min_fill_ratio,
               "drop_last": drop_last, "seed": seed, "record_format": record_format}
    return SamplePlan(paths, arrays["files"], arrays["lines"], arrays["parts"], arrays["kinds"], arrays["lengths"],
                      plan, summaries, skipped, split_count, options)


def _refuse_empty(paths, summaries, lengths, max_length: int) -> None:
    """Nothing left to pack (every record skipped, or every sample longer than ``max_length``, or dropped as an
    under-filled last pack): one UserError with the counts and the fix, before any model is loaded."""
    read = sum(s["read"] for s in summaries)
    skipped = sum(s["skipped"] for s in summaries)
    if len(lengths) and int(lengths.min()) > max_length:
        fix = (f"every one of the {len(lengths)} sample(s) is longer than global_max_length {max_length} (the shortest "
               f"has {int(lengths.min())} tokens); raise training.global_max_length to at least {int(lengths.min())}")
    elif len(lengths):
        fix = (f"{len(lengths)} sample(s) fill no pack (packing_min_fill_ratio / packing_drop_last dropped them); "
               f"lower training.packing_min_fill_ratio or set packing_drop_last false")
    else:
        fix = f"all {skipped} record(s) were skipped; fix the records (on_error raise stops at the first with its fix)"
    raise UserError(f"{' + '.join(paths)}: nothing left to pack ({read} record(s) read): {fix}")


def _refuse_overlong(paths, arrays, max_length: int) -> None:
    """``overlong="error"``: one UserError naming every record longer than ``max_length`` (first 10)."""
    over = np.flatnonzero(arrays["lengths"] > max_length)
    if not len(over):
        return
    shown = ", ".join(f"{paths[int(arrays['files'][i])]}:{int(arrays['lines'][i])} ({int(arrays['lengths'][i])} tokens)"
                      for i in over[:10])
    more = f" and {len(over) - 10} more" if len(over) > 10 else ""
    raise UserError(f"training.packing_overlong: error: {len(over)} record(s) longer than global_max_length "
                    f"{max_length}: {shown}{more} (raise global_max_length, or set packing_overlong split - "
                    "detection records become pieces - or drop - they are dropped and reported)")


@dataclass(frozen=True)
class SplitSamples:
    """Records -> samples with every detection record over the limit cut into pieces: sample k is
    line ``lines[k]``, piece ``parts[k]`` (-1: the whole record), ``lengths[k]`` tokens."""
    lines: np.ndarray
    parts: np.ndarray
    lengths: np.ndarray
    kinds: np.ndarray
    records_split: int
    unsplittable: list  # SkippedRecord of records with an object too long alone (skip policy)

    @classmethod
    def whole(cls, lines, lengths, kinds) -> "SplitSamples":
        return cls(np.asarray(lines), np.full(len(lines), -1, np.int64), np.asarray(lengths), np.asarray(kinds), 0, [])


def split_overlong(path, counter: LengthCounter, conversation: ConversationOptions, lines, lengths,
                   max_length: int, *, kinds=None, on_error: str = "raise") -> SplitSamples:
    """The samples training makes with ``packing_overlong: split`` (exact piece lengths).

    Records of at most ``max_length`` tokens stay whole; a longer detection record (``kinds``
    0, the default for every record) is read from the JSONL and cut by
    :func:`swift_plugins.data.split_record` into pieces that fit, each measured with the exact
    length rule. Worked (max 45, a record of 5 objects at 10 + 10 per object): pieces of objects
    [0, 1, 2] (40 tokens) and [3, 4] (30 tokens): ``lines [7, 7]``, ``parts [0, 1]``. An object
    too long alone raises (``on_error="raise"``) or makes the record unsplittable: listed in
    ``unsplittable``, in no sample. A longer messages row (kind 1) stays whole: the plan drops it.
    """
    kinds = np.zeros(len(lines), np.int64) if kinds is None else np.asarray(kinds)
    if not len(lengths) or int(np.asarray(lengths).max()) <= max_length:
        return SplitSamples.whole(lines, lengths, kinds)
    offsets = line_offsets(path)
    answers = DetectionAnswerCounter(counter.text_tokens)
    frame = counter.frame("<image>" + conversation.resolved_prompt, 1) if (kinds == LVIS).any() else None
    out = {k: [] for k in ("lines", "parts", "lengths", "kinds")}
    unsplittable, split_count = [], 0

    def add(line, part, length, kind):
        out["lines"].append(line); out["parts"].append(part); out["lengths"].append(length); out["kinds"].append(kind)

    for line, length, kind in zip(np.asarray(lines).tolist(), np.asarray(lengths).tolist(), kinds.tolist()):
        if length <= max_length or kind != LVIS:
            add(line, -1, length, kind)
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
            add(line, p, record_length(piece, counter, answers, frame, conversation.emit_norm), LVIS)
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    return SplitSamples(arrays["lines"], arrays["parts"], arrays["lengths"], arrays["kinds"], split_count,
                        unsplittable)


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
