"""Exact lengths of several JSONL files as one analysis: per-record arrays in file order, per-file rows.

    train_a.jsonl (LVIS), train_b.jsonl (messages)
      --count_dataset per file (cached, self-checking)--> CountedFiles: file, line, kind, text, image ...
      --split_files(L): the samples training makes at global_max_length L with overlong split
        (detection records cut into pieces of exact length; messages rows stay whole)

Record r of the analysis is line ``line[r]`` of ``paths[file[r]]``; ``sample_stats.jsonl`` carries
both, so a row can be found again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.lengths.counter import LengthCounter
from swift_plugins.lengths.dataset import KIND_CODES, DatasetLengths, count_dataset
from swift_plugins.packing.samples import split_overlong

__all__ = ["CountedFiles", "count_files", "file_rows", "split_files"]


@dataclass
class CountedFiles:
    """The records of every file, concatenated in file order (``file[r]`` indexes ``paths``)."""
    paths: List[str]
    per_file: List[DatasetLengths]
    file: np.ndarray
    line: np.ndarray
    kind: np.ndarray
    text_tokens: np.ndarray
    image_tokens: np.ndarray
    num_objects: np.ndarray
    num_images: np.ndarray

    @property
    def total_tokens(self) -> np.ndarray:
        return self.text_tokens + self.image_tokens

    @property
    def skipped(self) -> list:
        return [s for d in self.per_file for s in d.skipped]

    @property
    def from_cache(self) -> bool:
        return all(d.from_cache for d in self.per_file)

    def __len__(self) -> int:
        return int(self.line.shape[0])

    def summary(self) -> dict:
        """The read summaries of all files, summed (read = valid + skipped, every file)."""
        out = {"read": 0, "valid": 0, "skipped": 0, "blank_lines": 0, "skipped_by_kind": {}}
        for d in self.per_file:
            s = d.summary.to_dict()
            for key in ("read", "valid", "skipped", "blank_lines"):
                out[key] += s[key]
            for kind, n in s["skipped_by_kind"].items():
                out["skipped_by_kind"][kind] = out["skipped_by_kind"].get(kind, 0) + n
        out["skipped_by_kind"] = dict(sorted(out["skipped_by_kind"].items()))
        return out

    def has_detection_records(self) -> bool:
        return bool((self.kind == KIND_CODES["lvis"]).any())


def count_files(paths: Sequence[str], counter: LengthCounter, options: ConversationOptions, *,
                progress: Optional[Callable[[int], None]] = None, **count_options) -> CountedFiles:
    """``count_dataset`` of every file (``count_options``: on_error, check_images, max_records per
    file, num_workers, cache_dir, clear_cache, record_format), concatenated."""
    per_file, done = [], 0
    for path in paths:
        offset = done

        def file_progress(n, offset=offset):
            if progress:
                progress(offset + n)
        counted = count_dataset(path, counter, options, progress=file_progress, **count_options)
        done += counted.summary.read + counted.summary.blank_lines
        per_file.append(counted)
    cat = lambda name: (np.concatenate([getattr(d, name) for d in per_file]).astype(np.int64)  # noqa: E731
                        if per_file else np.zeros(0, np.int64))
    files = np.concatenate([np.full(len(d), f, np.int64) for f, d in enumerate(per_file)]) if per_file else \
        np.zeros(0, np.int64)
    return CountedFiles(list(paths), per_file, files, cat("line"), cat("kind"), cat("text_tokens"),
                        cat("image_tokens"), cat("num_objects"), cat("num_images"))


def split_files(counted: CountedFiles, counter: LengthCounter, options: ConversationOptions,
                max_length: int) -> tuple[np.ndarray, int, int]:
    """(sample lengths, records split, records unsplittable) with ``packing_overlong: split`` at ``max_length``."""
    lengths, records_split, unsplittable = [], 0, 0
    for path, d in zip(counted.paths, counted.per_file):
        split = split_overlong(path, counter, options, d.line, d.total_tokens, max_length, kinds=d.kind,
                               on_error="skip")
        lengths.append(split.lengths)
        records_split += split.records_split
        unsplittable += len(split.unsplittable)
    return (np.concatenate(lengths) if lengths else np.zeros(0, np.int64)), records_split, unsplittable


def file_rows(counted: CountedFiles) -> list[dict]:
    """One row per file: records read / skipped / counted, by kind, and its total-token statistics."""
    from swift_plugins.analysis.simulate import describe

    rows = []
    for path, d in zip(counted.paths, counted.per_file):
        s = d.summary.to_dict()
        row = {"jsonl": path, "records_read": s["read"], "records_skipped": s["skipped"], "num_samples": len(d)}
        row.update({name: int((d.kind == code).sum()) for name, code in KIND_CODES.items()})
        row.update(describe(d.total_tokens, "total_tokens"))
        rows.append(row)
    return rows
