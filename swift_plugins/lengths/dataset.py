"""Exact per-record token lengths of a whole JSONL file: validated, parallel, deterministic, cached.

One pass over the file (read in chunks of raw lines, in order), each record by its kind
(``record_format`` auto / lvis / messages, see :func:`swift_plugins.data.records.record_kind`)::

    lvis:     raw line --parse+validate--> record --objects--> DetectionAnswerCounter + frame --> text tokens
                                                  \\--width/height--> ImageTokenRule --> image tokens
    messages: raw line --parse+validate, image headers--> record --chat layout--> tokenizer --> text tokens
                                                          \\--header sizes--> ImageTokenRule --> image tokens

A messages record's image sizes come from its image headers (PIL), so they are read even with
``check_images=False`` (which then only spares the LVIS records the disk); with ``check_images``
every image's pixel data is also decoded once (a corrupt image is a bad record, kind
``image_undecodable``, here and not an ``OSError`` in training; ``check_image_data=False`` reads
headers only: the decode is most of the counting time, ``docs/benchmarks.md``).

Chunks go to ``num_workers`` processes and come back in file order, so the result (and every
packing plan made from it) is the same for any worker count. Bad records follow the validator's
policy: ``raise`` stops at the first one in file order, ``skip`` lists each in the skip report.

Cache: the arrays are stored under ``cache_dir/<key>.npz`` where ``key`` hashes the data file's
bytes, the tokenizer, the conversation options, the image rule, the template frames and chat
layout, the read policy and record format and the source of the counting code; any change gives a
new key, so a stale cache is never read. The images are outside the file: the entry stores
(path, size, mtime) of each messages record's image (and, when their pixel data was checked, of
each LVIS record's image) and is used only while all still match. A rerun
with unchanged inputs only hashes the file (and stats those images) and loads the arrays.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import pathlib
import pickle
import signal
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from swift_plugins.data import conversation, messages, records
from swift_plugins.data.conversation import ConversationOptions, emit_coords, to_swift_row
from swift_plugins.data.messages import image_paths, messages_image_sizes
from swift_plugins.data.reader import ReadSummary, SkippedRecord, skipped_record, write_skip_report
from swift_plugins.data.records import (ON_ERROR_CHOICES, RECORD_FORMATS, RecordError, parse_record, record_kind,
                                        validate_record)
from swift_plugins.files import atomic_open, file_digest, scratch_file
from swift_plugins.lengths import chat as chat_mod
from swift_plugins.lengths import counter as counter_mod
from swift_plugins.lengths import image_rule
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter

__all__ = ["CACHE_FORMAT", "KIND_CODES", "DatasetLengths", "cache_key", "code_digest", "count_dataset",
           "messages_record_length", "record_length", "record_text_tokens"]

CHUNK_LINES = 2048
CACHE_FORMAT = 2  # 2: record kinds, image counts, messages records' image stamps, the chat layout
VERIFY_EVERY = 997  # every 997th line is also counted the slow, obviously-exact way
KIND_CODES = {"lvis": 0, "messages": 1}  # DatasetLengths.kind


@dataclass
class DatasetLengths:
    """Per-record arrays (aligned; one entry per valid record, in file order) and the read summary."""
    line: np.ndarray          # 1-based line numbers in the JSONL
    text_tokens: np.ndarray
    image_tokens: np.ndarray
    num_objects: np.ndarray   # 0 for messages records
    kind: np.ndarray          # int8, KIND_CODES: 0 lvis, 1 messages
    num_images: np.ndarray
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
    """Worker globals; in-process (``counter`` given) the caller's counter is reused, not re-parsed.

    A pool worker ignores SIGINT: Ctrl-C reaches the whole process group, and the parent alone
    ends the run (one line, exit 130) and terminates the pool, instead of one traceback per worker.
    """
    if counter is None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["counter"] = counter if counter is not None else LengthCounter.from_state(state["counter"])
    _WORKER["options"] = state["options"]
    _WORKER["path"] = state["path"]
    _WORKER["base_dir"] = state["base_dir"]
    _WORKER["check_images"] = state["check_images"]
    _WORKER["decode"] = state["check_images"] and state["check_image_data"]
    _WORKER["frame"] = state["frame"]
    _WORKER["record_format"] = state["record_format"]
    _WORKER["answers"] = DetectionAnswerCounter(_WORKER["counter"].text_tokens)


def _count_chunk(chunk: tuple[int, list[bytes]]) -> list[tuple]:
    """Results for one chunk of raw lines, in order: ("ok", line, text, image, objects, kind, images,
    image paths) | ("bad", line, error, raw) | ("blank", line). Messages records are tokenized in one batch."""
    start, lines = chunk
    counter: LengthCounter = _WORKER["counter"]
    path, base_dir = _WORKER["path"], _WORKER["base_dir"]
    out: list = []
    pending = []  # (index in out, line, record, image sizes) of the chunk's messages records
    for offset, raw in enumerate(lines):
        line_no = start + offset
        if not raw.strip():
            out.append(("blank", line_no))
            continue
        try:
            record = parse_record(raw, path=path, line=line_no)
            kind = record_kind(record, _WORKER["record_format"], path=path, line=line_no)
            if kind == "messages":
                sizes = messages_image_sizes(record, path=path, line=line_no, base_dir=base_dir,
                                             decode=_WORKER["decode"])
                _check_resize(counter, sizes, path, line_no)
                pending.append((len(out), line_no, record, sizes))
                out.append(None)
                continue
            out.append(_lvis_result(record, line_no))
        except RecordError as e:
            out.append(("bad", line_no, e, raw))
    if pending:
        counts = counter.count_messages_batch([(rec["messages"], sizes) for _, _, rec, sizes in pending])
        for (i, line_no, record, sizes), n in zip(pending, counts):
            if line_no % VERIFY_EVERY == 0:  # the fast count must equal the strings ms-swift tokenizes
                full = counter.count_messages_exact(record["messages"], sizes)
                if full != n:
                    raise RuntimeError(f"{path}:{line_no}: fast length {n.text_tokens}+{n.image_tokens} != tokenizer "
                                       f"{full.text_tokens}+{full.image_tokens}; please report this record")
            out[i] = ("ok", line_no, n.text_tokens, n.image_tokens, 0, KIND_CODES["messages"], len(sizes),
                      tuple(image_paths(record, base_dir)))
    return out


def _check_resize(counter: LengthCounter, sizes, path: str, line_no: int) -> None:
    for i, (w, h) in enumerate(sizes):
        try:
            counter.image_tokens(w, h)
        except ValueError as e:  # the resize rule refused the image size (aspect ratio)
            raise RecordError(path, line_no, f"images[{i}]", f"{e} (fix or drop the image)", "image_size") from None


def _lvis_result(record: dict, line_no: int) -> tuple:
    counter: LengthCounter = _WORKER["counter"]
    path, base_dir, options, frame = _WORKER["path"], _WORKER["base_dir"], _WORKER["options"], _WORKER["frame"]
    validate_record(record, path=path, line=line_no, base_dir=base_dir, check_images=_WORKER["check_images"],
                    check_image_data=_WORKER["decode"],
                    record_format="lvis")
    w, h = record["width"], record["height"]
    try:
        image_tokens = counter.image_tokens(w, h)
    except ValueError as e:  # the resize rule refused the image size (aspect ratio)
        raise RecordError(path, line_no, "width/height", f"{e} (fix or drop the image)", "image_size") from None
    text_tokens = record_text_tokens(record, _WORKER["answers"], frame, options["emit_norm"])
    if line_no % VERIFY_EVERY == 0:  # the fast count must equal the tokenizer on the real row
        row = to_swift_row(record, base_dir=base_dir, sample_key=line_no, **options)
        (full,) = counter.count_rows([row], [[(w, h)]])
        if (full.text_tokens, full.image_tokens) != (text_tokens, image_tokens):
            raise RuntimeError(f"{path}:{line_no}: fast length {text_tokens}+{image_tokens} != tokenizer "
                               f"{full.text_tokens}+{full.image_tokens}; please report this record")
    stamped = tuple(image_paths(record, base_dir)) if _WORKER["decode"] else ()  # decoded: re-check on change
    return ("ok", line_no, text_tokens, image_tokens, len(record["objects"]), KIND_CODES["lvis"], 1, stamped)


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


def messages_record_length(record: dict, counter: LengthCounter, base_dir) -> int:
    """Total tokens (text + image) of one validated messages record; image sizes from the headers."""
    sizes = messages_image_sizes(record, path="<record>", line=0, base_dir=os.fspath(base_dir))
    return counter.count_messages(record["messages"], sizes).total_tokens


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
    """Hash of the code that decides a count (validators, conversation, image rule, counters, this pass)."""
    h = hashlib.blake2b(digest_size=16)
    for path in (records.__file__, messages.__file__, conversation.__file__, image_rule.__file__, chat_mod.__file__,
                 counter_mod.__file__, __file__):
        h.update(pathlib.Path(path).read_bytes())
    return h.hexdigest()


def cache_key(path: str, counter: LengthCounter, options: dict, *, on_error: str, check_images: bool,
              max_records: int, prompt_frame: Optional[int], record_format: str = "auto",
              check_image_data: bool = True) -> str:
    state = counter.state()
    parts = {
        "format": CACHE_FORMAT,
        "data": file_digest(path),
        "data_path": os.path.abspath(path),  # image paths (check_images) resolve against it
        "tokenizer": hashlib.blake2b(state["tokenizer_json"].encode(), digest_size=16).hexdigest(),
        "rule": counter.rule.to_dict(),
        "family": counter.family,
        "frame": prompt_frame,
        "chat": None if counter.chat is None else counter.chat.to_dict(),
        "chat_error": counter.chat_error,
        "options": options,
        "on_error": on_error,
        "check_images": check_images,
        "check_image_data": check_images and check_image_data,
        "max_records": max_records,
        "record_format": record_format,
        "code": code_digest(),
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()


@dataclass(frozen=True)
class _CountPass:
    """One counting pass's fixed choices: ``count_dataset``'s arguments, checked and resolved."""
    path: str
    options: dict               # ConversationOptions.to_dict()
    frame: Optional[int]        # the LVIS prompt frame; None for record_format messages
    on_error: str
    check_images: bool
    check_image_data: bool
    max_records: int
    record_format: str
    num_workers: int

    def worker_state(self, counter: LengthCounter) -> dict:
        """What ``_init_worker`` needs; the counter's state is shipped only to pool workers."""
        return {"counter": counter.state() if self.num_workers > 1 else None, "options": self.options,
                "path": self.path, "base_dir": os.path.dirname(os.path.abspath(self.path)),
                "check_images": self.check_images, "check_image_data": self.check_image_data, "frame": self.frame,
                "record_format": self.record_format}


