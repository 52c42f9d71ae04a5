"""ms-swift ``--dataset PATH.jsonl`` for our records: read by our validator, converted by ``to_swift_row``.

After ``register_jsonl("data/train.jsonl", ConversationOptions(...))``, ms-swift's
``load_dataset(["data/train.jsonl"])`` (what ``swift sft --dataset data/train.jsonl`` runs) yields
for each valid record exactly ``to_swift_row(record, base_dir=<the JSONL's folder>,
sample_key=<line number>, **options)`` after ms-swift's row normalisation (``images`` become
``[{"bytes": None, "path": p}]``)::

    --dataset train.jsonl -> DatasetSyntax -> SwiftpackDatasetMeta (registered for that path)
      -> SwiftpackJsonlLoader.load: iter_records (path:line errors, raise | skip + report)
      -> HfDataset{record, line} -> RecordRowPreprocessor (strict: an exception stops the run)
      -> {messages, images}

Why a loader and not only a preprocessor: ms-swift's own path reads a ``.jsonl`` with
``datasets.load_dataset('json')`` (line numbers lost, one bad line fails the file with a pyarrow
error, mixed ``poly``/``bbox_2d`` objects unified into one struct with nulls) and preprocesses
with ``strict=False``, where a row that raises is dropped with a log line.

ms-swift finds the registration by the path string given to ``--dataset`` (the form registered
and its absolute form are both registered). Its fallback: an unregistered path with the same
file name as a registered one (``train.jsonl``) gets the same meta; our loader then reads the
path actually given, so it is converted the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from datasets import Dataset as HfDataset
from swift.dataset import DatasetMeta, RowPreprocessor, register_dataset
from swift.dataset.loader import DatasetLoader
from swift.utils import get_logger

from swift_plugins.data.conversation import ConversationOptions, swift_row
from swift_plugins.data.reader import iter_records
from swift_plugins.data.records import ON_ERROR_CHOICES, RECORD_FORMATS, record_kind

__all__ = ["CONVERSION_VERSION", "conversion_key", "register_jsonl"]

logger = get_logger()

# Bump when to_swift_row's output for the same record and options changes: it is part of the
# conversion key, which ms-swift's map cache name follows (conversion_key).
CONVERSION_VERSION = "2"  # 2: rows carry their record kind (lvis | messages)


@dataclass(frozen=True)
class JsonlSpec:
    options: ConversationOptions
    on_error: str = "raise"
    report_path: Optional[str] = None
    check_images: bool = True
    record_format: str = "auto"


@dataclass
class SwiftpackDatasetMeta(DatasetMeta):
    swiftpack_spec: Optional[JsonlSpec] = None


def register_jsonl(path, options: Optional[ConversationOptions] = None, on_error: str = "raise", *,
                   report_path=None, check_images: bool = True, record_format: str = "auto") -> list[str]:
    """Register ``path`` with ms-swift so loading it goes through ``iter_records`` + ``to_swift_row``.

    - ``options``: :class:`ConversationOptions` (default: defaults); options that are not
      implemented (``coord_tokens``/``coord_offset``) are refused here, before training starts.
    - ``on_error``: ``"raise"`` stops at the first bad record (``path:line: field: ...``);
      ``"skip"`` needs ``report_path``, where the skip report (JSONL) is written atomically at each load.
    - ``record_format``: lvis, messages or auto (each record by its keys); a messages row becomes
      ms-swift's row as written (the conversation options apply to LVIS records only).

    Calling it again for a path replaces the earlier registration (latest call wins). Returns
    the registered path strings.
    """
    options = ConversationOptions() if options is None else options
    if not isinstance(options, ConversationOptions):
        raise TypeError(f"options: expected ConversationOptions, got {type(options).__name__}")
    options.check_implemented()
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error: {on_error!r} is not one of {list(ON_ERROR_CHOICES)}")
    if record_format not in RECORD_FORMATS:
        raise ValueError(f"record_format: {record_format!r} is not one of {list(RECORD_FORMATS)}")
    if on_error == "skip" and report_path is None:
        raise ValueError(f"{path}: on_error='skip' needs a report_path for the skipped records "
                         "(nothing is dropped without a report)")
    spec = JsonlSpec(options=options, on_error=on_error, report_path=None if report_path is None else str(report_path),
                     check_images=check_images, record_format=record_format)
    keys = list(dict.fromkeys([os.fspath(path), os.path.abspath(os.fspath(path))]))
    for key in keys:
        meta = SwiftpackDatasetMeta(
            dataset_path=key, loader=SwiftpackJsonlLoader, swiftpack_spec=spec,
            preprocess_func=RecordRowPreprocessor(options, os.path.dirname(os.path.abspath(key))),
            help="JSONL of LVIS records / messages rows read by swift_plugins.data (validated, converted by kind)")
        register_dataset(meta, exist_ok=True)
    return keys


def conversion_key(options: ConversationOptions, base_dir: str) -> str:
    """What a row's conversion depends on besides the record: the options, the image folder and
    :data:`CONVERSION_VERSION`, as a short digest.

    ms-swift names its map cache by the input dataset's fingerprint alone; the loader puts this
    key into every input row, so the fingerprint (and with it the cache file) changes whenever
    the output would, and a stale cache is never served.
    """
    key = json.dumps([options.to_dict(), base_dir, CONVERSION_VERSION], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class RecordRowPreprocessor(RowPreprocessor):
    """Row ``{"record": json, "line": n, "kind": "lvis" | "messages"}`` -> ``swift_row(record, kind, ...)``."""

    def __init__(self, options: ConversationOptions, base_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.options = options
        self.base_dir = base_dir

    def preprocess(self, row: Dict[str, Any]) -> Dict[str, Any]:
        return swift_row(json.loads(row["record"]), row["kind"], base_dir=self.base_dir, sample_key=row["line"],
                         **self.options.to_dict())

    def batched_preprocess(self, batched_row, *, strict: bool, ignore_max_length_error: bool):
        # Always strict: records are validated before this point, so an exception here is a bug
        # that must stop the run, not a row ms-swift drops with a log line.
        return super().batched_preprocess(batched_row, strict=True, ignore_max_length_error=ignore_max_length_error)


class SwiftpackJsonlLoader(DatasetLoader):
    """Loads a registered JSONL path through ``iter_records`` (see the module docstring)."""

    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        spec: JsonlSpec = dataset_meta.swiftpack_spec
        path = dataset_syntax.dataset
        stream = iter_records(path, on_error=spec.on_error, check_images=spec.check_images,
                              report_path=spec.report_path, record_format=spec.record_format)
        base_dir = os.path.dirname(os.path.abspath(path))
        columns = {"record": [], "line": [], "kind": []}
        for line_no, record in stream:
            columns["record"].append(json.dumps(record, ensure_ascii=False))
            columns["line"].append(line_no)
            columns["kind"].append(record_kind(record, spec.record_format, path=path, line=line_no))
        summary = stream.summary
        logger.info(summary.log_line())
        if summary.valid == 0:
            raise ValueError(f"{path}: no valid records ({summary.log_line()}); fix the file or the path")
        columns["conversion"] = [conversion_key(spec.options, base_dir)] * len(columns["record"])
        dataset = HfDataset.from_dict(columns)
        preprocessor = RecordRowPreprocessor(spec.options, base_dir)
        dataset = preprocessor(dataset, num_proc=self.num_proc, load_from_cache_file=self.load_from_cache_file,
                               strict=True)
        if self.remove_unused_columns:
            dataset = RowPreprocessor.remove_useless_columns(dataset)
        if self.streaming:
            dataset = dataset.to_iterable_dataset()
        return dataset
