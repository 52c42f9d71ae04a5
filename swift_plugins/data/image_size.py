"""How images are sized: the Qwen-VL resize rule and the limits stored images follow.

One pure :func:`smart_resize` (qwen-vl-utils 0.0.14's rule, re-stated in plain Python and held
equal to it by a test on a grid of sizes) serves the LVIS converter and the synthetic generators
(which store images already resized, factor 32, at most 786,432 pixels) and the length counter's
:class:`swift_plugins.lengths.image_rule.ImageTokenRule` (which applies it with the model's patch,
merge and pixel limits). ``MAX_ASPECT_RATIO`` is the validator's limit: the resize refuses
images whose long side exceeds 200 x the short side.
"""
from __future__ import annotations

import math

__all__ = ["MAX_ASPECT_RATIO", "RESCALE_FACTOR", "RESCALE_MAX_PIXELS", "RESCALE_MIN_PIXELS", "smart_resize"]

MAX_ASPECT_RATIO = 200  # qwen-vl-utils / transformers smart_resize refuse max/min side > 200
# The LVIS rescale_32_768 rule (public_data/README.md): factor 32, at least 4 and at most 768 tokens.
RESCALE_FACTOR = 32
RESCALE_MIN_PIXELS = 4 * 32 * 32
RESCALE_MAX_PIXELS = 768 * 32 * 32


def smart_resize(height: int, width: int, factor: int = RESCALE_FACTOR, min_pixels: int = RESCALE_MIN_PIXELS,
                 max_pixels: int = RESCALE_MAX_PIXELS, *, max_ratio: float = MAX_ASPECT_RATIO) -> tuple[int, int]:
    """(height, width) -> resized (h, w): qwen-vl-utils 0.0.14 ``smart_resize``, line for line.

    Round each side to a multiple of ``factor`` (Python ``round``: halves to even; at least
    ``factor``); above ``max_pixels`` scale both sides by ``sqrt(h*w/max_pixels)`` and floor to the
    factor; below ``min_pixels`` scale up and ceil.

    >>> smart_resize(427, 640), smart_resize(700, 1000), smart_resize(10, 10)
    ((416, 640), (704, 992), (64, 64))
    """
    if max(height, width) / min(height, width) > max_ratio:
        raise ValueError(f"absolute aspect ratio must be smaller than {max_ratio:g}, "
                         f"got {max(height, width) / min(height, width):g} for {width}x{height}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