@dataclass
class _Collected:
    """Chunk results folded in file order: the per-record columns, the skipped records, the images seen.

    ``add([("ok", 3, 10, 64, 1, 0, 1, ("a.png",)), ("blank", 4)])`` appends line 3's numbers and
    counts one read, one valid, one blank line; a ``("bad", line, error, raw)`` raises ``error``
    when ``on_error`` is raise, else becomes a SkippedRecord counted under ``error.kind``."""
    summary: ReadSummary
    on_error: str
    cols: dict = field(default_factory=lambda: {k: [] for k in _ARRAYS})
    skipped: list = field(default_factory=list)
    images: dict = field(default_factory=dict)

    def add(self, results) -> None:
        summary = self.summary
        for res in results:
            kind = res[0]
            if kind == "blank":
                summary.blank_lines += 1
                continue
            summary.read += 1
            if kind == "ok":
                summary.valid += 1
                for col, value in zip(self.cols.values(), res[1:7]):
                    col.append(value)
                self.images.update(dict.fromkeys(res[7]))
                continue
            error, raw = res[2], res[3]
            if self.on_error == "raise":
                raise error
            self.skipped.append(skipped_record(error, raw))
            summary.skipped += 1
            summary.skipped_by_kind[error.kind] = summary.skipped_by_kind.get(error.kind, 0) + 1

    def result(self) -> DatasetLengths:
        self.summary.skipped_by_kind = dict(sorted(self.summary.skipped_by_kind.items()))
        self.summary.complete = True
        dtypes = {"kind": np.int8}
        arrays = {k: np.asarray(v, dtype=dtypes.get(k, np.int64)) for k, v in self.cols.items()}
        return DatasetLengths(**arrays, summary=self.summary, skipped=self.skipped)


