"""Exact Qwen3-VL sample lengths without encoding a single image.

The length ms-swift's ``qwen3_vl`` template gives a record splits into three parts::

    total_tokens = frame(user text, number of images)      chat markers, prompt, vision_start/end
                 + tokens(assistant response)              compact JSON, digits one token each
                 + sum(image_tokens(w, h) for each image)  (h'/32) * (w'/32) after resizing

* ``frame`` is measured ONCE per distinct (user text, image count) by encoding a calibration row
  with the real template (tiny in-memory images), so chat markers, the prompt and any template
  change are counted by ms-swift itself, never re-typed here.
* ``tokens(response)`` is the tokenizer's count of the response string. Special tokens on both
  sides (``assistant\\n`` ... ``<|im_end|>``) cut the text there, so the count is additive.
* ``image_tokens`` follows the training path's two resizes, from the image size alone:
  1. ms-swift ``rescale_image`` when the template has ``max_pixels`` and w*h exceeds it:
     s = sqrt(max_pixels * h / w), h1 = int(s), w1 = int(s * w / h);
  2. qwen-vl-utils ``smart_resize(h1, w1, factor=patch*merge, min_pixels, max_pixels)`` with the
     limits ms-swift patched into qwen-vl-utils (``IMAGE_MIN/MAX_TOKEN_NUM``, ``MIN/MAX_PIXELS``
     environment overrides), then tokens = (h'/patch) * (w'/patch) / merge**2.
  Worked: 640x480 -> 640x480 -> 300 tokens; 640x427 -> 640x416 -> 260; 100x80 -> 96x64 -> 6
  (80/32 = 2.5 rounds to even); 10x10 -> 64x64 -> 4 (qwen-vl-utils min 4,096 px); 4000x3000
  with template max_pixels 786,432 -> rescaled 1024x768 -> 768 tokens.

Tests compare ``total_tokens`` with ``len(template.encode(row)['input_ids'])`` on real images.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

IMAGE_PAD_TOKEN = "<|image_pad|>"


@dataclass(frozen=True)
class ImageTokenRule:
    """The resize arithmetic of ms-swift's Qwen3-VL training path, as plain numbers.

    >>> rule = ImageTokenRule(patch_size=16, merge_size=2, min_pixels=4096, max_pixels=16777216)
    >>> rule.resized_size(640, 427), rule.tokens(640, 427)
    ((640, 416), 260)
    """

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    template_max_pixels: Optional[int] = None
    max_ratio: float = 200

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the image the vision tower sees."""
        return _resized_size(self, int(width), int(height))

    def tokens(self, width: int, height: int) -> int:
        w, h = self.resized_size(width, height)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size ** 2)

    def to_dict(self) -> dict:
        return {"patch_size": self.patch_size, "merge_size": self.merge_size, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels, "template_max_pixels": self.template_max_pixels,
                "max_ratio": self.max_ratio}

    @classmethod
    def from_template(cls, template) -> "ImageTokenRule":
        """Read the rule off a loaded ms-swift template (after ms-swift patched qwen-vl-utils)."""
        from qwen_vl_utils import vision_process as vp

        image_processor = template.processor.image_processor
        patch = int(image_processor.patch_size)
        merge = int(getattr(vp, "SPATIAL_MERGE_SIZE", image_processor.merge_size))
        factor = patch * merge
        return cls(patch_size=patch, merge_size=merge, min_pixels=int(vp.IMAGE_MIN_TOKEN_NUM) * factor ** 2,
                   max_pixels=int(vp.IMAGE_MAX_TOKEN_NUM) * factor ** 2,
                   template_max_pixels=template.max_pixels, max_ratio=float(vp.MAX_RATIO))


@functools.lru_cache(maxsize=65536)
def _resized_size(rule: ImageTokenRule, width: int, height: int) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    mp = rule.template_max_pixels
    if mp is not None and mp > 0 and width * height > mp:  # ms-swift template/vision_utils.rescale_image
        ratio = width / height
        h_scaled = math.sqrt(mp / ratio)
        width, height = int(h_scaled * ratio), int(h_scaled)
    if max(height, width) / min(height, width) > rule.max_ratio:
        raise ValueError(f"absolute aspect ratio must be smaller than {rule.max_ratio:g}, "
                         f"got {max(height, width) / min(height, width):g} for {width}x{height}")
    from qwen_vl_utils.vision_process import smart_resize  # the function training calls

    h, w = smart_resize(height, width, factor=rule.factor, min_pixels=rule.min_pixels, max_pixels=rule.max_pixels)
    return w, h


