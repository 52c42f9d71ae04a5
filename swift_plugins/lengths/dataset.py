"""Exact per-record token lengths of a whole JSONL file: validated, parallel, deterministic, cached.

One pass over the file (read in chunks of raw lines, in order)::

    raw lines --parse+validate (data.py)--> record --to_swift_row--> response text --tokenizer--> tokens
                                              \\--width/height--> ImageTokenRule --> image tokens

Chunks go to ``num_workers`` processes and come back in file order, so the result (and every
packing plan made from it) is the same for any worker count. Bad records follow the validator's
policy: ``raise`` stops at the first one in file order, ``skip`` lists each in the skip report.

Cache: the arrays are stored under ``cache_dir/<key>.npz`` where ``key`` hashes the data file's
bytes, the tokenizer, the conversation options, the image rule, the template frames, the read
policy and the source of the counting code; any change gives a new key, so a stale cache is never
read. A rerun with unchanged inputs only hashes the file and loads the arrays.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from swift_plugins.data import conversation, records
from swift_plugins.data.conversation import ConversationOptions, emit_coords, to_swift_row
from swift_plugins.data.reader import ReadSummary, SkippedRecord, skipped_record, write_skip_report
from swift_plugins.data.records import ON_ERROR_CHOICES, RecordError, parse_record, validate_record
from swift_plugins.files import atomic_open, file_digest
from swift_plugins.lengths import counter as counter_mod
from swift_plugins.lengths import image_rule
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter

__all__ = ["CACHE_FORMAT", "DatasetLengths", "cache_key", "code_digest", "count_dataset", "record_length",
           "record_text_tokens"]

CHUNK_LINES = 2048
CACHE_FORMAT = 1
VERIFY_EVERY = 997  # every 997th line is also counted the slow, obviously-exact way


@dataclass
class DatasetLengths:
    """Per-record arrays (aligned; one entry per valid record, in file order) and the read summary."""
    line: np.ndarray          # 1-based line numbers in the JSONL
    text_tokens: np.ndarray
    image_tokens: np.ndarray
    num_objects: np.ndarray
    summary: ReadSummary
    skipped: list = field(default_factory=list)   # SkippedRecord, file order
    from_cache: bool = False

    @property
    def total_tokens(self) -> np.ndarray:
        return self.text_tokens + self.image_tokens

    def __len__(self) -> int:
        return int(self.line.shape[0])


# ------------------------------------------------------------------------------ worker side
_WORKER: dict = {}


def _init_worker(state: dict, counter: Optional[LengthCounter] = None) -> None:
    """Worker globals; in-process (``counter`` given) the caller's counter is reused, not re-parsed."""
    _WORKER["counter"] = counter if counter is not None else LengthCounter.from_state(state["counter"])
    _WORKER["options"] = state["options"]
    _WORKER["path"] = state["path"]
    _WORKER["base_dir"] = state["base_dir"]
    _WORKER["check_images"] = state["check_images"]
    _WORKER["frame"] = state["frame"]
    _WORKER["answers"] = DetectionAnswerCounter(_WORKER["counter"].text_tokens)


