"""Image tokens from an image's size alone: the resize arithmetic of ms-swift's Qwen-VL training path.

Patch and merge size, pixel limits: the model family's (:func:`swift_plugins.families.image_rule`;
Qwen3-VL: patch 16, factor 32, as in the examples below; Qwen2-VL / Qwen2.5-VL: patch 14, factor 28).

Two resizes, as training runs them:

1. ms-swift ``rescale_image`` when the template has ``max_pixels`` and w*h exceeds it:
   s = sqrt(max_pixels * h / w), h1 = int(s), w1 = int(s * w / h);
2. :func:`swift_plugins.data.image_size.smart_resize` (qwen-vl-utils 0.0.14's rule in plain
   Python, the one the converter uses too) with ``factor = patch * merge``, then
   tokens = (h'/patch) * (w'/patch) / merge**2.

Worked: 640x480 -> 640x480 -> 300 tokens; 640x427 -> 640x416 -> 260; 100x80 -> 96x64 -> 6
(80/32 = 2.5 rounds to even); 10x10 -> 64x64 -> 4 (min 4,096 px); 4000x3000 with template
max_pixels 786,432 -> rescaled 1024x768 -> 768 tokens.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

from swift_plugins.data.image_size import MAX_ASPECT_RATIO, smart_resize

__all__ = ["ImageTokenRule"]

@dataclass(frozen=True)
class ImageTokenRule:
    """The resize arithmetic of ms-swift's Qwen-VL training path, as plain numbers.

    >>> rule = ImageTokenRule(patch_size=16, merge_size=2, min_pixels=4096, max_pixels=16777216)
    >>> rule.resized_size(640, 427), rule.tokens(640, 427)
    ((640, 416), 260)
    """

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    template_max_pixels: Optional[int] = None
    max_ratio: float = MAX_ASPECT_RATIO

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


@functools.lru_cache(maxsize=65536)
def _resized_size(rule: ImageTokenRule, width: int, height: int) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    mp = rule.template_max_pixels
    if mp is not None and mp > 0 and width * height > mp:  # ms-swift template/vision_utils.rescale_image
        ratio = width / height
        h_scaled = math.sqrt(mp / ratio)
        width, height = int(h_scaled * ratio), int(h_scaled)
    h, w = smart_resize(height, width, rule.factor, rule.min_pixels, rule.max_pixels, max_ratio=rule.max_ratio)
    return w, h