@dataclass(frozen=True)
class SampleLength:
    text_tokens: int
    image_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens


class LengthCounter:
    """Counts ``len(template.encode(row)['input_ids'])`` for ms-swift rows, fast.

    Build it from a loaded ms-swift template (``LengthCounter.from_template``); afterwards it needs
    only the tokenizer (picklable to worker processes via ``state()`` / ``from_state``).
    """

    def __init__(self, tokenizer, rule: ImageTokenRule, frames: Optional[dict] = None, template=None):
        """``tokenizer``: a ``tokenizers.Tokenizer`` or its JSON string."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self._tokenizer_json = tokenizer if isinstance(tokenizer, str) else None
        self.rule = rule
        self._frames: dict = dict(frames or {})
        self._template = template

    @classmethod
    def from_template(cls, template) -> "LengthCounter":
        # The template's own Rust tokenizer, shared (no copy: parsing a 150k vocab costs ~0.1 s).
        backend = template.processor.tokenizer.backend_tokenizer
        return cls(backend, ImageTokenRule.from_template(template), template=template)

    # -- picklable state for worker processes -------------------------------------------------
    def state(self, user_texts_and_counts: Iterable[tuple[str, int]] = ()) -> dict:
        for key in user_texts_and_counts:
            self.frame(*key)
        if self._tokenizer_json is None:
            self._tokenizer_json = self._tok.to_str()
        return {"tokenizer_json": self._tokenizer_json, "rule": self.rule, "frames": dict(self._frames)}

    @classmethod
    def from_state(cls, state: dict) -> "LengthCounter":
        return cls(state["tokenizer_json"], state["rule"], state["frames"])

    # -- counting -------------------------------------------------------------------------------
    def frame(self, user_text: str, num_images: int) -> int:
        """Tokens of everything but the response and the image pads, measured by the template."""
        key = (user_text, num_images)
        if key not in self._frames:
            if self._template is None:
                raise KeyError(f"no calibration for user text {user_text!r} with {num_images} image(s); "
                               "build the counter with LengthCounter.from_template")
            self._frames[key] = _measure_frame(self._template, user_text, num_images, self)
        return self._frames[key]

    def text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each string (no special tokens added), batched in the Rust tokenizer."""
        if self._tok.truncation is not None or self._tok.padding is not None:
            # a shared tokenizer left with truncation/padding on would change counts: use a clean copy
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self._tok.to_str())
            self._tok.no_truncation()
            self._tok.no_padding()
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

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


def _split_messages(row: dict) -> tuple[str, str]:
    messages = row["messages"]
    if len(messages) != 2 or messages[0]["role"] != "user" or messages[1]["role"] != "assistant":
        raise ValueError("LengthCounter supports one user turn then one assistant turn "
                         f"(got roles {[m['role'] for m in messages]})")
    return messages[0]["content"], messages[1]["content"]


def _measure_frame(template, user_text: str, num_images: int, counter: LengthCounter) -> int:
    """Encode a calibration row with the real template and subtract what we count ourselves."""
    from PIL import Image

    probe = "x"  # a response whose count we know: tokens(probe) below
    images = [Image.new("RGB", (64, 64), (127, 127, 127)) for _ in range(num_images)]
    row = {"messages": [{"role": "user", "content": user_text}, {"role": "assistant", "content": probe}],
           "images": images}
    encoded = template.encode(row)
    image_tokens = num_images * counter.image_tokens(64, 64)
    pads = encoded["input_ids"].count(template.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN))
    if pads != image_tokens:
        raise RuntimeError(f"calibration image gave {pads} image tokens, the resize rule says {image_tokens}: "
                           "the template's image path differs from ImageTokenRule")
    return len(encoded["input_ids"]) - counter.text_tokens([probe])[0] - image_tokens


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
