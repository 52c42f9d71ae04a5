"""Exact Qwen-VL sample lengths without encoding a single image.

The length the model family's ms-swift template (``qwen3_vl`` here; ``qwen2_vl``, ``qwen2_5_vl``
alike, their default system prompt inside the frame) gives an LVIS record splits into three parts::

    total_tokens = frame(user text, number of images)      chat markers, prompt, vision_start/end
                 + tokens(assistant response)              compact JSON, digits one token each
                 + sum(image_tokens(w, h) for each image)  (h'/32) * (w'/32) after resizing

* ``frame`` is measured ONCE per distinct (user text, image count) by encoding a calibration row
  with the real template (tiny in-memory images), so chat markers, the prompt and any template
  change are counted by ms-swift itself, never re-typed here.
* ``tokens(response)`` is the tokenizer's count of the response string. Special tokens on both
  sides (``assistant\\n`` ... ``<|im_end|>``) cut the text there, so the count is additive.
* ``image_tokens``: :class:`swift_plugins.lengths.image_rule.ImageTokenRule` from the image size.

A messages conversation (any turns, system prompt, images anywhere in user turns) is counted by
:meth:`LengthCounter.count_messages` from the template's chat layout (:mod:`.chat`): its content
pieces through the tokenizer plus calibrated frame constants, image tokens from each image's size;
:meth:`LengthCounter.count_messages_exact` tokenizes the very strings ms-swift tokenizes instead
(the self-check).

Tests compare ``total_tokens`` with ``len(template.encode(row)['input_ids'])`` on real images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from swift_plugins.lengths.chat import ChatFrame, content_pieces, frame_tokens, render_segments
from swift_plugins.lengths.image_rule import ImageTokenRule

__all__ = ["DetectionAnswerCounter", "LengthCounter", "SampleLength"]


@dataclass(frozen=True)
class SampleLength:
    text_tokens: int
    image_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens


class LengthCounter:
    """Counts ``len(template.encode(row)['input_ids'])`` for ms-swift rows, fast.

    Built from a loaded ms-swift template by ``swift_plugins.training.calibration.counter_from_template``
    (which supplies ``measure_frame``); afterwards it needs only the tokenizer (picklable to worker
    processes via ``state()`` / ``from_state``, with the frames measured so far).
    """

    def __init__(self, tokenizer, rule: ImageTokenRule, frames: Optional[dict] = None,
                 measure_frame: Optional[Callable[["LengthCounter", str, int], int]] = None,
                 chat: Optional[ChatFrame] = None, chat_error: Optional[str] = None, family: Optional[str] = None):
        """``tokenizer``: a ``tokenizers.Tokenizer`` or its JSON string; ``measure_frame(counter,
        user_text, num_images)`` measures a frame not in ``frames`` with the real template;
        ``chat``: the template's chat layout, needed by :meth:`count_messages` (``chat_error``: why
        the template has none); ``family``: the model family's ``model_type`` (part of cache keys)."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self._tokenizer_json = tokenizer if isinstance(tokenizer, str) else None
        self.rule = rule
        self._frames: dict = dict(frames or {})
        self._measure_frame = measure_frame
        self.chat = chat
        self.chat_error = chat_error
        self.family = family

    # -- picklable state for worker processes -------------------------------------------------
    def state(self, user_texts_and_counts: Iterable[tuple[str, int]] = ()) -> dict:
        for key in user_texts_and_counts:
            self.frame(*key)
        if self._tokenizer_json is None:
            self._tokenizer_json = self._tok.to_str()
        return {"tokenizer_json": self._tokenizer_json, "rule": self.rule, "frames": dict(self._frames),
                "chat": self.chat, "chat_error": self.chat_error, "family": self.family}

    @classmethod
    def from_state(cls, state: dict) -> "LengthCounter":
        return cls(state["tokenizer_json"], state["rule"], state["frames"], chat=state.get("chat"),
                   chat_error=state.get("chat_error"), family=state.get("family"))

    # -- counting -------------------------------------------------------------------------------
    def frame(self, user_text: str, num_images: int) -> int:
        """Tokens of everything but the response and the image pads, measured by the template."""
        key = (user_text, num_images)
        if key not in self._frames:
            if self._measure_frame is None:
                raise KeyError(f"no calibration for user text {user_text!r} with {num_images} image(s); "
                               "build the counter with swift_plugins.training.calibration.counter_from_template")
            self._frames[key] = self._measure_frame(self, user_text, num_images)
        return self._frames[key]

    def text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each string (no special tokens added), batched in the Rust tokenizer."""
        return [len(e.ids) for e in self._encode_clean(texts)]

    def _encode_clean(self, texts: Sequence[str]) -> list:
        if self._tok.truncation is not None or self._tok.padding is not None:
            # a shared tokenizer left with truncation/padding on would change counts: use a clean copy
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self._tok.to_str())
            self._tok.no_truncation()
            self._tok.no_padding()
        # encode_batch_fast (tokenizers >= 0.21): the same ids without computing character offsets (unused here)
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return encode(list(texts), add_special_tokens=False)

    def image_tokens(self, width: int, height: int) -> int:
        return self.rule.tokens(width, height)

    def count_rows(self, rows: Sequence[dict], image_sizes: Sequence[Sequence[tuple[int, int]]]) -> list[SampleLength]:
        """Lengths of ms-swift rows; ``image_sizes[i]`` lists (width, height) of row i's images."""
        responses, frames = [], []
        for row in rows:
            user, response = _split_messages(row)
            responses.append(response)
            frames.append(self.frame(user, len(row.get("images") or [])))
        response_tokens = self.text_tokens(responses)
        out = []
        for frame, resp, sizes in zip(frames, response_tokens, image_sizes):
            out.append(SampleLength(text_tokens=frame + resp,
                                    image_tokens=sum(self.image_tokens(w, h) for w, h in sizes)))
        return out


    # -- messages conversations -------------------------------------------------------------
    def count_messages(self, messages: Sequence[dict], image_sizes: Sequence[tuple[int, int]]) -> SampleLength:
        """Exact length of a validated messages conversation whose images have these (width, height).

        Pure after calibration (the tokenizer and ``self.chat``); e.g. on the tiny test model::

            count_messages([{"role": "user", "content": "<image>Hi"},
                            {"role": "assistant", "content": "Yes"}], [(640, 480)])
            -> SampleLength(text_tokens=17, image_tokens=300)    # 300 = (480/32) * (640/32)
        """
        return self.count_messages_batch([(messages, image_sizes)])[0]

    def count_messages_batch(self, items: Sequence[tuple[Sequence[dict], Sequence[tuple[int, int]]]]
                             ) -> list[SampleLength]:
        """:meth:`count_messages` of many conversations with one batched tokenizer call."""
        chat = self._chat()
        texts, spans, fixed, images = [], [], [], []
        for messages, sizes in items:
            pieces, tags = content_pieces(chat, messages)
            if tags != len(sizes):
                raise ValueError(f"{tags} <image> tags but {len(sizes)} image sizes")
            spans.append((len(texts), len(texts) + len(pieces)))
            texts.extend(pieces)
            fixed.append(frame_tokens(chat, messages, tags))
            images.append(sum(self.rule.tokens(w, h) for w, h in sizes))
        counts = self.text_tokens(texts)
        return [SampleLength(text_tokens=f + sum(counts[a:b]), image_tokens=i)
                for (a, b), f, i in zip(spans, fixed, images)]

    def count_messages_exact(self, messages: Sequence[dict], image_sizes: Sequence[tuple[int, int]]) -> SampleLength:
        """The same length the obviously-exact way: tokenize each string ms-swift tokenizes
        (:func:`.chat.render_segments`), expand every image pad by the resize rule."""
        chat = self._chat()
        pad = self._tok.token_to_id(chat.image_pad)
        ids = [i for seg in self._encode_clean(render_segments(chat, messages)) for i in seg.ids]
        pads = ids.count(pad)
        if pads != len(image_sizes):
            raise ValueError(f"{pads} image pads in the encoded conversation but {len(image_sizes)} image sizes")
        return SampleLength(text_tokens=len(ids) - pads,
                            image_tokens=sum(self.rule.tokens(w, h) for w, h in image_sizes))

    def _chat(self) -> ChatFrame:
        if self.chat is None:
            if self.chat_error:
                raise ValueError(f"messages records cannot be counted with this template: {self.chat_error}")
            raise KeyError("this counter has no chat-layout calibration for messages records; build it with "
                           "swift_plugins.training.calibration.counter_from_template or load_counter")
        return self.chat


