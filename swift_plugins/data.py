"""LVIS polygon-detection JSONL: the record schema, its one validator, record -> ms-swift row.

Framework-free (no swift / torch import): analysis, the converter, the sample generators and the
ms-swift dataset adapter (``swift_dataset.py``) all read records through :func:`iter_records` and
turn them into conversations with :func:`to_swift_row`, so they agree by construction.

Record (one JSON object per line; keys other than these are allowed and ignored)::

    {"images": ["images/000000000139.jpg"],        # exactly one path, relative to the JSONL's folder
     "width": 640, "height": 416,                  # stored image size in pixels (positive ints)
     "objects": [                                  # at least one
        {"desc": "dog", "poly": [212, 90, 260, 95, 240, 180]},   # x1, y1, x2, y2, ... >= 3 points
        {"desc": "frisbee", "bbox_2d": [300, 40, 352, 71]}]}    # x1, y1, x2, y2 with x1 <= x2, y1 <= y2

Coordinates are pixel positions in the stored image, inclusive range ``0 <= x <= width``,
``0 <= y <= height``; ints or finite floats. Degenerate boxes (x1 == x2) are accepted.

Errors: every problem is a :class:`RecordError` whose ``str`` is ``path:line: field: what is wrong
(fix)``, e.g.::

    data/train.jsonl:7: objects[2].poly: odd number of values (7); a polygon is x1, y1, x2, y2, ...
    (give every point both coordinates)

Lines are numbered from 1 as in an editor. A blank (whitespace-only) line is not a record: it is
counted in ``ReadSummary.blank_lines`` and never reported as skipped. The validator reports the
first problem of a record (cheap structural checks first, the image header on disk last).

Record -> conversation (worked example, ``object_ordering="sorted"``, ``emit_norm="none"``)::

    {"images": ["a.jpg"], "width": 100, "height": 50,
     "objects": [{"desc": "cat", "poly": [10, 20, 30, 20, 20, 40]},
                 {"desc": "box", "bbox_2d": [5, 5, 15, 10]}]}
    ->
    {"messages": [{"role": "user", "content": "<image>" + DEFAULT_PROMPT},
                  {"role": "assistant",
                   "content": '[{"desc":"box","bbox_2d":[5,5,15,10]},{"desc":"cat","poly":[10,20,30,20,20,40]}]'}],
     "images": ["/abs/dir/a.jpg"]}
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

__all__ = [
    "DEFAULT_PROMPT", "DEFAULT_PROMPT_NORM1000", "EMIT_NORMS", "MAX_ASPECT_RATIO", "OBJECT_ORDERINGS",
    "ON_ERROR_CHOICES", "ConversationOptions", "OptionNotImplementedError", "ReadSummary", "RecordError",
    "RecordStream", "SkippedRecord", "atomic_open", "atomic_write_bytes", "atomic_write_text", "dump_record", "emit_coords",
    "iter_records", "order_objects", "parse_record", "split_record", "to_swift_row", "validate_record",
]

MAX_ASPECT_RATIO = 200  # qwen-vl-utils / transformers smart_resize refuse max/min side > 200
OBJECT_ORDERINGS = ("sorted", "random", "none")
EMIT_NORMS = ("none", "norm1000")
ON_ERROR_CHOICES = ("raise", "skip")
RAW_REPORT_CHARS = 200  # a skipped record's raw line is kept in the report up to this many chars

DEFAULT_PROMPT = (
    'Detect every object in the image. Answer with a JSON list, one entry per object: '
    '{"desc": name, "poly": [x1, y1, x2, y2, ...]} for a polygon or '
    '{"desc": name, "bbox_2d": [x1, y1, x2, y2]} for a box, '
    'in integer pixel coordinates of the image.')
DEFAULT_PROMPT_NORM1000 = (
    'Detect every object in the image. Answer with a JSON list, one entry per object: '
    '{"desc": name, "poly": [x1, y1, x2, y2, ...]} for a polygon or '
    '{"desc": name, "bbox_2d": [x1, y1, x2, y2]} for a box, '
    'in integer coordinates from 0 to 999 relative to the image width and height.')


# --------------------------------------------------------------------------------------- errors
class RecordError(ValueError):
    """One bad record: ``str(e) == f"{path}:{line}: {field}: {message}"``.

    ``message`` is "what is wrong (fix)"; ``kind`` is a stable short code (``"bbox_inverted"``,
    ``"image_missing"``, ...) used to count skipped records by reason.
    """

    def __init__(self, path: str, line: int, field: str, message: str, kind: str):
        self.path, self.line, self.field, self.message, self.kind = str(path), line, field, message, kind
        super().__init__(f"{self.path}:{line}: {field}: {message}")

    def __reduce__(self):  # picklable across worker processes
        return (RecordError, (self.path, self.line, self.field, self.message, self.kind))


class OptionNotImplementedError(ValueError, NotImplementedError):
    """An option the config schema accepts but this code does not implement (never ignored)."""


class _Problem(Exception):
    """Internal: a record problem before the path/line are attached."""

    def __init__(self, kind: str, field: str, what: str, fix: str):
        super().__init__(kind, field, what, fix)
        self.kind, self.field, self.message = kind, field, f"{what} ({fix})"


# ----------------------------------------------------------------------------------- validation
def parse_record(text: str | bytes, *, path: str = "<record>", line: int = 0) -> dict:
    """Decode one JSONL line into a dict, or raise ``RecordError`` (kinds invalid_json, not_an_object)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        record = json.loads(text.rstrip("\r\n"))  # columns in errors refer to the line as written
    except UnicodeDecodeError as e:
        raise RecordError(path, line, "<json>", f"not valid UTF-8 ({e.reason} at byte {e.start}) "
                          "(save the file as UTF-8)", "invalid_json") from None
    except json.JSONDecodeError as e:
        raise RecordError(path, line, "<json>", f"invalid JSON: {e.msg} at column {e.colno} "
                          "(write exactly one JSON object per line)", "invalid_json") from None
    if not isinstance(record, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {_json_type(record)} "
                          "(write exactly one JSON object per line)", "not_an_object")
    return record


