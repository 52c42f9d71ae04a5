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

from swift_plugins import data as data_mod
from swift_plugins import lengths as lengths_mod
from swift_plugins.data import ConversationOptions, ReadSummary, RecordError, SkippedRecord
from swift_plugins.lengths import DetectionAnswerCounter, LengthCounter

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
            record = data_mod.parse_record(raw, path=path, line=line_no)
            data_mod.validate_record(record, path=path, line=line_no, base_dir=base_dir,
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
            row = data_mod.to_swift_row(record, base_dir=base_dir, sample_key=line_no, **options)
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
        objects.append((obj["desc"], key, data_mod.emit_coords(obj[key], w, h, emit_norm)))
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
def file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _code_digest() -> str:
    h = hashlib.blake2b(digest_size=16)
    for mod in (data_mod, lengths_mod):
        h.update(pathlib.Path(mod.__file__).read_bytes())
    h.update(pathlib.Path(__file__).read_bytes())
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
        "code": _code_digest(),
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
    if on_error not in data_mod.ON_ERROR_CHOICES:
        raise ValueError(f"on_error: {on_error!r} is not one of {list(data_mod.ON_ERROR_CHOICES)}")
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
                _write_report(report_path, result.skipped)
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
        _write_report(report_path, skipped)
    if cache_file is not None:
        _save_cache(cache_file, result)
    return result


def skipped_record(error: RecordError, raw: bytes) -> SkippedRecord:
    """The skip-report entry of a bad record (raw line cut at RAW_REPORT_CHARS, cut marked)."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    limit = data_mod.RAW_REPORT_CHARS
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return SkippedRecord(error.path, error.line, error.field, error.kind, error.message, text)


def _write_report(path, skipped: list) -> None:
    data_mod.atomic_write_text(path, "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in skipped))


def _save_cache(cache_file: pathlib.Path, result: DatasetLengths) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"summary": result.summary.to_dict(), "skipped": [s.to_dict() for s in result.skipped]}
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, line=result.line, text_tokens=result.text_tokens, image_tokens=result.image_tokens,
                 num_objects=result.num_objects, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    os.replace(tmp, cache_file)


def _load_cache(cache_file: pathlib.Path, path: str) -> DatasetLengths:
    with np.load(cache_file) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        summary = ReadSummary(**{k: v for k, v in meta["summary"].items()})
        summary.path = path
        return DatasetLengths(line=z["line"], text_tokens=z["text_tokens"], image_tokens=z["image_tokens"],
                              num_objects=z["num_objects"], summary=summary,
                              skipped=[SkippedRecord(**s) for s in meta["skipped"]], from_cache=True)


def load_template(model_path, *, model_type: str = "qwen3_vl", template_type: str = "qwen3_vl",
                  max_pixels: Optional[int] = None):
    """An ms-swift template in train mode for ``model_path`` (a local folder; no hub access, no weights)."""
    from swift import get_model_processor, get_template

    _, processor = get_model_processor(os.fspath(model_path), model_type=model_type, load_model=False,
                                       download_model=False)
    template = get_template(processor, template_type=template_type, max_pixels=max_pixels)
    template.set_mode("train")
    return template


# Environment variables ms-swift reads into qwen-vl-utils (model/models/qwen.py) or the template:
# they change image token counts, so they are part of the counter's cache key.
RESIZE_ENV_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "IMAGE_FACTOR",
                   "SPATIAL_MERGE_SIZE", "MAX_RATIO")
_MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json",
                "chat_template.jinja", "chat_template.json")


def counter_cache_key(model_path, *, model_type: str, template_type: str, max_pixels: Optional[int],
                      user_texts: tuple) -> str:
    """Everything the template-derived counter state depends on, hashed without importing ms-swift."""
    import importlib.metadata as md

    h = hashlib.blake2b(digest_size=20)
    for name in _MODEL_FILES:
        p = os.path.join(os.fspath(model_path), name)
        h.update(name.encode() + (pathlib.Path(p).read_bytes() if os.path.exists(p) else b"<absent>"))
    parts = {"model_type": model_type, "template": template_type, "max_pixels": max_pixels,
             "user_texts": list(user_texts), "env": {k: os.environ.get(k) for k in RESIZE_ENV_VARS},
             "versions": [md.version(p) for p in ("ms-swift", "qwen-vl-utils", "transformers", "tokenizers")],
             "code": _code_digest(), "format": CACHE_FORMAT}
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def load_counter(model_path, *, model_type: str = "qwen3_vl", template_type: str = "qwen3_vl",
                 max_pixels: Optional[int] = None, user_texts: tuple = (), cache_dir=None,
                 clear_cache: bool = False) -> LengthCounter:
    """A LengthCounter calibrated for ``user_texts`` (one image each), from cache when possible.

    The cache entry (tokenizer, image rule, calibrated frames) is keyed by the model folder's
    tokenizer/processor/config files, template type, max_pixels, the resize environment variables
    and package versions, so a rerun skips importing ms-swift and loading the processor.
    """
    path = None
    if cache_dir is not None:
        key = counter_cache_key(model_path, model_type=model_type, template_type=template_type,
                                max_pixels=max_pixels, user_texts=tuple(user_texts))
        path = pathlib.Path(cache_dir) / f"counter-{key}.json"
        if clear_cache and path.exists():
            path.unlink()
        if path.exists():
            state = json.loads(path.read_text(encoding="utf-8"))
            return LengthCounter.from_state({
                "tokenizer_json": state["tokenizer_json"], "rule": lengths_mod.ImageTokenRule(**state["rule"]),
                "frames": {(t, n): v for t, n, v in state["frames"]}})
    template = load_template(model_path, model_type=model_type, template_type=template_type, max_pixels=max_pixels)
    counter = LengthCounter.from_template(template)
    state = counter.state((t, 1) for t in user_texts)
    if path is not None:
        data_mod.atomic_write_text(path, json.dumps({
            "tokenizer_json": state["tokenizer_json"], "rule": state["rule"].to_dict(),
            "frames": [[t, n, v] for (t, n), v in sorted(state["frames"].items())]}))
    return counter
