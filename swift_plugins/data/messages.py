"""Messages records: ms-swift's own conversation format, its validation rules and its ms-swift row.

A messages record is what ``swift sft --dataset train.jsonl`` reads from a JSONL line::

    {"messages": [{"role": "system", "content": "You are a careful annotator."},     # optional, first only
                  {"role": "user", "content": "<image>What is on the table?"},
                  {"role": "assistant", "content": "A red cup."},
                  {"role": "user", "content": "And here? <image>"},
                  {"role": "assistant", "content": "[{\\"bbox_2d\\": [12, 40, 96, 130]}]"}],
     "images": ["images/a.jpg", "/data/b.png"]}     # relative to the JSONL's folder, or absolute

Rules (each broken rule is one ``path:line: field: what is wrong (fix)`` with a stable kind):

- ``messages``: an optional leading system message, then user / assistant turns alternating,
  starting with user and ending with assistant (``bad_messages``, ``bad_message``,
  ``unknown_role``, ``role_order``); every ``content`` a string (``unsupported_content``); no
  empty or whitespace-only assistant turn (``empty_response``).
- ``<image>`` tags only in user turns (``image_tag_position``), as many as ``images``
  (``image_count``), matched to the images in order. ``images`` may be absent for a text-only
  conversation; every entry a local path (``bad_images``) whose header PIL can read
  (``image_missing``, ``image_unreadable``) with an aspect ratio ms-swift's resize accepts
  (``aspect_ratio``).
- Not supported yet, and named as such instead of being dropped: ``videos`` / ``audios`` /
  ``tools`` / ``objects`` / a top-level ``system`` / the singular ``image`` / ``video`` /
  ``audio`` columns ms-swift's loader also reads, per-message ``loss`` / ``loss_scale`` /
  ``tool_calls``, remote or inline images (``unsupported_field``); tool roles
  (``unsupported_role``); ``<video>`` / ``<audio>`` tags and ``<img>...</img>`` in a record
  without images (``unsupported_tag``); Qwen's chat / vision control tokens and ms-swift's round
  placeholders written as text (``reserved_text``), which ms-swift would not encode as text.

Other keys of the record and of a message are allowed and ignored. Relative image paths resolve
against the JSONL's folder (ms-swift itself would try the working directory or ``ROOT_IMAGE_DIR``).
The row :func:`messages_to_swift_row` gives ms-swift keeps the system prompt as the leading
system message (ms-swift's ``StdTemplateInputs.from_dict`` pops it into the template's system
slot) and makes every image path absolute, so it works from any working directory.
"""
from __future__ import annotations

import os
import re
from typing import Any

from swift_plugins.data.image_size import MAX_ASPECT_RATIO
from swift_plugins.data.problems import Problem, RecordError, image_header_size, show_value

__all__ = ["IMAGE_TAG", "MESSAGE_ROLES", "RESERVED_TEXTS", "check_messages_record", "image_paths",
           "messages_image_sizes", "messages_to_swift_row"]

IMAGE_TAG = "<image>"
MESSAGE_ROLES = ("system", "user", "assistant")
# ms-swift's agent roles (its template formats them as tool calls / results): not supported yet.
TOOL_ROLES = ("tool", "tool_call", "tool_response", "function_call", "function_response", "observation",
              "observations", "function")
# Record keys ms-swift reads that this project does not support yet: key -> (what, fix).
UNSUPPORTED_RECORD_FIELDS = {
    "videos": ("video inputs are not supported yet", "drop the key, or train this data with plain ms-swift"),
    "audios": ("audio inputs are not supported yet", "drop the key, or train this data with plain ms-swift"),
    "tools": ("tool / agent conversations are not supported yet", "drop the key, or train this data with plain "
              "ms-swift"),
    "objects": ("ms-swift grounding objects (<ref-object> / <bbox>) are not supported yet",
                "drop the key and write the boxes as text in the assistant turn"),
    "system": ("a top-level system prompt is not read here",
               'make it the first message: {"role": "system", "content": ...}'),
    # ms-swift's loader also takes the singular column names as images / videos / audios
    "image": ('a singular "image" key is not read here', 'write "images": ["path/to/image.jpg", ...]'),
    "video": ("video inputs are not supported yet", "drop the key, or train this data with plain ms-swift"),
    "audio": ("audio inputs are not supported yet", "drop the key, or train this data with plain ms-swift"),
}
# Per-message keys that change ms-swift's loss layout (and so how it tokenizes): not supported yet.
UNSUPPORTED_MESSAGE_FIELDS = ("loss", "loss_scale", "tool_calls")
UNSUPPORTED_TAGS = ("<video>", "<audio>")
# Written as text, ms-swift would not encode these as text: Qwen's chat / vision control tokens
# become the control tokens themselves (a turn boundary, an extra image slot, a dropped end of
# turn), and _concat_context_list substitutes its round placeholders inside user turns.
RESERVED_TEXTS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
USER_PLACEHOLDERS = ("{{ROUND0}}", "{{ROUND1}}")
# ms-swift's Template._replace_image_tags: in a row without images, <img>path</img> becomes <image>.
_IMG_ELEMENT = re.compile(r"<img>(.+?)</img>")
_REMOTE_PREFIXES = ("http://", "https://", "data:", "file://")


