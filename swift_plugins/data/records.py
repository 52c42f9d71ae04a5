"""Records: the two record kinds, the one validator (``path:line: field: what (fix)``) and kind detection.

Pure Python (PIL reads image headers, nothing else): analysis, the converter, the sample
generators and training all read records through :func:`swift_plugins.data.iter_records`, so one
set of rules decides what a valid record is. Two kinds of record, chosen per file by
``record_format`` (:data:`RECORD_FORMATS`)::

    auto       each record by its keys: "messages" -> messages; else "width" / "height" / "objects" -> lvis
    lvis       the LVIS detection record below (a record with only "messages" is refused)
    messages   ms-swift's own messages format (rules in :mod:`swift_plugins.data.messages`)

    record_kind({"messages": [...], "images": ["a.jpg"]})                      -> "messages"
    record_kind({"images": ["a.jpg"], "width": 4, "height": 4, "objects": []}) -> "lvis"
    record_kind({"conversations": [...]})  -> RecordError unknown_format (names both key sets)

LVIS record (one JSON object per line; keys other than these are allowed and ignored)::

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
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from swift_plugins.data.image_size import MAX_ASPECT_RATIO
from swift_plugins.data.messages import check_messages_record
from swift_plugins.data.problems import (OptionNotImplementedError, Problem, RecordError, image_header_size, json_type,
                                         show_value)

__all__ = ["LVIS_KEYS", "MESSAGES_KEYS", "ON_ERROR_CHOICES", "OptionNotImplementedError", "RECORD_FORMATS",
           "RecordError", "parse_record", "record_kind", "show_value", "validate_record"]

ON_ERROR_CHOICES = ("raise", "skip")
RECORD_FORMATS = ("auto", "lvis", "messages")
LVIS_KEYS = ("images", "width", "height", "objects")
MESSAGES_KEYS = ("messages", "images")
# Keys only an LVIS record has: they (and "messages" for the other kind) decide the kind under "auto".
_LVIS_ONLY_KEYS = ("width", "height", "objects")


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
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {json_type(record)} "
                          "(write exactly one JSON object per line)", "not_an_object")
    return record


def validate_record(record: Any, *, path: str = "<record>", line: int = 0, base_dir: Optional[str] = None,
                    check_images: bool = True, record_format: str = "lvis",
                    check_image_data: Optional[bool] = None) -> dict:
    """Check one parsed record; return it unchanged or raise :class:`RecordError`.

    The kind comes from :func:`record_kind` (``record_format`` defaults to ``"lvis"``, as before
    messages records existed). ``base_dir`` resolves relative image paths (default: the folder of
    ``path``). With ``check_images`` every image is read with PIL, its header and its pixel data
    once (a corrupt file is ``image_undecodable``; ``check_image_data=False``: headers only, the
    default follows ``check_images``): an LVIS image's size must equal width/height, a messages
    image must be readable; without it the disk is never touched (the synthetic set has no image
    files).
    """
    kind = record_kind(record, record_format, path=path, line=line)
    decode = check_images if check_image_data is None else check_images and check_image_data
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    try:
        if kind == "lvis":
            _validate(record, base, check_images, decode)
        else:
            check_messages_record(record, base, read_images=check_images, decode=decode)
    except Problem as p:
        raise RecordError(path, line, p.field, p.message, p.kind) from None
    return record


def record_kind(record: Any, record_format: str = "auto", *, path: str = "<record>", line: int = 0) -> str:
    """``"lvis"`` or ``"messages"``: the kind of a parsed record under ``record_format``.

    auto: a record with "messages" is a messages record (an ms-swift grounding "objects" key is
    then reported as unsupported), else one with "width" / "height" / "objects" an LVIS record;
    one with "messages" and all three LVIS keys is refused as ``ambiguous_format``, one with
    neither as ``unknown_format``. A forced format refuses a record that is plainly the other kind
    (``unknown_format``); anything else goes on to that kind's validator, so an LVIS record's
    problems read exactly as they always did.

    >>> record_kind({"messages": [], "images": []}), record_kind({"width": 1}, "lvis")
    ('messages', 'lvis')
    """
    if record_format not in RECORD_FORMATS:
        raise ValueError(f"record_format: {record_format!r} is not one of {list(RECORD_FORMATS)}")
    if not isinstance(record, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {json_type(record)} "
                          "(write exactly one JSON object per line)", "not_an_object")
    has_messages = "messages" in record
    lvis_keys = [k for k in _LVIS_ONLY_KEYS if k in record]
    if record_format == "auto":
        if has_messages and len(lvis_keys) == len(_LVIS_ONLY_KEYS):
            raise RecordError(path, line, "<record>", f'has both "messages" and the LVIS keys {_keys(lvis_keys)} '
                              "(keep one format per record, or set record_format to lvis or messages)",
                              "ambiguous_format")
        if has_messages or lvis_keys:
            return "messages" if has_messages else "lvis"
        both, got = _key_sets(record)
        raise RecordError(path, line, "<record>", f"fits neither record format: {both}; {got} "
                          "(write one of the two formats, see public_data/README.md)", "unknown_format")
    if record_format == "messages" and not has_messages:
        both, got = _key_sets(record)
        raise RecordError(path, line, "<record>", f'record_format is messages but the record has no "messages"; '
                          f"{both}; {got} (write the conversation as \"messages\", or set record_format to lvis "
                          "or auto)", "unknown_format")
    if record_format == "lvis" and has_messages and not lvis_keys:
        both, got = _key_sets(record)
        raise RecordError(path, line, "<record>", f"record_format is lvis but this is a messages record; {both}; "
                          f"{got} (set record_format to messages or auto)", "unknown_format")
    return record_format


def _key_sets(record: dict) -> tuple[str, str]:
    """Both formats' keys and the record's, for the messages of an unfitting record."""
    return (f"a messages record has {_keys(MESSAGES_KEYS)}; an LVIS record has {_keys(LVIS_KEYS)}",
            f"got keys {_keys(record) or 'none'}")


def _keys(keys) -> str:
    """``["a", "b"]`` -> ``'"a", "b"'`` (at most 6 keys shown)."""
    keys = list(keys)
    shown = ", ".join(json.dumps(k, ensure_ascii=False) for k in keys[:6])
    return shown + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")


def _validate(rec: Any, base_dir: str, check_images: bool, decode: bool = False) -> None:
    if not isinstance(rec, dict):
        raise Problem("not_an_object", "<record>", f"expected a JSON object, got {json_type(rec)}",
                       "write exactly one JSON object per line")
    # images
    if "images" not in rec:
        raise Problem("missing_images", "images", "missing",
                       'add "images": ["path/to/image.jpg"], relative to the JSONL\'s folder')
    images = rec["images"]
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], str) and images[0]):
        raise Problem("bad_images", "images", f"expected a list of exactly one image path, got {show_value(images)}"
                       + (f" with {len(images)} entries" if isinstance(images, list) else ""),
                       'write "images": ["path/to/image.jpg"]')
    # width / height
    size = {}
    for key in ("width", "height"):
        if key not in rec:
            raise Problem("missing_size", key, "missing", f"add the stored image's {key} in pixels as an integer")
        v = rec[key]
        if type(v) is not int or v <= 0:
            raise Problem("bad_size", key, f"expected a positive integer, got {show_value(v)}",
                           f"write the stored image's {key} in pixels as an integer")
        size[key] = v
    w, h = size["width"], size["height"]
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise Problem("aspect_ratio", "width/height",
                       f"aspect ratio {max(w, h) / min(w, h):.1f} ({w}x{h}) exceeds {MAX_ASPECT_RATIO}",
                       "the Qwen-VL resize refuses it; crop or pad the image")
    # objects
    if "objects" not in rec or not isinstance(rec["objects"], list):
        got = "missing" if "objects" not in rec else f"expected a list, got {show_value(rec['objects'])}"
        raise Problem("missing_objects", "objects", got, 'add "objects": [{"desc": ..., "poly": [...]}, ...]')
    objects = rec["objects"]
    if not objects:
        raise Problem("no_objects", "objects", "empty list", "a record needs at least one object; drop the record")
    for i, obj in enumerate(objects):
        _validate_object(obj, f"objects[{i}]", w, h)
    if check_images:
        _validate_image(images[0], base_dir, w, h, decode)


def _validate_object(obj: Any, where: str, w: int, h: int) -> None:
    if not isinstance(obj, dict):
        raise Problem("bad_object", where, f"expected an object, got {show_value(obj)}",
                       'write {"desc": ..., "poly": [...]} or {"desc": ..., "bbox_2d": [...]}')
    desc = obj.get("desc")
    if not isinstance(desc, str) or not desc.strip():
        what = "missing" if "desc" not in obj else f"expected a non-empty string, got {show_value(desc)}"
        raise Problem("missing_desc", f"{where}.desc", what, "give the object's category name")
    has_poly, has_bbox = "poly" in obj, "bbox_2d" in obj
    if has_poly == has_bbox:
        what = 'has both "poly" and "bbox_2d"' if has_poly else 'has neither "poly" nor "bbox_2d"'
        raise Problem("ambiguous_geometry" if has_poly else "missing_geometry", where, what,
                       "give exactly one geometry per object")
    if has_poly:
        field_, v = f"{where}.poly", obj["poly"]
        if not isinstance(v, list):
            raise Problem("poly_non_numeric", field_, f"expected a list of numbers, got {show_value(v)}",
                           "write the polygon as [x1, y1, x2, y2, ...]")
        _check_numbers(v, field_, "poly_non_numeric")
        if len(v) % 2:
            raise Problem("poly_odd_length", field_,
                           f"odd number of values ({len(v)}); a polygon is x1, y1, x2, y2, ...",
                           "give every point both coordinates")
        if len(v) < 6:
            raise Problem("poly_too_few_points", field_, f"{len(v) // 2} point(s); a polygon needs at least 3",
                           "drop the object or give it a bbox_2d")
    else:
        field_, v = f"{where}.bbox_2d", obj["bbox_2d"]
        if not isinstance(v, list) or len(v) != 4:
            got = f"{len(v)} values" if isinstance(v, list) else show_value(v)
            raise Problem("bbox_arity", field_, f"expected 4 values [x1, y1, x2, y2], got {got}",
                           "write the box as [x1, y1, x2, y2] in pixels (convert [x, y, w, h] first)")
        _check_numbers(v, field_, "bbox_non_numeric")
        if v[2] < v[0] or v[3] < v[1]:
            raise Problem("bbox_inverted", field_, f"x2 < x1 or y2 < y1 in {json.dumps(v)}",
                           "write the box as [x1, y1, x2, y2] with the top-left corner first")
    _check_range(v, field_, w, h)


_NUMBER_TYPES = frozenset((int, float))


def _check_numbers(values: list, field_: str, kind: str) -> None:
    types = set(map(type, values))  # C-speed fast path; bool is excluded (type(True) is bool)
    if types <= _NUMBER_TYPES and (float not in types or all(map(math.isfinite, values))):
        return
    for i, v in enumerate(values):
        if type(v) not in _NUMBER_TYPES or not math.isfinite(v):
            raise Problem(kind, field_, f"value {i} is {show_value(v)}, not a finite number",
                           "write coordinates as plain JSON numbers")


def _check_range(values: list, field_: str, w: int, h: int) -> None:
    xs, ys = values[0::2], values[1::2]
    if min(xs) >= 0 and max(xs) <= w and min(ys) >= 0 and max(ys) <= h:
        return
    for i, v in enumerate(values):
        axis, limit = ("x", w) if i % 2 == 0 else ("y", h)
        if not 0 <= v <= limit:
            raise Problem("coord_out_of_range", field_, f"{axis} = {show_value(v)} (value {i}) is outside "
                           f"the image [0, {limit}]", "clamp coordinates to the image or fix width/height")


def _validate_image(image: str, base_dir: str, w: int, h: int, decode: bool) -> None:
    iw, ih = image_header_size(image, base_dir, "images[0]", decode=decode)
    if (iw, ih) != (w, h):
        raise Problem("image_size_mismatch", "images[0]", f"the image is {iw}x{ih} but the record says "
                       f"width={w}, height={h}", "set width/height to the stored image's size")