def _count_chunk(chunk: tuple[int, list[bytes]]) -> list[tuple]:
    """Results for one chunk of raw lines: ("ok", line, text, image, objects) | ("bad", line, error, raw)."""
    start, lines = chunk
    counter: LengthCounter = _WORKER["counter"]
    answers: DetectionAnswerCounter = _WORKER["answers"]
    path, base_dir, options = _WORKER["path"], _WORKER["base_dir"], _WORKER["options"]
    frame, emit_norm = _WORKER["frame"], options["emit_norm"]
    out = []
    for offset, raw in enumerate(lines):
        line_no = start + offset
        if not raw.strip():
            out.append(("blank", line_no))
            continue
        try:
            record = parse_record(raw, path=path, line=line_no)
            validate_record(record, path=path, line=line_no, base_dir=base_dir,
                                     check_images=_WORKER["check_images"])
            w, h = record["width"], record["height"]
            image_tokens = counter.image_tokens(w, h)
        except RecordError as e:
            out.append(("bad", line_no, e, raw))
            continue
        except ValueError as e:  # the resize rule refused the image size (aspect ratio)
            out.append(("bad", line_no, RecordError(path, line_no, "width/height", f"{e} (fix or drop the image)",
                                                    "image_size"), raw))
            continue
        text_tokens = record_text_tokens(record, answers, frame, emit_norm)
        if line_no % VERIFY_EVERY == 0:  # the fast count must equal the tokenizer on the real row
            row = to_swift_row(record, base_dir=base_dir, sample_key=line_no, **options)
            (full,) = counter.count_rows([row], [[(w, h)]])
            if (full.text_tokens, full.image_tokens) != (text_tokens, image_tokens):
                raise RuntimeError(f"{path}:{line_no}: fast length {text_tokens}+{image_tokens} != tokenizer "
                                   f"{full.text_tokens}+{full.image_tokens}; please report this record")
        out.append(("ok", line_no, text_tokens, image_tokens, len(record["objects"])))
    return out


def record_text_tokens(record: dict, answers: DetectionAnswerCounter, frame: int, emit_norm: str) -> int:
    """Text tokens of a validated record's sample: the template frame + its answer (any object order)."""
    w, h = record["width"], record["height"]
    objects = []
    for obj in record["objects"]:
        key = "poly" if "poly" in obj else "bbox_2d"
        objects.append((obj["desc"], key, emit_coords(obj[key], w, h, emit_norm)))
    return frame + answers.count(objects)


def record_length(record: dict, counter: LengthCounter, answers: DetectionAnswerCounter, frame: int,
                  emit_norm: str) -> int:
    """Total tokens of a validated record's sample (text + image)."""
    return record_text_tokens(record, answers, frame, emit_norm) + counter.image_tokens(record["width"],
                                                                                      record["height"])


def _chunks(path: str, max_records: int):
    """Yield (first_line_no, [raw lines]); stops after ``max_records`` non-blank lines (0 = all)."""
    seen = 0
    with open(path, "rb") as f:
        start, buf = 1, []
        for line_no, raw in enumerate(f, start=1):
            if max_records and seen >= max_records:
                break
            if raw.strip():
                seen += 1
            buf.append(raw)
            if len(buf) == CHUNK_LINES:
                yield start, buf
                start, buf = line_no + 1, []
        if buf:
            yield start, buf


# ------------------------------------------------------------------------------ public API
def code_digest() -> str:
    """Hash of the code that decides a count (validator, conversation, image rule, counters, this pass)."""
    h = hashlib.blake2b(digest_size=16)
    for path in (records.__file__, conversation.__file__, image_rule.__file__, counter_mod.__file__, __file__):
        h.update(pathlib.Path(path).read_bytes())
    return h.hexdigest()