def image_paths(record: dict, base_dir) -> list[str]:
    """Absolute, normalised image paths of a messages record (relative ones resolve against ``base_dir``).

    >>> image_paths({"images": ["a/../b.jpg", "/x/c.png"]}, "/data")
    ['/data/b.jpg', '/x/c.png']
    """
    base = os.path.abspath(os.fspath(base_dir))
    return [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in record.get("images") or []]


def messages_to_swift_row(record: dict, *, base_dir) -> dict:
    """A validated messages record -> ms-swift's row ``{"messages": [...], "images": [absolute paths]}``.

    Only ``role`` and ``content`` of each message are kept (what ms-swift's template reads for
    supported records); the system message stays first.

    >>> messages_to_swift_row({"messages": [{"role": "user", "content": "<image>Hi", "id": 3},
    ...                                     {"role": "assistant", "content": "Hello"}],
    ...                        "images": ["a.jpg"]}, base_dir="/d")
    {'messages': [{'role': 'user', 'content': '<image>Hi'}, {'role': 'assistant', 'content': 'Hello'}], 'images': ['/d/a.jpg']}
    """
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
            "images": image_paths(record, base_dir)}


# ----------------------------------------------------------------------------------- validation
def check_messages_record(rec: dict, base_dir: str, *, read_images: bool) -> list[tuple[int, int]] | None:
    """Raise the record's first problem as ``Problem``; with ``read_images`` return each image's (w, h).

    Cheap structural checks first, the image headers on disk last (as for LVIS records).
    """
    for key, (what, fix) in UNSUPPORTED_RECORD_FIELDS.items():
        if rec.get(key):  # an empty list / null / "" changes nothing in ms-swift
            raise Problem("unsupported_field", key, what, fix)
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        got = "an empty list" if isinstance(msgs, list) else show_value(msgs)
        raise Problem("bad_messages", "messages", f"expected a non-empty list of messages, got {got}",
                       'write "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]')
    for i, m in enumerate(msgs):
        _check_message(m, i)
    _check_order(msgs)
    images = rec.get("images")
    images = [] if images is None else images
    if not isinstance(images, list):
        raise Problem("bad_images", "images", f"expected a list of image paths, got {show_value(images)}",
                       'write "images": ["path/to/image.jpg", ...]')
    for i, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise Problem("bad_images", f"images[{i}]", f"expected an image path (a non-empty string), got "
                           f"{show_value(image)}", "write the path relative to the JSONL's folder or absolute")
        if image.startswith(_REMOTE_PREFIXES):
            raise Problem("unsupported_field", f"images[{i}]", f"{show_value(image)}: remote or inline images "
                           "are not supported", "store the image as a file and give its path")
    tags = 0
    for i, m in enumerate(msgs):
        tags += _check_content(m, i, has_images=bool(images))
    if tags != len(images):
        raise Problem("image_count", "images", f"{tags} <image> tag{'s' if tags != 1 else ''} in the user turns "
                       f"but {len(images)} image{'s' if len(images) != 1 else ''}",
                       "give one image per <image> tag, in the order of the tags")
    if not read_images:
        return None
    sizes = []
    for i, image in enumerate(images):
        w, h = image_header_size(image, base_dir, f"images[{i}]")
        if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
            raise Problem("aspect_ratio", f"images[{i}]",
                           f"aspect ratio {max(w, h) / min(w, h):.1f} ({w}x{h}) exceeds {MAX_ASPECT_RATIO}",
                           "the Qwen-VL resize refuses it; crop or pad the image")
        sizes.append((w, h))
    return sizes


