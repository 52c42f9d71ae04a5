"""Record problems: the error every reader raises and the pieces validators share.

``RecordError`` is ``path:line: field: what is wrong (fix)`` with a stable ``kind`` code; a
validator raises :class:`Problem` (no place yet) and the caller attaches path and line::

    raise Problem("bbox_inverted", "objects[2].bbox_2d", "x2 < x1 or y2 < y1 in [5, 5, 1, 9]",
                  "write the box as [x1, y1, x2, y2] with the top-left corner first")
    -> data/train.jsonl:7: objects[2].bbox_2d: x2 < x1 or y2 < y1 in [5, 5, 1, 9] (write the box ...)
"""
from __future__ import annotations

import json
import os
from typing import Any

from swift_plugins.errors import UserError

__all__ = ["OptionNotImplementedError", "Problem", "RecordError", "image_header_size", "json_type", "show_value"]


class RecordError(UserError):
    """One bad record: ``str(e) == f"{path}:{line}: {field}: {message}"``.

    ``message`` is "what is wrong (fix)"; ``kind`` is a stable short code (``"bbox_inverted"``,
    ``"image_missing"``, ...) used to count skipped records by reason.
    """

    def __init__(self, path: str, line: int, field: str, message: str, kind: str):
        self.path, self.line, self.field, self.message, self.kind = str(path), line, field, message, kind
        super().__init__(f"{self.path}:{line}: {field}: {message}")

    def __reduce__(self):  # picklable across worker processes
        return (RecordError, (self.path, self.line, self.field, self.message, self.kind))


class OptionNotImplementedError(UserError, NotImplementedError):
    """An option the config schema accepts but this code does not implement (never ignored)."""


class Problem(Exception):
    """A record problem before the path and line are attached (a validator raises it)."""

    def __init__(self, kind: str, field: str, what: str, fix: str):
        super().__init__(kind, field, what, fix)
        self.kind, self.field, self.message = kind, field, f"{what} ({fix})"


def json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def show_value(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if isinstance(v, (str, int, float, bool, type(None))) else json_type(v)
    return s if len(s) <= 40 else s[:37] + "..."


def image_header_size(image: str, base_dir: str, field_: str, *, decode: bool = False) -> tuple[int, int]:
    """(width, height) from the image file's header (PIL); kinds image_missing / image_unreadable.

    ``decode``: also decode the pixel data once (JPEG grey at 1/8 scale through ``draft``, which
    still reads every entropy-coded byte), so a file whose header is fine and whose data is corrupt is
    a bad record here (kind ``image_undecodable``), not an ``OSError`` naming no record in training.
    """
    full = image if os.path.isabs(image) else os.path.join(base_dir, image)
    if not os.path.isfile(full):
        raise Problem("image_missing", field_, f"file not found: {full}",
                       "fix the path; relative paths resolve against the JSONL's folder")
    from PIL import Image  # header only: Image.open is lazy, .size needs no pixel decoding
    try:
        im = Image.open(full)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise Problem("image_unreadable", field_, f"cannot read the image header of {full}: "
                       f"{type(e).__name__}: {e}", "re-encode the image as JPEG or PNG") from None
    with im:
        size = im.size  # before decoding: draft() shrinks it
        if decode:
            try:
                _decode(im)
            except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, ... from the decoders
                raise Problem("image_undecodable", field_, f"the pixel data of {full} cannot be decoded: "
                               f"{type(e).__name__}: {e}", "re-encode or replace the image, or drop the record"
                               ) from None
        return size


def _decode(im) -> None:
    if im.format == "JPEG":  # grey at 1/8 scale: every entropy-coded byte read, a third of the work
        im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()
