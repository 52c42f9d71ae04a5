"""The chat layout of a messages conversation, as ms-swift's template tokenizes it, in plain strings.

ms-swift's ``Template._swift_encode`` fills the template meta's pieces (qwen3_vl values)::

    system_prefix  "<|im_start|>system\\n{{SYSTEM}}<|im_end|>\\n"     (prefix "" without a system)
    prompt         "<|im_start|>user\\n{{QUERY}}<|im_end|>\\n<|im_start|>assistant\\n"   per turn
    response       the assistant's text                                 per turn
    chat_sep       "<|im_end|>\\n"                                      after every turn but the last
    suffix         "<|im_end|>\\n"                                      after the last
    <image>        "<|vision_start|><|image_pad|><|vision_end|>"        (replace_tag; the pad becomes
                                                                         one token per vision patch)

and then tokenizes *separately* every run of neighbouring strings with the same loss scale
(``_simplify_context_list`` joins only equal ones; ``_encode_context_list`` tokenizes each): with
the default loss scale the frame text (loss 0) and each response (loss 1) are tokenized apart, so a
response starting with ``"\\n"`` does not merge with ``"assistant\\n"``, while a user turn's text
IS tokenized together with the ``"user\\n"`` before it. Two counts follow that layout:

* :func:`render_segments` (the obviously-exact one): the very strings ms-swift tokenizes; the
  caller tokenizes each whole and expands the image pads.
* :func:`content_pieces` (the fast one): only the strings that carry the record's text, each cut
  where the tokenizer cuts anyway (at an added token such as ``<|im_end|>``): the system text
  with its head ``"system\\n"``, each user text piece between ``<image>`` tags (the first with
  its head ``"user\\n"``), each response (with ``"assistant\\n"`` only where ms-swift joins them).
  Everything else is a calibrated constant: ``first_turn + (turns - 1) * next_turn
  + system * [has system] + per_image * images``.

Worked (default loss scale, qwen3_vl, no system)::

    [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "\\nYes"}]
    render_segments -> ["<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\\n"
                        "<|im_start|>assistant\\n", "\\nYes<|im_end|>\\n"]
    content_pieces  -> ["user\\n", "Hi", "\\nYes"]   (+ first_turn + per_image)

Qwen3.5's template first trims every content and re-wraps a ``<think>`` block (``trim``), then puts
the empty think block ``"<think>\\n\\n</think>\\n\\n"`` before each response that does not open with
``<think>`` (``response_prefix``): both counts start from :func:`prepared`, the messages so changed.

Every field comes from the real template (``swift_plugins.training.calibration.chat_frame``),
which also checks both counts against ``template.encode`` on calibration rows.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from swift_plugins.data.messages import IMAGE_TAG

__all__ = ["ChatFrame", "content_pieces", "frame_tokens", "prepared", "render_segments", "response_head",
           "split_turns"]


@dataclass(frozen=True)
class ChatFrame:
    """The template's chat layout (see the module docstring); every value calibrated, none typed here."""
    prefix: str                 # before the first turn without a system prompt
    system_prefix: str          # with "{{SYSTEM}}"
    prompt: str                 # with "{{QUERY}}"
    chat_sep: str
    suffix: str
    image: str                  # what replace_tag puts for one <image>
    image_pad: str              # the token in ``image`` that becomes the vision patches
    default_system: Optional[str]
    frame_loss: float           # loss scales of the frame text, history responses, the last response
    history_loss: float         # (+ suffix): ms-swift tokenizes neighbours apart where they differ
    last_loss: float
    system_head: str            # text between the last added token and {{SYSTEM}} / {{QUERY}} /
    user_head: str              # the response: tokenized together with the content after it
    assistant_head: str
    first_turn: int = 0         # fast-count constants (tokens outside content_pieces)
    next_turn: int = 0
    system: int = 0
    per_image: int = 0
    trim: bool = False          # contents trimmed, <think> blocks re-wrapped (ms-swift's Qwen3_5Template)
    response_prefix: str = ""   # put before every response not starting with "<think>" (the non-thinking prefix)
    zero_loss_heads: tuple = ()  # regexes of a response's head at loss 0 (ms-swift's ignore_empty_think)

    def __post_init__(self):
        object.__setattr__(self, "zero_loss_heads", tuple(self.zero_loss_heads))  # a list after a JSON cache

    def to_dict(self) -> dict:
        """Plain JSON values (``zero_loss_heads`` a list); ``ChatFrame(**d)`` gives the frame back."""
        return {**dataclasses.asdict(self), "zero_loss_heads": list(self.zero_loss_heads)}

    def system_text(self, messages: Sequence[dict]) -> str:
        """The system prompt ms-swift uses: the leading system message, else the default ("" = none)."""
        if messages and messages[0]["role"] == "system":
            return messages[0]["content"]
        return self.default_system or ""


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _trimmed(role: str, content: str) -> str:
    """A message's content as ms-swift's Qwen3_5Template prepares it (the published chat template's ``|trim``).

    >>> _trimmed("assistant", "  <think>\\n why \\n</think>\\n\\n\\n ok ")
    '<think>\\nwhy\\n</think>\\n\\n ok'
    """
    stripped = content.strip()
    if role != "assistant" or not (THINK_OPEN in stripped and THINK_CLOSE in stripped):
        return stripped
    before, _, after = stripped.partition(THINK_CLOSE)
    reasoning = before.rstrip("\n").rsplit(THINK_OPEN, 1)[-1].lstrip("\n").strip()
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{after.lstrip(chr(10))}"


