"""Bind LVIS JSONL paths to ms-swift's dataset loading (thin adapter; importing it does nothing).

After ``register_jsonl("data/train.jsonl", ConversationOptions(...))``, ms-swift's
``load_dataset(["data/train.jsonl"])`` - the path ``swift sft --dataset data/train.jsonl`` takes -
reads the file with :func:`swift_plugins.data.iter_records` and yields for each record exactly
``to_swift_row(record, base_dir=<the JSONL's folder>, sample_key=<line number>, **options)``
after ms-swift's standard row normalisation (``images`` become ``[{"bytes": None, "path": p}]``).

ms-swift finds the registration by the path string given to ``--dataset`` (both the form
registered and its absolute form are registered). Note ms-swift's fallback: a path that is not
registered but has the same file name as a registered one (``train.jsonl``) gets the same meta;
our loader then reads the path actually given, so it is converted the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from .data import ON_ERROR_CHOICES, ConversationOptions

__all__ = ["DEFAULT_JSONL_PATHS", "load_summaries", "register", "register_jsonl", "registered_paths"]

_REPO = Path(__file__).resolve().parents[1]
# Registered by register() with default options unless already registered by register_jsonl().
DEFAULT_JSONL_PATHS = tuple(
    str(_REPO / "public_data" / "lvis" / folder / f"{split}.jsonl")
    for folder in ("sample", "rescale_32_768_poly_20") for split in ("train", "val"))


def register_jsonl(path, options: Optional[ConversationOptions] = None, on_error: str = "raise", *,
                   report_path=None, check_images: bool = True, max_length: Optional[int] = None,
                   length_of: Optional[Callable[[dict], int]] = None) -> list[str]:
    """Register ``path`` with ms-swift so loading it goes through ``iter_records`` + ``to_swift_row``.

    - ``options``: :class:`ConversationOptions` (default: defaults); options that are not
      implemented (``coord_tokens``/``coord_offset``) are refused here, before training starts.
    - ``on_error``: ``"raise"`` stops at the first bad record (``path:line: field: ...``);
      ``"skip"`` needs ``report_path``, where the skip report (JSONL) is written atomically at each load.
    - ``max_length`` + ``length_of``: dense records longer than ``max_length`` tokens are split with
      :func:`swift_plugins.data.split_record` (one object too long alone: error or skip per ``on_error``).

    Calling it again for a path replaces the earlier registration (latest call wins). Returns
    the registered path strings. Each load's ``ReadSummary`` is in :func:`load_summaries`.
    """
    options = ConversationOptions() if options is None else options
    if not isinstance(options, ConversationOptions):
        raise TypeError(f"options: expected ConversationOptions, got {type(options).__name__}")
    options.check_implemented()
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error: {on_error!r} is not one of {list(ON_ERROR_CHOICES)}")
    if on_error == "skip" and report_path is None:
        raise ValueError(f"{path}: on_error='skip' needs a report_path for the skipped records "
                         "(nothing is dropped without a report)")
    if (max_length is None) != (length_of is None):
        raise ValueError("max_length and length_of go together: give both to split dense records, or neither")
    from swift.dataset import register_dataset

    from ._swift_dataset_impl import JsonlSpec, RecordRowPreprocessor, SwiftpackDatasetMeta, SwiftpackJsonlLoader

    spec = JsonlSpec(options=options, on_error=on_error, report_path=None if report_path is None else str(report_path),
                     check_images=check_images, max_length=max_length, length_of=length_of)
    keys = list(dict.fromkeys([os.fspath(path), os.path.abspath(os.fspath(path))]))
    for key in keys:
        meta = SwiftpackDatasetMeta(
            dataset_path=key, loader=SwiftpackJsonlLoader, swiftpack_spec=spec,
            preprocess_func=RecordRowPreprocessor(options, os.path.dirname(os.path.abspath(key))),
            help="LVIS polygon JSONL read by swift_plugins.data (validated, converted with to_swift_row)")
        register_dataset(meta, exist_ok=True)
    return keys


def load_summaries() -> dict:
    """``{path as given to --dataset: ReadSummary}`` of the loads done in this process (read =
    valid + skipped; log ``summary.log_line()``)."""
    from ._swift_dataset_impl import LOAD_SUMMARIES
    return dict(LOAD_SUMMARIES)


def registered_paths() -> list[str]:
    """Paths currently registered through this module."""
    from swift.dataset import DATASET_MAPPING

    from ._swift_dataset_impl import SwiftpackDatasetMeta
    return [m.dataset_path for m in DATASET_MAPPING.values() if isinstance(m, SwiftpackDatasetMeta)]


def register() -> list[str]:
    """Idempotent: register :data:`DEFAULT_JSONL_PATHS` (bundled sample, full LVIS folder) with
    default options, leaving alone any path a ``register_jsonl`` call already configured.
    Registration only binds names; no file is read until ms-swift loads the dataset."""
    done = set(registered_paths())
    out = []
    for path in DEFAULT_JSONL_PATHS:
        if path not in done:
            out += register_jsonl(path)
    return out
