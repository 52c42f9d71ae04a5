"""Reading a JSONL file through the validator: raise at the first bad record, or skip and report each.

    stream = iter_records("train.jsonl", on_error="skip", report_path="skipped.jsonl")
    rows = [swift_row(r, record_kind(r), base_dir=stream.base_dir, sample_key=n) for n, r in stream]
    print(stream.summary.log_line())
    # train.jsonl: samples in 240 = valid 238 + skipped 2 (image_missing 2); 0 blank lines (not records)

Nothing is lost silently: ``read == valid + skipped``; every skipped record is one line of the
report (path, line, field, kind, reason, the raw line cut at 200 characters).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional

from swift_plugins.data.records import ON_ERROR_CHOICES, RECORD_FORMATS, RecordError, parse_record, validate_record
from swift_plugins.files import atomic_write_text

__all__ = ["RAW_REPORT_CHARS", "ReadSummary", "RecordStream", "SkippedRecord", "dump_record", "iter_records",
           "skipped_record", "write_skip_report"]

RAW_REPORT_CHARS = 200  # a skipped record's raw line is kept in the report up to this many chars

@dataclass(frozen=True)
class SkippedRecord:
    """One record left out under ``on_error="skip"``: one line of the skip report."""
    path: str
    line: int
    field: str
    kind: str
    reason: str
    raw: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ReadSummary:
    """Counts of one pass over a JSONL file: ``read == valid + skipped``; blank lines are not records."""
    path: str
    read: int = 0
    valid: int = 0
    skipped: int = 0
    blank_lines: int = 0
    skipped_by_kind: dict = field(default_factory=dict)
    report_path: Optional[str] = None
    complete: bool = False  # True once the whole file was read

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skipped_by_kind"] = dict(sorted(self.skipped_by_kind.items()))
        return d

    def log_line(self) -> str:
        """E.g. ``train.jsonl: samples in 240 = valid 238 + skipped 2 (image_missing 2); 1 blank line (not records)``."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped_by_kind.items()))
        s = f"{self.path}: samples in {self.read} = valid {self.valid} + skipped {self.skipped}"
        s += f" ({kinds})" if kinds else ""
        s += f"; {self.blank_lines} blank line{'s' if self.blank_lines != 1 else ''} (not records)"
        if self.report_path:
            s += f"; skip report: {self.report_path}"
        return s


class RecordStream:
    """Iterator of ``(line_no, record)`` over a JSONL file; see :func:`iter_records`.

    ``summary`` (a :class:`ReadSummary`) and ``skipped`` (list of :class:`SkippedRecord`) fill in
    as the stream is consumed; they are final when ``summary.complete`` is True.
    """

    def __init__(self, path, *, on_error: str = "raise", report_path=None, check_images: bool = True,
                 base_dir: Optional[str] = None, record_format: str = "auto"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error: {on_error!r} is not one of {ON_ERROR_CHOICES} (use 'raise' or 'skip')")
        if record_format not in RECORD_FORMATS:
            raise ValueError(f"record_format: {record_format!r} is not one of {RECORD_FORMATS}")
        self.record_format = record_format
        self.path = str(path)
        self.on_error = on_error
        self.report_path = None if report_path is None else str(report_path)
        self.check_images = check_images
        self.base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(self.path))
        self.summary = ReadSummary(path=self.path, report_path=self.report_path)
        self.skipped: list[SkippedRecord] = []
        self._it = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict]:
        return next(self._it)

    def _run(self) -> Iterator[tuple[int, dict]]:
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    self.summary.blank_lines += 1
                    continue
                self.summary.read += 1
                try:
                    record = parse_record(raw, path=self.path, line=line_no)
                    validate_record(record, path=self.path, line=line_no, base_dir=self.base_dir,
                                    check_images=self.check_images, record_format=self.record_format)
                except RecordError as e:
                    if self.on_error == "raise":
                        raise
                    self._skip(e, raw)
                    continue
                self.summary.valid += 1
                yield line_no, record
        self.summary.complete = True
        if self.report_path is not None:
            self.write_report(self.report_path)

    def write_report(self, path) -> None:
        """Write the skip report (JSONL of :class:`SkippedRecord`) atomically to ``path``."""
        write_skip_report(path, self.skipped)

    def _skip(self, error: RecordError, raw: bytes | str) -> None:
        self.skipped.append(skipped_record(error, raw))
        self.summary.skipped += 1
        kinds = Counter(self.summary.skipped_by_kind)
        kinds[error.kind] += 1
        self.summary.skipped_by_kind = dict(sorted(kinds.items()))


def iter_records(path, *, on_error: str = "raise", report_path=None, check_images: bool = True,
                 base_dir: Optional[str] = None, record_format: str = "auto") -> RecordStream:
    """Read and validate a JSONL file: an iterator of ``(line_no, record)`` for valid records.

    ``record_format``: auto (each record's kind from its keys), lvis or messages; see
    :func:`swift_plugins.data.records.record_kind` (``record_kind(record)`` tells a caller which).

    - ``on_error="raise"``: the first bad record raises :class:`RecordError` (``path:line: field: ...``).
    - ``on_error="skip"``: bad records are left out and listed in ``stream.skipped``; with
      ``report_path`` the skip report (JSONL, one ``SkippedRecord`` per line: path, line, field,
      kind, reason, raw line truncated to 200 chars) is written atomically when the file has been
      read to the end - also when nothing was skipped, so its presence proves a complete pass.
    - ``stream.summary``: read / valid / skipped / skipped_by_kind / blank_lines, so callers can log
      ``samples in = valid + skipped``. Blank lines are not records: counted, never reported.

    Usage::

        stream = iter_records("train.jsonl", on_error="skip")
        rows = [to_swift_row(r, base_dir=stream.base_dir, sample_key=n) for n, r in stream]
        print(stream.summary.log_line())
    """
    return RecordStream(path, on_error=on_error, report_path=report_path, check_images=check_images,
                        base_dir=base_dir, record_format=record_format)


def dump_record(record: dict) -> str:
    """One JSONL line (with the newline) as every writer in this project emits it: compact, UTF-8."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def skipped_record(error: RecordError, raw: bytes | str) -> SkippedRecord:
    """The skip-report entry of a bad record; the raw line is cut at ``RAW_REPORT_CHARS`` and the cut marked.

    >>> e = RecordError("t.jsonl", 3, "width", "missing (add it)", "missing_size")
    >>> skipped_record(e, b"x" * 205 + b"\\n").raw[-16:]
    'xxx...(+5 chars)'
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    if len(text) > RAW_REPORT_CHARS:
        text = text[:RAW_REPORT_CHARS] + f"...(+{len(text) - RAW_REPORT_CHARS} chars)"
    return SkippedRecord(error.path, error.line, error.field, error.kind, error.message, text)


def write_skip_report(path, skipped) -> None:
    """The skip report: one JSON :class:`SkippedRecord` per line, written atomically (also when empty)."""
    atomic_write_text(path, "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in skipped))