def validate_record(record: Any, *, path: str = "<record>", line: int = 0, base_dir: Optional[str] = None,
                    check_images: bool = True) -> dict:
    """Check one parsed record; return it unchanged or raise :class:`RecordError`.

    ``base_dir`` resolves relative image paths (default: the folder of ``path``). With
    ``check_images`` the image header is read with PIL (no pixel decoding) and its size must equal
    width/height; without it the disk is never touched (the synthetic set has no image files).
    """
    try:
        _validate(record, base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path)),
                  check_images)
    except _Problem as p:
        raise RecordError(path, line, p.field, p.message, p.kind) from None
    return record


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if isinstance(v, (str, int, float, bool, type(None))) else _json_type(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _validate(rec: Any, base_dir: str, check_images: bool) -> None:
    if not isinstance(rec, dict):
        raise _Problem("not_an_object", "<record>", f"expected a JSON object, got {_json_type(rec)}",
                       "write exactly one JSON object per line")
    # images
    if "images" not in rec:
        raise _Problem("missing_images", "images", "missing",
                       'add "images": ["path/to/image.jpg"], relative to the JSONL\'s folder')
    images = rec["images"]
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], str) and images[0]):
        raise _Problem("bad_images", "images", f"expected a list of exactly one image path, got {_show(images)}"
                       + (f" with {len(images)} entries" if isinstance(images, list) else ""),
                       'write "images": ["path/to/image.jpg"]')
    # width / height
    size = {}
    for key in ("width", "height"):
        if key not in rec:
            raise _Problem("missing_size", key, "missing", f"add the stored image's {key} in pixels as an integer")
        v = rec[key]
        if type(v) is not int or v <= 0:
            raise _Problem("bad_size", key, f"expected a positive integer, got {_show(v)}",
                           f"write the stored image's {key} in pixels as an integer")
        size[key] = v
    w, h = size["width"], size["height"]
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise _Problem("aspect_ratio", "width/height",
                       f"aspect ratio {max(w, h) / min(w, h):.1f} ({w}x{h}) exceeds {MAX_ASPECT_RATIO}",
                       "the Qwen-VL resize refuses it; crop or pad the image")
    # objects
    if "objects" not in rec or not isinstance(rec["objects"], list):
        got = "missing" if "objects" not in rec else f"expected a list, got {_show(rec['objects'])}"
        raise _Problem("missing_objects", "objects", got, 'add "objects": [{"desc": ..., "poly": [...]}, ...]')
    objects = rec["objects"]
    if not objects:
        raise _Problem("no_objects", "objects", "empty list", "a record needs at least one object; drop the record")
    for i, obj in enumerate(objects):
        _validate_object(obj, f"objects[{i}]", w, h)
    if check_images:
        _validate_image(images[0], base_dir, w, h)


