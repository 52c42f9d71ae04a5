"""Record -> conversation: the ms-swift row a record trains as (:func:`swift_row` for either kind).

A messages record is already a conversation (``messages.messages_to_swift_row``: paths made
absolute); a detection record becomes one through :func:`to_swift_row`.

Worked example (``object_ordering="sorted"``, ``emit_norm="none"``)::

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

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from swift_plugins.data.messages import messages_to_swift_row
from swift_plugins.data.records import OptionNotImplementedError, show_value

__all__ = ["DEFAULT_PROMPT", "DEFAULT_PROMPT_NORM1000", "EMIT_NORMS", "OBJECT_ORDERINGS", "ConversationOptions",
           "emit_coords", "order_objects", "swift_row", "to_swift_row"]

OBJECT_ORDERINGS = ("sorted", "random", "none")
EMIT_NORMS = ("none", "norm1000")

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
            problems.append(f"prompt: expected a string or null, got {show_value(self.prompt)}")
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



def swift_row(record: dict, kind: str, *, base_dir, sample_key: Any = 0, **conversation_options) -> dict:
    """The ms-swift row of a validated record of ``kind`` (``records.record_kind``).

    lvis: :func:`to_swift_row` with the conversation options (fields of :class:`ConversationOptions`);
    messages: ``messages_to_swift_row`` - the record is the conversation, the options do not apply.

    >>> swift_row({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    ...           "messages", base_dir="/d", emit_norm="norm1000")["messages"][1]
    {'role': 'assistant', 'content': 'Yo'}
    """
    if kind == "lvis":
        return to_swift_row(record, base_dir=base_dir, sample_key=sample_key, **conversation_options)
    if kind == "messages":
        return messages_to_swift_row(record, base_dir=base_dir)
    raise ValueError(f"kind: {kind!r} is not one of ['lvis', 'messages']")