def cache_key(path: str, counter: LengthCounter, options: dict, *, on_error: str, check_images: bool,
              max_records: int, prompt_frame: int) -> str:
    state = counter.state()
    parts = {
        "format": CACHE_FORMAT,
        "data": file_digest(path),
        "data_path": os.path.abspath(path),  # image paths (check_images) resolve against it
        "tokenizer": hashlib.blake2b(state["tokenizer_json"].encode(), digest_size=16).hexdigest(),
        "rule": counter.rule.to_dict(),
        "frame": prompt_frame,
        "options": options,
        "on_error": on_error,
        "check_images": check_images,
        "max_records": max_records,
        "code": code_digest(),
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()


def count_dataset(path, counter: LengthCounter, options: ConversationOptions | dict | None = None, *,
                  on_error: str = "raise", report_path=None, check_images: bool = True, max_records: int = 0,
                  num_workers: int = 1, cache_dir=None, clear_cache: bool = False,
                  progress: Optional[Callable[[int], None]] = None) -> DatasetLengths:
    """Exact lengths of every valid record of ``path`` (see module docstring).

    ``max_records`` > 0 reads only the first that many records (a quick look). ``progress`` is
    called with the number of lines done after each chunk. With ``report_path`` the skip report
    (JSONL of SkippedRecord) is written atomically, also when nothing was skipped.
    """
    path = os.fspath(path)
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error: {on_error!r} is not one of {list(ON_ERROR_CHOICES)}")
    opts = options if isinstance(options, ConversationOptions) else ConversationOptions(**(options or {}))
    opts.check_implemented()
    opts_dict = opts.to_dict()
    user_text = "<image>" + opts.resolved_prompt
    frame = counter.frame(user_text, 1)

    cache_file = None
    if cache_dir is not None:
        key = cache_key(path, counter, opts_dict, on_error=on_error, check_images=check_images,
                        max_records=max_records, prompt_frame=frame)
        cache_file = pathlib.Path(cache_dir) / f"lengths-{key}.npz"
        if clear_cache and cache_file.exists():
            cache_file.unlink()
        if cache_file.exists():
            result = _load_cache(cache_file, path)
            if report_path is not None:
                write_skip_report(report_path, result.skipped)
                result.summary.report_path = str(report_path)
            return result

    base_dir = os.path.dirname(os.path.abspath(path))
    state = {"counter": counter.state() if num_workers > 1 else None, "options": opts_dict, "path": path,
             "base_dir": base_dir,
             "check_images": check_images, "frame": frame}
    summary = ReadSummary(path=path, report_path=None if report_path is None else str(report_path))
    lines, texts, images, objects, skipped = [], [], [], [], []

    def consume(results):
        for res in results:
            kind = res[0]
            if kind == "blank":
                summary.blank_lines += 1
                continue
            summary.read += 1
            if kind == "ok":
                summary.valid += 1
                lines.append(res[1]); texts.append(res[2]); images.append(res[3]); objects.append(res[4])
                continue
            error, raw = res[2], res[3]
            if on_error == "raise":
                raise error
            skipped.append(skipped_record(error, raw))
            summary.skipped += 1
            summary.skipped_by_kind[error.kind] = summary.skipped_by_kind.get(error.kind, 0) + 1

    done = 0
    chunks = _chunks(path, max_records)
    if num_workers <= 1:
        _init_worker(state, counter)
        for chunk in chunks:
            consume(_count_chunk(chunk))
            done += len(chunk[1])
            if progress:
                progress(done)
    else:
        ctx = mp.get_context("spawn")  # no forked tokenizer thread pools; same result as in-process
        with ctx.Pool(num_workers, initializer=_init_worker, initargs=(state,)) as pool:
            for chunk_result in pool.imap(_count_chunk, chunks, chunksize=1):
                consume(chunk_result)
                done += len(chunk_result)
                if progress:
                    progress(done)
    summary.skipped_by_kind = dict(sorted(summary.skipped_by_kind.items()))
    summary.complete = True
    result = DatasetLengths(line=np.asarray(lines, dtype=np.int64), text_tokens=np.asarray(texts, dtype=np.int64),
                            image_tokens=np.asarray(images, dtype=np.int64),
                            num_objects=np.asarray(objects, dtype=np.int64), summary=summary, skipped=skipped)
    if report_path is not None:
        write_skip_report(report_path, skipped)
    if cache_file is not None:
        _save_cache(cache_file, result)
    return result


def _save_cache(cache_file: pathlib.Path, result: DatasetLengths) -> None:
    meta = {"summary": result.summary.to_dict(), "skipped": [s.to_dict() for s in result.skipped]}
    with atomic_open(cache_file, "wb") as f:
        np.savez(f, line=result.line, text_tokens=result.text_tokens, image_tokens=result.image_tokens,
                 num_objects=result.num_objects, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _load_cache(cache_file: pathlib.Path, path: str) -> DatasetLengths:
    with np.load(cache_file) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        summary = ReadSummary(**{k: v for k, v in meta["summary"].items()})
        summary.path = path
        return DatasetLengths(line=z["line"], text_tokens=z["text_tokens"], image_tokens=z["image_tokens"],
                              num_objects=z["num_objects"], summary=summary,
                              skipped=[SkippedRecord(**s) for s in meta["skipped"]], from_cache=True)
