"""Template calibration: what the pure length counter needs from ms-swift, measured once.

The counter (``swift_plugins.lengths``) is pure; three facts come from the real template::

    tokenizer        template.processor.tokenizer.backend_tokenizer (shared, not re-parsed)
    image rule       patch / merge from the processor, pixel limits as ms-swift patched them
                     into qwen-vl-utils (IMAGE_MIN/MAX_TOKEN_NUM, MIN/MAX_PIXELS overrides),
                     the template's max_pixels
    frames           len(template.encode(calibration row)) - what the counter counts itself,
                     per distinct (user text, image count), with 64x64 in-memory images

:func:`load_counter` caches these (keyed by the model's tokenizer / processor / config files,
template, max_pixels, the resize environment variables, package versions and the counting code),
so a rerun of the analysis neither imports ms-swift nor loads the processor. Imports of ms-swift
happen inside the functions that need them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Optional

from swift_plugins.files import atomic_write_text
from swift_plugins.lengths.counter import LengthCounter
from swift_plugins.lengths.dataset import CACHE_FORMAT, code_digest
from swift_plugins.lengths.image_rule import ImageTokenRule

__all__ = ["RESIZE_ENV_VARS", "counter_cache_key", "counter_from_template", "image_rule_from_template",
           "load_counter", "load_template", "measure_frame"]

IMAGE_PAD_TOKEN = "<|image_pad|>"


def image_rule_from_template(template) -> ImageTokenRule:
    """Read the rule off a loaded ms-swift template (after ms-swift patched qwen-vl-utils)."""
    from qwen_vl_utils import vision_process as vp

    image_processor = template.processor.image_processor
    patch = int(image_processor.patch_size)
    merge = int(getattr(vp, "SPATIAL_MERGE_SIZE", image_processor.merge_size))
    factor = patch * merge
    return ImageTokenRule(patch_size=patch, merge_size=merge, min_pixels=int(vp.IMAGE_MIN_TOKEN_NUM) * factor ** 2,
                          max_pixels=int(vp.IMAGE_MAX_TOKEN_NUM) * factor ** 2,
                          template_max_pixels=template.max_pixels, max_ratio=float(vp.MAX_RATIO))


def counter_from_template(template) -> LengthCounter:
    """A counter over the template's own Rust tokenizer (shared: parsing a 150k vocab costs ~0.1 s),
    measuring missing frames with the template."""
    backend = template.processor.tokenizer.backend_tokenizer
    return LengthCounter(backend, image_rule_from_template(template),
                         measure_frame=functools.partial(measure_frame, template))


def measure_frame(template, counter: LengthCounter, user_text: str, num_images: int) -> int:
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


def load_template(model_path, *, model_type: str = "qwen3_vl", template_type: str = "qwen3_vl",
                  max_pixels: Optional[int] = None):
    """An ms-swift template in train mode for ``model_path`` (a local folder; no hub access, no weights)."""
    from swift import get_model_processor, get_template

    _, processor = get_model_processor(os.fspath(model_path), model_type=model_type, load_model=False,
                                       download_model=False)
    template = get_template(processor, template_type=template_type, max_pixels=max_pixels)
    template.set_mode("train")
    return template


# Environment variables ms-swift reads into qwen-vl-utils (model/models/qwen.py) or the template:
# they change image token counts, so they are part of the counter's cache key.
RESIZE_ENV_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "IMAGE_FACTOR",
                   "SPATIAL_MERGE_SIZE", "MAX_RATIO")
_MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json",
                "chat_template.jinja", "chat_template.json")


def counter_cache_key(model_path, *, model_type: str, template_type: str, max_pixels: Optional[int],
                      user_texts: tuple) -> str:
    """Everything the template-derived counter state depends on, hashed without importing ms-swift."""
    import importlib.metadata as md

    h = hashlib.blake2b(digest_size=20)
    for name in _MODEL_FILES:
        p = os.path.join(os.fspath(model_path), name)
        h.update(name.encode() + (pathlib.Path(p).read_bytes() if os.path.exists(p) else b"<absent>"))
    parts = {"model_type": model_type, "template": template_type, "max_pixels": max_pixels,
             "user_texts": list(user_texts), "env": {k: os.environ.get(k) for k in RESIZE_ENV_VARS},
             "versions": [md.version(p) for p in ("ms-swift", "qwen-vl-utils", "transformers", "tokenizers")],
             "code": code_digest(), "format": CACHE_FORMAT}
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def load_counter(model_path, *, model_type: str = "qwen3_vl", template_type: str = "qwen3_vl",
                 max_pixels: Optional[int] = None, user_texts: tuple = (), cache_dir=None,
                 clear_cache: bool = False) -> LengthCounter:
    """A LengthCounter calibrated for ``user_texts`` (one image each), from cache when possible.

    The cache entry (tokenizer, image rule, calibrated frames) is keyed by the model folder's
    tokenizer/processor/config files, template type, max_pixels, the resize environment variables
    and package versions, so a rerun skips importing ms-swift and loading the processor.
    """
    path = None
    if cache_dir is not None:
        key = counter_cache_key(model_path, model_type=model_type, template_type=template_type,
                                max_pixels=max_pixels, user_texts=tuple(user_texts))
        path = pathlib.Path(cache_dir) / f"counter-{key}.json"
        if clear_cache and path.exists():
            path.unlink()
        if path.exists():
            state = json.loads(path.read_text(encoding="utf-8"))
            return LengthCounter.from_state({
                "tokenizer_json": state["tokenizer_json"], "rule": ImageTokenRule(**state["rule"]),
                "frames": {(t, n): v for t, n, v in state["frames"]}})
    template = load_template(model_path, model_type=model_type, template_type=template_type, max_pixels=max_pixels)
    counter = counter_from_template(template)
    state = counter.state((t, 1) for t in user_texts)
    if path is not None:
        atomic_write_text(path, json.dumps({
            "tokenizer_json": state["tokenizer_json"], "rule": state["rule"].to_dict(),
            "frames": [[t, n, v] for (t, n), v in sorted(state["frames"].items())]}))
    return counter
