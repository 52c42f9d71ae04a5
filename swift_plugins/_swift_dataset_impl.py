"""ms-swift classes behind ``swift_dataset.py`` (imports swift: load only through ``swift_dataset``).

Why a loader and not only a preprocessor: ms-swift's own path loads a ``.jsonl`` with
``datasets.load_dataset('json')`` (line numbers lost, one bad line fails the whole file with a
pyarrow error, mixed ``poly``/``bbox_2d`` objects unified into one struct with nulls) and then
preprocesses with ``strict=False``, where a row that raises is dropped with a log line. Here the
loader reads the file with :func:`swift_plugins.data.iter_records` (path:line errors, raise/skip
with a report) and the preprocessor turns each record into a row with exactly
:func:`swift_plugins.data.to_swift_row`, strictly (an exception stops the run, never drops a row).

    --dataset train.jsonl -> DatasetSyntax -> SwiftpackDatasetMeta (registered for that path)
      -> SwiftpackJsonlLoader.load: iter_records (+ split_record) -> HfDataset{record, line, presorted}
      -> RecordRowPreprocessor (RowPreprocessor.__call__: map, cache) -> {messages, images}
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from datasets import Dataset as HfDataset
from modelscope.hub.utils.utils import get_cache_dir
from swift.dataset import DatasetMeta, RowPreprocessor
from swift.dataset.loader import DatasetLoader
from swift.utils import get_logger

from .data import ConversationOptions, RecordError, iter_records, split_record, to_swift_row

logger = get_logger()

# Bump when to_swift_row's output for the same record and options changes: it names the map cache.
CONVERSION_VERSION = "1"

# Summary of the last load of each path (ReadSummary), for the entry point to log / assert
# `samples in = valid + skipped`.
LOAD_SUMMARIES: Dict[str, Any] = {}


@dataclass(frozen=True)
class JsonlSpec:
    options: ConversationOptions
    on_error: str = "raise"
    report_path: Optional[str] = None
    check_images: bool = True
    max_length: Optional[int] = None
    length_of: Optional[Callable[[dict], int]] = None


@dataclass
class SwiftpackDatasetMeta(DatasetMeta):
    swiftpack_spec: Optional[JsonlSpec] = None


class RecordRowPreprocessor(RowPreprocessor):
    """Row ``{"record": json, "line": n, "presorted": bool}`` -> ``to_swift_row(record, ...)``."""

    def __init__(self, options: ConversationOptions, base_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.options = options
        self.base_dir = base_dir

    def preprocess(self, row: Dict[str, Any]) -> Dict[str, Any]:
        kwargs = self.options.to_dict()
        if row["presorted"]:  # split_record pieces are already in conversation order
            kwargs["object_ordering"] = "none"
        return to_swift_row(json.loads(row["record"]), base_dir=self.base_dir, sample_key=row["line"], **kwargs)

    def batched_preprocess(self, batched_row, *, strict: bool, ignore_max_length_error: bool):
        # Always strict: records are validated before this point, so an exception here is a bug
        # that must stop the run, not a row ms-swift drops with a log line.
        return super().batched_preprocess(batched_row, strict=True, ignore_max_length_error=ignore_max_length_error)

    def _map_cache_file(self, fingerprint: str) -> str:
        # ms-swift names the cache by the input's fingerprint only; the output also depends on
        # the options, the image folder and this code's version.
        key = json.dumps([self.options.to_dict(), self.base_dir, CONVERSION_VERSION], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return os.path.join(get_cache_dir(), 'datasets', 'map_cache',
                            f'{fingerprint}_swiftpack{digest}_{self.cache_format_version}.arrow')


class SwiftpackJsonlLoader(DatasetLoader):
    """Loads a registered LVIS JSONL path through ``iter_records`` (see the module docstring)."""

    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        spec: JsonlSpec = dataset_meta.swiftpack_spec
        path = dataset_syntax.dataset
        stream = iter_records(path, on_error=spec.on_error, check_images=spec.check_images)
        columns = {"record": [], "line": [], "presorted": []}
        split_records = 0
        for line_no, record in stream:
            pieces, presorted = [record], False
            if spec.max_length is not None:
                presorted = True
                try:
                    pieces = split_record(record, max_length=spec.max_length, length_of=spec.length_of,
                                          object_ordering=spec.options.object_ordering, seed=spec.options.seed,
                                          sample_key=line_no, path=path, line=line_no)
                except RecordError as e:
                    if spec.on_error == "raise":
                        raise
                    stream.reject(e, json.dumps(record, ensure_ascii=False))
                    continue
                split_records += len(pieces) > 1
            for piece in pieces:
                columns["record"].append(json.dumps(piece, ensure_ascii=False))
                columns["line"].append(line_no)
                columns["presorted"].append(presorted)
        summary = stream.summary
        if spec.report_path is not None:
            stream.write_report(spec.report_path)
            summary.report_path = spec.report_path
        LOAD_SUMMARIES[path] = summary
        logger.info(summary.log_line() + (f"; {split_records} dense records split into "
                                          f"{len(columns['line']) - summary.valid + split_records} rows"
                                          if split_records else ""))
        if summary.valid == 0:
            raise ValueError(f"{path}: no valid records ({summary.log_line()}); fix the file or the path")
        dataset = HfDataset.from_dict(columns)
        preprocessor = RecordRowPreprocessor(spec.options, os.path.dirname(os.path.abspath(path)))
        dataset = preprocessor(dataset, num_proc=self.num_proc, load_from_cache_file=self.load_from_cache_file,
                               strict=True)
        if self.remove_unused_columns:
            dataset = RowPreprocessor.remove_useless_columns(dataset)
        if self.streaming:
            dataset = dataset.to_iterable_dataset()
        return dataset