def _check_message(m: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise Problem("bad_message", where, f"expected an object, got {show_value(m)}",
                       'write {"role": "user" | "assistant" | "system", "content": "..."}')
    for key in ("role", "content"):
        if key not in m:
            raise Problem("bad_message", f"{where}.{key}", "missing",
                           'write {"role": "user" | "assistant" | "system", "content": "..."}')
    role = m["role"]
    if not isinstance(role, str):
        raise Problem("bad_message", f"{where}.role", f"expected a string, got {show_value(role)}",
                       "use system, user or assistant")
    if role in TOOL_ROLES:
        raise Problem("unsupported_role", f"{where}.role", f"{show_value(role)}: tool turns are not supported yet",
                       "drop tool calls and results; use system, user and assistant turns")
    if role not in MESSAGE_ROLES:
        raise Problem("unknown_role", f"{where}.role", f"unknown role {show_value(role)}",
                       "use system, user or assistant; sharegpt's human / gpt are not read here")
    for key in UNSUPPORTED_MESSAGE_FIELDS:
        if key in m:
            raise Problem("unsupported_field", f"{where}.{key}", "not supported yet",
                           "drop the key; every assistant turn is trained on, every other turn is not")
    content = m["content"]
    if not isinstance(content, str):
        what = ("a list of content parts is not supported yet" if isinstance(content, list)
                else f"expected a string, got {show_value(content)}")
        raise Problem("unsupported_content", f"{where}.content", what,
                       'write the turn as one string with <image> tags and list the images in "images"')


def _check_order(msgs: list) -> None:
    for i, m in enumerate(msgs[1:], start=1):
        if m["role"] == "system":
            raise Problem("role_order", f"messages[{i}].role", "a system message after the first message",
                           "only the first message may be the system prompt; move or merge it")
    start = 1 if msgs[0]["role"] == "system" else 0
    if start == len(msgs):
        raise Problem("role_order", "messages", "only a system message",
                       "add a user turn and the assistant's answer")
    for i in range(start, len(msgs)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if msgs[i]["role"] != expected:
            raise Problem("role_order", f"messages[{i}].role", f"expected {expected}, got {msgs[i]['role']}",
                           "turns alternate user, assistant, user, ... after the optional system message; "
                           "merge consecutive turns of one role")
    if msgs[-1]["role"] != "assistant":
        raise Problem("role_order", f"messages[{len(msgs) - 1}].role", "the conversation ends with a user turn",
                       "end with the assistant's answer; drop the unanswered user turn")


def _check_content(m: dict, i: int, *, has_images: bool) -> int:
    """Problems inside one turn's text; returns its number of ``<image>`` tags (user turns)."""
    where, role, text = f"messages[{i}].content", m["role"], m["content"]
    if role == "assistant" and not text.strip():
        raise Problem("empty_response", where, "empty assistant turn" if not text else "whitespace-only "
                       "assistant turn", "write the answer the model should learn, or drop this turn and the "
                       "user turn before it")
    for tag in UNSUPPORTED_TAGS:
        if tag in text:
            raise Problem("unsupported_tag", where, f"{tag} tag: {tag[1:-1]} inputs are not supported yet",
                           f"remove the {tag} tag")
    if not has_images and role != "system" and _IMG_ELEMENT.search(text):
        raise Problem("unsupported_tag", where, "<img>...</img> in a record without images: ms-swift would read "
                       "it as an image", 'list the image in "images" and write an <image> tag')
    reserved = RESERVED_TEXTS + (USER_PLACEHOLDERS if role == "user" else ())
    for token in reserved:
        if token in text:
            raise Problem("reserved_text", where, f"contains {token}, which ms-swift does not encode as text",
                           f"remove or rewrite {token}")
    tags = text.count(IMAGE_TAG)
    if tags and role != "user":
        place = "the system prompt" if role == "system" else "an assistant turn"
        raise Problem("image_tag_position", where, f"an <image> tag in {place}",
                       "put <image> tags in user turns only")
    return tags


def messages_image_sizes(record: dict, *, path: str, line: int, base_dir: str) -> list[tuple[int, int]]:
    """Validate a messages record, reading every image header; its images' (width, height) in order.

    The length pass's entry: the sizes come from the headers, so they are read whatever
    ``check_images`` says. Problems raise :class:`~swift_plugins.data.records.RecordError`.
    """
    try:
        return check_messages_record(record, base_dir, read_images=True)
    except Problem as p:
        raise RecordError(path, line, p.field, p.message, p.kind) from None