def _validate_object(obj: Any, where: str, w: int, h: int) -> None:
    if not isinstance(obj, dict):
        raise _Problem("bad_object", where, f"expected an object, got {_show(obj)}",
                       'write {"desc": ..., "poly": [...]} or {"desc": ..., "bbox_2d": [...]}')
    desc = obj.get("desc")
    if not isinstance(desc, str) or not desc.strip():
        what = "missing" if "desc" not in obj else f"expected a non-empty string, got {_show(desc)}"
        raise _Problem("missing_desc", f"{where}.desc", what, "give the object's category name")
    has_poly, has_bbox = "poly" in obj, "bbox_2d" in obj
    if has_poly == has_bbox:
        what = 'has both "poly" and "bbox_2d"' if has_poly else 'has neither "poly" nor "bbox_2d"'
        raise _Problem("ambiguous_geometry" if has_poly else "missing_geometry", where, what,
                       "give exactly one geometry per object")
    if has_poly:
        field_, v = f"{where}.poly", obj["poly"]
        if not isinstance(v, list):
            raise _Problem("poly_non_numeric", field_, f"expected a list of numbers, got {_show(v)}",
                           "write the polygon as [x1, y1, x2, y2, ...]")
        _check_numbers(v, field_, "poly_non_numeric")
        if len(v) % 2:
            raise _Problem("poly_odd_length", field_,
                           f"odd number of values ({len(v)}); a polygon is x1, y1, x2, y2, ...",
                           "give every point both coordinates")
        if len(v) < 6:
            raise _Problem("poly_too_few_points", field_, f"{len(v) // 2} point(s); a polygon needs at least 3",
                           "drop the object or give it a bbox_2d")
    else:
        field_, v = f"{where}.bbox_2d", obj["bbox_2d"]
        if not isinstance(v, list) or len(v) != 4:
            got = f"{len(v)} values" if isinstance(v, list) else _show(v)
            raise _Problem("bbox_arity", field_, f"expected 4 values [x1, y1, x2, y2], got {got}",
                           "write the box as [x1, y1, x2, y2] in pixels (convert [x, y, w, h] first)")
        _check_numbers(v, field_, "bbox_non_numeric")
        if v[2] < v[0] or v[3] < v[1]:
            raise _Problem("bbox_inverted", field_, f"x2 < x1 or y2 < y1 in {json.dumps(v)}",
                           "write the box as [x1, y1, x2, y2] with the top-left corner first")
    _check_range(v, field_, w, h)


_NUMBER_TYPES = frozenset((int, float))


def _check_numbers(values: list, field_: str, kind: str) -> None:
    types = set(map(type, values))  # C-speed fast path; bool is excluded (type(True) is bool)
    if types <= _NUMBER_TYPES and (float not in types or all(map(math.isfinite, values))):
        return
    for i, v in enumerate(values):
        if type(v) not in _NUMBER_TYPES or not math.isfinite(v):
            raise _Problem(kind, field_, f"value {i} is {_show(v)}, not a finite number",
                           "write coordinates as plain JSON numbers")


def _check_range(values: list, field_: str, w: int, h: int) -> None:
    xs, ys = values[0::2], values[1::2]
    if min(xs) >= 0 and max(xs) <= w and min(ys) >= 0 and max(ys) <= h:
        return
    for i, v in enumerate(values):
        axis, limit = ("x", w) if i % 2 == 0 else ("y", h)
        if not 0 <= v <= limit:
            raise _Problem("coord_out_of_range", field_, f"{axis} = {_show(v)} (value {i}) is outside "
                           f"the image [0, {limit}]", "clamp coordinates to the image or fix width/height")


def _validate_image(image: str, base_dir: str, w: int, h: int) -> None:
    full = image if os.path.isabs(image) else os.path.join(base_dir, image)
    if not os.path.isfile(full):
        raise _Problem("image_missing", "images[0]", f"file not found: {full}",
                       "fix the path; relative paths resolve against the JSONL's folder")
    from PIL import Image  # header only: Image.open is lazy, .size needs no pixel decoding
    try:
        with Image.open(full) as im:
            iw, ih = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise _Problem("image_unreadable", "images[0]", f"cannot read the image header of {full}: "
                       f"{type(e).__name__}: {e}", "re-encode the image as JPEG or PNG") from None
    if (iw, ih) != (w, h):
        raise _Problem("image_size_mismatch", "images[0]", f"the image is {iw}x{ih} but the record says "
                       f"width={w}, height={h}", "set width/height to the stored image's size")