def _checked_pass(path: str, counter: LengthCounter, options, on_error: str, record_format: str,
                  **choices) -> _CountPass:
    """Check the choices (ValueError naming the argument) and the counter (it must hold the LVIS frame for
    the prompt, or the chat layout for record_format messages: fails here, not in a worker)."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error: {on_error!r} is not one of {list(ON_ERROR_CHOICES)}")
    if record_format not in RECORD_FORMATS:
        raise ValueError(f"record_format: {record_format!r} is not one of {list(RECORD_FORMATS)}")
    opts = options if isinstance(options, ConversationOptions) else ConversationOptions(**(options or {}))
    opts.check_implemented()
    frame = None if record_format == "messages" else counter.frame("<image>" + opts.resolved_prompt, 1)
    if record_format == "messages":
        counter.count_messages_batch([])
    return _CountPass(path=path, options=opts.to_dict(), frame=frame, on_error=on_error,
                      record_format=record_format, **choices)


def _cache_file(run: _CountPass, counter: LengthCounter, cache_dir, clear_cache: bool) -> Optional[pathlib.Path]:
    """``cache_dir/lengths-<cache_key>.npz`` (removed first with ``clear_cache``); None without a cache_dir."""
    if cache_dir is None:
        return None
    key = cache_key(run.path, counter, run.options, on_error=run.on_error, check_images=run.check_images,
                    max_records=run.max_records, prompt_frame=run.frame, record_format=run.record_format,
                    check_image_data=run.check_image_data)
    cache_file = pathlib.Path(cache_dir) / f"lengths-{key}.npz"
    if clear_cache and cache_file.exists():
        cache_file.unlink()
    return cache_file


def _count_chunks(run: _CountPass, counter: LengthCounter, collected: _Collected,
                  progress: Optional[Callable[[int], None]]) -> None:
    """Count every chunk, in-process or in a pool of ``run.num_workers`` (results in file order either way)."""
    done = 0
    chunks = _chunks(run.path, run.max_records)
    if run.num_workers <= 1:
        _init_worker(run.worker_state(counter), counter)
        for chunk in chunks:
            collected.add(_count_chunk(chunk))
            done += len(chunk[1])
            if progress:
                progress(done)
    else:
        with _worker_pool(run.num_workers, run.worker_state(counter)) as pool:
            for chunk_result in pool.imap(_count_chunk, chunks, chunksize=1):
                collected.add(chunk_result)
                done += len(chunk_result)
                if progress:
                    progress(done)


def count_dataset(path, counter: LengthCounter, options: ConversationOptions | dict | None = None, *,
                  on_error: str = "raise", report_path=None, check_images: bool = True, max_records: int = 0,
                  num_workers: int = 1, cache_dir=None, clear_cache: bool = False,
                  progress: Optional[Callable[[int], None]] = None, record_format: str = "auto",
                  check_image_data: bool = True) -> DatasetLengths:
    """Exact lengths of every valid record of ``path`` (see module docstring).

    ``record_format``: auto (each record by its keys), lvis or messages. ``options`` (the
    conversation options) apply to LVIS records only. auto and lvis need the counter's LVIS frame
    for the prompt (measured by ``counter_from_template``, cached by ``load_counter``), messages
    only its chat layout. ``check_images=False`` spares LVIS records
    the disk; a messages record's image headers are read regardless (its sizes come from them).
    ``max_records`` > 0 reads only the first that many records (a quick look). ``progress`` is
    called with the number of lines done after each chunk. With ``report_path`` the skip report
    (JSONL of SkippedRecord) is written atomically, also when nothing was skipped.
    """
    path = os.fspath(path)
    run = _checked_pass(path, counter, options, on_error, record_format, check_images=check_images,
                        check_image_data=check_image_data, max_records=max_records, num_workers=num_workers)
    cache_file = _cache_file(run, counter, cache_dir, clear_cache)
    if cache_file is not None and cache_file.exists():
        result = _load_cache(cache_file, path)
        if result is not None:  # None: an image of a messages record changed since
            if report_path is not None:
                write_skip_report(report_path, result.skipped)
                result.summary.report_path = str(report_path)
            return result
    collected = _Collected(ReadSummary(path=path, report_path=None if report_path is None else str(report_path)),
                           on_error)
    _count_chunks(run, counter, collected, progress)
    result = collected.result()
    if report_path is not None:
        write_skip_report(report_path, collected.skipped)
    if cache_file is not None:
        _save_cache(cache_file, result, _image_stamps(sorted(collected.images)))
    return result


@contextlib.contextmanager
def _worker_pool(num_workers: int, state: dict):
    """A spawn pool whose workers never act on SIGINT.

    Ctrl-C reaches the whole process group; a worker still importing would print one traceback
    each. So SIGINT is blocked while the workers start (:func:`_hold_sigint`): they inherit the
    block across exec and their initializer ignores SIGINT, which discards one held meanwhile; in
    this process a Ctrl-C pressed meanwhile ends the run as any other. The workers' large state (the
    tokenizer) reaches them through a scratch file, not the start-up pipe, so starting them takes
    milliseconds, not their imports.
    """
    ctx = mp.get_context("spawn")  # no forked tokenizer thread pools; same result as in-process
    with scratch_file(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)) as path:
        release = _hold_sigint()
        try:
            pool = ctx.Pool(num_workers, initializer=_init_worker_from_file, initargs=(path,))
        except BaseException:
            release()
            raise
        with pool:
            release()  # a Ctrl-C held back while the workers started is raised here; the pool is terminated
            yield pool


def _hold_sigint():
    """Block SIGINT in this thread; returns the function that restores the thread's signal mask.

    A held SIGINT is delivered when released, not lost (a process-wide one may instead reach another
    thread that does not block it, whose handler trips the main thread's KeyboardInterrupt at once)::

        release = _hold_sigint(); signal.pthread_kill(threading.get_ident(), SIGINT)  # nothing yet
        release()                                                                     # KeyboardInterrupt
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def release() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    return release


def _init_worker_from_file(path: str) -> None:
    with open(path, "rb") as f:
        _init_worker(pickle.load(f))


def _image_stamps(paths) -> list:
    """[path, size, mtime_ns] of each image file: a cache entry holds only while all match."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


_ARRAYS = ("line", "text_tokens", "image_tokens", "num_objects", "kind", "num_images")


def _save_cache(cache_file: pathlib.Path, result: DatasetLengths, image_stamps: list) -> None:
    meta = {"summary": result.summary.to_dict(), "skipped": [s.to_dict() for s in result.skipped],
            "image_stamps": image_stamps}
    with atomic_open(cache_file, "wb") as f:
        np.savez(f, **{k: getattr(result, k) for k in _ARRAYS},
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _load_cache(cache_file: pathlib.Path, path: str) -> Optional[DatasetLengths]:
    with np.load(cache_file) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        for image, size, mtime in meta["image_stamps"]:
            try:
                st = os.stat(image)
            except OSError:
                return None
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return None
        summary = ReadSummary(**{k: v for k, v in meta["summary"].items()})
        summary.path = path
        return DatasetLengths(**{k: z[k] for k in _ARRAYS}, summary=summary,
                              skipped=[SkippedRecord(**s) for s in meta["skipped"]], from_cache=True)