def prepared(frame: ChatFrame, messages: Sequence[dict]) -> Sequence[dict]:
    """The messages as the template encodes them: trimmed (``frame.trim``), each response after
    ``frame.response_prefix`` unless it opens with ``<think>`` (or the prefix) already."""
    if not frame.trim and not frame.response_prefix:
        return messages
    out = []
    for m in messages:
        content = _trimmed(m["role"], m["content"]) if frame.trim else m["content"]
        if m["role"] == "assistant" and frame.response_prefix and not content.startswith(
                (THINK_OPEN, frame.response_prefix)):
            content = frame.response_prefix + content
        out.append({"role": m["role"], "content": content})
    return out


def response_head(frame: ChatFrame, response: str) -> str:
    """The head of ``response`` that ms-swift's ``ignore_empty_think`` loss scale puts at loss 0 ("" if none).

    >>> response_head(ChatFrame(*[""] * 7, None, 0.0, 1.0, 1.0, "", "", "", zero_loss_heads=(r"^<think>\\s*</think>\\s*",)),
    ...               "<think>\\n\\n</think>\\n\\nA cat.")
    '<think>\\n\\n</think>\\n\\n'
    """
    for pattern in frame.zero_loss_heads:
        found = re.match(pattern, response)
        if found and found.end():
            return response[:found.end()]
    return ""


def split_turns(messages: Sequence[dict]) -> list[tuple[str, str]]:
    """(user text, assistant text) per round of a validated conversation (the system message skipped)."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    turns = messages[start:]
    return [(turns[k]["content"], turns[k + 1]["content"]) for k in range(0, len(turns), 2)]


def render_segments(frame: ChatFrame, messages: Sequence[dict]) -> list[str]:
    """The strings ms-swift's ``_swift_encode`` + ``_simplify_context_list`` tokenize, one by one.

    ``_concat_context_list`` fills the pieces; ``_split_special_tokens`` + ``_pre_tokenize_images``
    replace each ``<image>`` with the image string at loss 0; neighbours with equal loss are joined.
    """
    messages = prepared(frame, messages)
    contexts: list[tuple[str, float]] = []
    system = frame.system_text(messages)
    if system:  # ms-swift: `if is_post_system or not system: prefix` - an empty system is no system
        contexts.append((frame.system_prefix.replace("{{SYSTEM}}", system), frame.frame_loss))
    else:
        contexts.append((frame.prefix, frame.frame_loss))
    turns = split_turns(messages)
    for i, (query, response) in enumerate(turns):
        last = i == len(turns) - 1
        contexts.append((frame.prompt.replace("{{QUERY}}", query), frame.frame_loss))
        head = response_head(frame, response)
        if head:
            contexts.append((head, 0.0))
        contexts.append((response[len(head):], frame.last_loss if last else frame.history_loss))
        contexts.append((frame.suffix, frame.last_loss) if last else (frame.chat_sep, frame.frame_loss))
    pieces: list[tuple[str, float]] = []
    for text, loss in contexts:
        for j, part in enumerate(text.split(IMAGE_TAG)):
            if j:
                pieces.append((frame.image, 0.0))  # ms-swift: loss 0 for the image with the swift backend
            if part:
                pieces.append((part, loss))
    joined: list[list] = []
    for text, loss in pieces:
        if joined and joined[-1][1] == loss:
            joined[-1][0] += text
        else:
            joined.append([text, loss])
    return [text for text, _ in joined]


def content_pieces(frame: ChatFrame, messages: Sequence[dict]) -> tuple[list[str], int]:
    """The strings of the fast count and the number of ``<image>`` tags (see the module docstring)."""
    messages = prepared(frame, messages)
    pieces = []
    system = frame.system_text(messages)
    if system:
        pieces.append(frame.system_head + system)
    response_joined = (frame.history_loss == frame.frame_loss, frame.last_loss == frame.frame_loss)
    turns = split_turns(messages)
    images = 0
    for i, (query, response) in enumerate(turns):
        parts = query.split(IMAGE_TAG)
        images += len(parts) - 1
        pieces.append(frame.user_head + parts[0])
        pieces.extend(parts[1:])
        joined = response_joined[1] if i == len(turns) - 1 else response_joined[0]
        head = "" if joined else response_head(frame, response)
        if head:  # tokenized with the frame text before it, which an added token ends ("<think>")
            pieces.append(head)
        pieces.append(frame.assistant_head + response if joined else response[len(head):])
    return pieces, images


def frame_tokens(frame: ChatFrame, messages: Sequence[dict], num_images: int) -> int:
    """The fast count's constant part for a conversation of this shape."""
    messages = prepared(frame, messages)
    turns = len(split_turns(messages))
    return (frame.first_turn + (turns - 1) * frame.next_turn + (frame.system if frame.system_text(messages) else 0)
            + frame.per_image * num_images)