# ------------------------------------------------------------------------------------- reading
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
                 base_dir: Optional[str] = None):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error: {on_error!r} is not one of {ON_ERROR_CHOICES} (use 'raise' or 'skip')")
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
                                    check_images=self.check_images)
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

    def reject(self, error: RecordError, raw: bytes | str) -> None:
        """Move a record this stream yielded as valid to the skipped list.

        For checks made after validation by the consumer (e.g. ``split_record``'s object_too_long),
        so that ``read == valid + skipped`` stays true and the record is in the report.
        """
        self.summary.valid -= 1
        self._skip(error, raw)

    def write_report(self, path) -> None:
        """Write the skip report (JSONL of :class:`SkippedRecord`) atomically to ``path``."""
        atomic_write_text(path, "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in self.skipped))

    def _skip(self, error: RecordError, raw: bytes | str) -> None:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        text = text.rstrip("\r\n")
        if len(text) > RAW_REPORT_CHARS:
            text = text[:RAW_REPORT_CHARS] + f"...(+{len(text) - RAW_REPORT_CHARS} chars)"
        self.skipped.append(SkippedRecord(error.path, error.line, error.field, error.kind, error.message, text))
        self.summary.skipped += 1
        kinds = Counter(self.summary.skipped_by_kind)
        kinds[error.kind] += 1
        self.summary.skipped_by_kind = dict(sorted(kinds.items()))


def iter_records(path, *, on_error: str = "raise", report_path=None, check_images: bool = True,
                 base_dir: Optional[str] = None) -> RecordStream:
    """Read and validate a JSONL file: an iterator of ``(line_no, record)`` for valid records.

    - ``on_error="raise"``: the first bad record raises :class:`RecordError` (``path:line: field: ...``).
    - ``on_error="skip"``: bad records are left out and listed in ``stream.skipped``; with
      ``report_path`` the skip report (JSONL, one ``SkippedRecord`` per line: path, line, field,
      kind, reason, raw line truncated to 200 chars) is written atomically when the file has been
      read to the end - also when nothing was skipped, so its presence proves a complete pass.
      A consumer that writes the report itself (after its own ``stream.reject(...)`` calls)
      passes no ``report_path`` and calls ``stream.write_report(path)``.
    - ``stream.summary``: read / valid / skipped / skipped_by_kind / blank_lines, so callers can log
      ``samples in = valid + skipped``. Blank lines are not records: counted, never reported.

    Usage::

        stream = iter_records("train.jsonl", on_error="skip")
        rows = [to_swift_row(r, base_dir=stream.base_dir, sample_key=n) for n, r in stream]
        print(stream.summary.log_line())
    """
    return RecordStream(path, on_error=on_error, report_path=report_path, check_images=check_images,
                        base_dir=base_dir)


def dump_record(record: dict) -> str:
    """One JSONL line (with the newline) as every writer in this project emits it: compact, UTF-8."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", **kwargs):
    """Open a temporary file next to ``path``; on success ``os.replace`` it onto ``path``
    (readers never see a partial file), on error remove it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------- record -> conversation
@dataclass(frozen=True)
class ConversationOptions:
    """How a record becomes a conversation; field metadata carries help and choices for the config schema.

    Constructing validates types and choices (all problems in one ValueError). ``coord_tokens`` /
    ``coord_offset`` are accepted here (the seed configs carry them) but :meth:`check_implemented`
    and :func:`to_swift_row` refuse ``True`` with :class:`OptionNotImplementedError`.
    """
    prompt: Optional[str] = field(default=None, metadata={
        "help": "User prompt after the <image> tag. null: DEFAULT_PROMPT for emit_norm none, "
                "DEFAULT_PROMPT_NORM1000 for norm1000."})
    object_ordering: str = field(default="sorted", metadata={
        "choices": OBJECT_ORDERINGS,
        "help": "Order of objects in the answer. sorted: by top-left point (min y, then min x, then desc); "
                "random: shuffled by random.Random(f'{seed}:{sample_key}'), same in every process; "
                "none: as stored."})
    emit_norm: str = field(default="none", metadata={
        "choices": EMIT_NORMS,
        "help": "Coordinates in the answer. none: integer pixels (half up); "
                "norm1000: min(999, floor(v * 1000 / size)), size = width for x, height for y."})
    seed: int = field(default=0, metadata={"help": "Seed of object_ordering random."})
    coord_tokens: bool = field(default=False, metadata={
        "help": "Coordinates as special tokens. Accepted by the schema, NOT implemented: must be false."})
    coord_offset: bool = field(default=False, metadata={
        "help": "Coordinate-offset adapter. Accepted by the schema, NOT implemented: must be false."})

    def __post_init__(self):
        problems = []
        if self.prompt is not None and not isinstance(self.prompt, str):
            problems.append(f"prompt: expected a string or null, got {_show(self.prompt)}")
        if self.object_ordering not in OBJECT_ORDERINGS:
            problems.append(f"object_ordering: {self.object_ordering!r} is not one of {list(OBJECT_ORDERINGS)}")
        if self.emit_norm not in EMIT_NORMS:
            problems.append(f"emit_norm: {self.emit_norm!r} is not one of {list(EMIT_NORMS)}")
        if type(self.seed) is not int:
            problems.append(f"seed: expected an integer, got {self.seed!r}")
        for key in ("coord_tokens", "coord_offset"):
            if type(getattr(self, key)) is not bool:
                problems.append(f"{key}: expected true or false, got {getattr(self, key)!r}")
        if problems:
            raise ValueError("invalid conversation options: " + "; ".join(problems))

    @property
    def resolved_prompt(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return DEFAULT_PROMPT_NORM1000 if self.emit_norm == "norm1000" else DEFAULT_PROMPT

    def check_implemented(self) -> "ConversationOptions":
        for key in ("coord_tokens", "coord_offset"):
            if getattr(self, key):
                raise OptionNotImplementedError(
                    f"{key}: true is accepted by the config schema but not implemented "
                    f"(set {key} to false; coordinates are emitted as numeric text)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def order_objects(objects: list, object_ordering: str = "sorted", *, seed: int = 0, sample_key: Any = 0) -> list:
    """Objects in conversation order (a new list; the objects themselves are not copied).

    sorted: key (min y, min x, desc) of each object's points, stable for full ties.
    random: ``random.Random(f"{seed}:{sample_key}").shuffle`` - string seeds hash with SHA-512, so the
    order is the same in every process and Python run.
    """
    if object_ordering == "sorted":
        return sorted(objects, key=_top_left_key)
    if object_ordering == "random":
        out = list(objects)
        random.Random(f"{seed}:{sample_key}").shuffle(out)
        return out
    if object_ordering == "none":
        return list(objects)
    raise ValueError(f"object_ordering: {object_ordering!r} is not one of {list(OBJECT_ORDERINGS)}")


def _top_left_key(obj: dict):
    v = obj["poly"] if "poly" in obj else obj["bbox_2d"]
    return (min(v[1::2]), min(v[0::2]), obj["desc"])


def _round_half_up(v) -> int:
    if type(v) is int:
        return v
    f = math.floor(v)
    return f + 1 if v - f >= 0.5 else f  # v - floor(v) is exact in float arithmetic


def _norm1000(v, size: int) -> int:
    if type(v) is int:
        return min(999, v * 1000 // size)  # exact integer arithmetic
    return min(999, math.floor(v * 1000 / size))  # IEEE float64, evaluated as written


def emit_coords(values: list, width: int, height: int, emit_norm: str = "none") -> list[int]:
    """Coordinates as the answer shows them (x at even, y at odd positions).

    none: pixels rounded half up (ints unchanged): ``[10.5, 3.49] -> [11, 3]``.
    norm1000: ``min(999, floor(v * 1000 / size))`` with size = width for x, height for y; exact
    for ints, IEEE float64 ``v * 1000 / size`` for floats (so 0.29 of 1 px -> 290);
    ``[0, 50, 100, 25]`` in a 100x50 image -> ``[0, 999, 999, 500]``.
    """
    if emit_norm == "none":
        return [_round_half_up(v) for v in values]
    if emit_norm == "norm1000":
        return [_norm1000(v, width if i % 2 == 0 else height) for i, v in enumerate(values)]
    raise ValueError(f"emit_norm: {emit_norm!r} is not one of {list(EMIT_NORMS)}")


def to_swift_row(record: dict, *, base_dir, sample_key: Any = 0, prompt: Optional[str] = None,
                 object_ordering: str = "sorted", emit_norm: str = "none", seed: int = 0,
                 coord_tokens: bool = False, coord_offset: bool = False) -> dict:
    """A validated record -> the ms-swift row ``{"messages": [...], "images": [abs path]}``.

    The keyword options are exactly the fields of :class:`ConversationOptions`
    (``to_swift_row(r, base_dir=d, **opts.to_dict())``). ``sample_key`` (e.g. the line number)
    seeds ``object_ordering="random"`` together with ``seed``. The user turn is
    ``"<image>" + prompt`` (ms-swift replaces the tag with the image's vision tokens); the
    assistant turn is compact JSON (separators ``,`` ``:``, non-ASCII kept) of
    ``{"desc": ..., "poly": [...]}`` / ``{"desc": ..., "bbox_2d": [...]}`` with integer coordinates.
    """
    opts = ConversationOptions(prompt=prompt, object_ordering=object_ordering, emit_norm=emit_norm, seed=seed,
                               coord_tokens=coord_tokens, coord_offset=coord_offset).check_implemented()
    w, h = record["width"], record["height"]
    answer = []
    for obj in order_objects(record["objects"], opts.object_ordering, seed=opts.seed, sample_key=sample_key):
        key = "poly" if "poly" in obj else "bbox_2d"
        answer.append({"desc": obj["desc"], key: emit_coords(obj[key], w, h, opts.emit_norm)})
    image = record["images"][0]
    if not os.path.isabs(image):
        image = os.path.normpath(os.path.join(os.path.abspath(os.fspath(base_dir)), image))
    return {
        "messages": [
            {"role": "user", "content": "<image>" + opts.resolved_prompt},
            {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"), ensure_ascii=False)},
        ],
        "images": [image],
    }


# --------------------------------------------------------------------------------- dense scenes
def split_record(record: dict, *, max_length: int, length_of: Callable[[dict], int],
                 object_ordering: str = "sorted", seed: int = 0, sample_key: Any = 0,
                 path: str = "<record>", line: int = 0) -> list[dict]:
    """Split a record too long for ``max_length`` into records of the same image.

    Objects are first put in conversation order (``order_objects``); each piece holds a
    consecutive run of them, greedily as many as fit: ``length_of(piece) <= max_length``. The
    returned records (also the single one when nothing is split) carry their objects in
    conversation order, so convert them with ``object_ordering="none"``; ``length_of`` must measure
    them that way too. Lengths must grow with the number of objects (they do: every object adds
    answer text). Calls to ``length_of``: 1 when the record fits, else O(pieces * log(objects))
    (galloping + binary search for each piece's end).

    An object that does not fit even alone raises ``RecordError`` (kind ``object_too_long``, field
    ``objects[i]`` with ``i`` its index as stored) naming ``path``/``line``: the caller's skip
    policy decides, nothing is cut silently.

    Example (length = 10 + 10 per object, max_length 45, ordering none)::

        5 objects -> pieces of objects [0, 1, 2], [3, 4]
    """
    objects = order_objects(record["objects"], object_ordering, seed=seed, sample_key=sample_key)

    def piece(lo: int, hi: int) -> dict:
        return {**record, "objects": objects[lo:hi]}

    whole = piece(0, len(objects))
    if length_of(whole) <= max_length:
        return [whole]
    stored_index = {id(o): i for i, o in enumerate(record["objects"])}
    pieces, start, n = [], 0, len(objects)
    while start < n:
        length = length_of(piece(start, start + 1))
        if length > max_length:
            obj = objects[start]
            raise RecordError(path, line, f"objects[{stored_index[id(obj)]}]",
                              f"object {_show(obj['desc'])} alone makes a {length}-token sample, over "
                              f"max_length {max_length} (raise max_length or simplify/drop the object)",
                              "object_too_long")
        # Invariant: `good` objects from `start` fit, `bad` do not. n - start + 1 is a sentinel
        # ("no failure seen"); for the first piece the whole record is known not to fit.
        good, step, bad = 1, 1, (n if start == 0 else n - start + 1)
        while True:  # galloping: 2, 3, 5, 9, ... objects
            probe = min(good + step, bad - 1)
            if probe <= good:
                break
            if length_of(piece(start, start + probe)) <= max_length:
                good, step = probe, step * 2
            else:
                bad = probe
                break
        while bad - good > 1:  # binary search between the last fit and the first failure
            mid = (good + bad) // 2
            if length_of(piece(start, start + mid)) <= max_length:
                good = mid
            else:
                bad = mid
        pieces.append(piece(start, start + good))
        start += good
    return pieces