def _split_messages(row: dict) -> tuple[str, str]:
    messages = row["messages"]
    if len(messages) != 2 or messages[0]["role"] != "user" or messages[1]["role"] != "assistant":
        raise ValueError("LengthCounter supports one user turn then one assistant turn "
                         f"(got roles {[m['role'] for m in messages]})")
    return messages[0]["content"], messages[1]["content"]


class DetectionAnswerCounter:
    """Token count of a compact-JSON detection answer, from its objects, without building the text.

    The answer ``[{"desc":"cat","poly":[10,20,...]},{"desc":...}]`` pre-tokenizes (Qwen's regex)
    into pieces that never cross these seams::

        [{"  | desc":"cat","poly":[ | 1 | 0 | , | 2 | 0 | ... | ]},{"  | desc":...":[ | ... | ]}]
        open   head(desc, key)        one token per digit and comma      join    head      close

    so tokens = open + close + (n-1)*join + sum(head(desc, key) + digits + commas). ``head`` is
    tokenized once per distinct (desc, key) (LVIS has 1,203 categories), the rest is arithmetic.
    Valid for non-negative integer coordinates (what ``to_swift_row`` emits); the dataset pass
    re-tokenizes a fixed subset of full answers and fails loudly on any difference.
    """

    def __init__(self, count_texts: Callable[[Sequence[str]], list[int]]):
        self._count = count_texts
        self.open, self.join, self.close = count_texts(['[{"', ']},{"', ']}]'])
        self._heads: dict = {}

    def head(self, desc: str, key: str) -> int:
        k = (desc, key)
        n = self._heads.get(k)
        if n is None:
            text = 'desc":' + json.dumps(desc, ensure_ascii=False) + ',"' + key + '":['
            n = self._heads[k] = self._count([text])[0]
        return n

    def count(self, objects: Sequence[tuple[str, str, Sequence[int]]]) -> int:
        """``objects``: (desc, "poly" | "bbox_2d", non-negative int coordinates) in any order."""
        if not objects:
            return self._count(["[]"])[0]
        total = self.open + self.close + (len(objects) - 1) * self.join
        for desc, key, coords in objects:
            total += self.head(desc, key) + len(coords) - 1 + sum(len(str(v)) for v in coords)
        return total
