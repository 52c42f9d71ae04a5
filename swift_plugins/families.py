"""The Qwen-VL model families this project supports: the one table where they differ.

A checkpoint's family is its ``config.json`` ``model_type``; everything family-specific is read
from its row, nowhere else::

    model_type     ms-swift template  our packing template   resize patch  default system   text MLP
    qwen2_vl       qwen2_vl           qwen2_vl_packing       14 (fixed)    ms-swift's       dense
    qwen2_5_vl     qwen2_5_vl         qwen2_5_vl_packing     14 (fixed)    ms-swift's       dense
    qwen3_vl       qwen3_vl           qwen3_vl_packing       processor's   none             dense
    qwen3_vl_moe   qwen3_vl           qwen3_vl_packing       processor's   none             MoE
    qwen3_5        qwen3_5            qwen3_5_packing        processor's   none             dense, hybrid
    qwen3_5_moe    qwen3_5            qwen3_5_packing        processor's   none             MoE, hybrid

Qwen3.5 / Qwen3.6 (``qwen3_5``, ``qwen3_5_moe``) have their own token ids (vocabulary 248,320,
``<|image_pad|>`` 248056) and a hybrid decoder: three of four layers are Gated DeltaNet linear
attention, whose packed samples ``swift_plugins.training.linear_attention`` isolates (``hooks``).

* ``template``: ms-swift's template; the packing template subclasses the class ms-swift registered
  under it (``Qwen2VLTemplate``, ``Qwen2_5VLTemplate``, ``Qwen3VLTemplate``) with a copy of its meta
  (``swift_plugins.training.template``), so counting and training see the same prompt layout.
* the image rule (:func:`image_rule`): qwen-vl-utils 0.0.14's resize as ms-swift drives it:
  Qwen2-VL / Qwen2.5-VL call ``fetch_image`` without a patch size (qwen-vl-utils' default 14),
  Qwen3-VL passes the processor's; ms-swift's loader converts ``MAX_PIXELS`` / ``MIN_PIXELS`` into
  token counts with the family's patch (``compat_qwen_vl_utils``: 14 or 16).
* ``default_system``: the system prompt ms-swift's template inserts into a row without one
  (Qwen2-VL / Qwen2.5-VL: "You are a helpful assistant."); checked against ms-swift's meta.
* ``tokens``: the special token ids the template hard-codes; ``vision`` / ``text``: the config keys
  and layout the memory estimate reads (:mod:`swift_plugins.analysis.memory`); ``hooks``: named model-specific
  steps a row may need (none of these four needs one).

Adding a family is adding a row to :data:`FAMILIES` (and a tiny checkpoint to test it with).

>>> family_for_config({"model_type": "qwen2_5_vl"}).packing_template
'qwen2_5_vl_packing'
>>> image_rule(FAMILIES["qwen2_5_vl"], {}, processor_patch=14, processor_merge=2).tokens(640, 480)
391
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

from swift_plugins.errors import UserError
from swift_plugins.lengths.image_rule import ImageTokenRule

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "QWEN3_5_TOKENS", "QWEN_TOKENS", "Family", "SpecialTokens", "TextKeys", "VisionKeys", "counting_template", "family_for_config",
           "family_of_model", "image_rule", "image_token_limits", "read_config", "supported"]

# qwen-vl-utils 0.0.14 defaults (vision_process.py), overridable through the environment
DEFAULT_MERGE, DEFAULT_MIN_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_RATIO = 2, 4, 16384, 200


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids ms-swift's Qwen-VL templates and the models rely on."""
    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int


QWEN_TOKENS = SpecialTokens(endoftext=151643, im_start=151644, im_end=151645, vision_start=151652,
                            vision_end=151653, image_pad=151655, video_pad=151656)
# Qwen3.5 / Qwen3.6: ms-swift's Qwen3_5Template (image 248056, video 248057) and the tokenizer's specials
QWEN3_5_TOKENS = SpecialTokens(endoftext=248044, im_start=248045, im_end=248046, vision_start=248053,
                               vision_end=248054, image_pad=248056, video_pad=248057)


@dataclass(frozen=True)
class VisionKeys:
    """Where a family's ``vision_config`` keeps the sizes the memory estimate needs.

    ``width``: the ViT hidden size; ``out``: the merger's output (the LLM hidden size); the MLP
    width is ``intermediate`` or ``width * mlp_ratio``; ``gated``: SwiGLU (3 matrices) or not (2);
    ``deepstack``: a list key whose length is the number of extra DeepStack mergers;
    ``position_embeddings``: a learned position table's size key; ``norm_params``: parameters per
    channel of its norms (LayerNorm 2, RMSNorm 1); ``patch_bias``: the patch embedding has a bias.
    """
    width: str = "hidden_size"
    out: str = "out_hidden_size"
    intermediate: Optional[str] = "intermediate_size"
    mlp_ratio: Optional[str] = None
    gated: bool = False
    deepstack: Optional[str] = None
    position_embeddings: Optional[str] = None
    norm_params: int = 2
    patch_bias: bool = False


@dataclass(frozen=True)
class TextKeys:
    """The language model's layout beyond its config sizes: biases on q / k / v (Qwen2), RMS norms on
    q and k per head (Qwen3); ``moe``: routed experts (``num_experts``, ``num_experts_per_tok``,
    ``moe_intermediate_size``, ``decoder_sparse_step``, ``mlp_only_layers``)."""
    qkv_bias: bool = False
    qk_norm: bool = False
    moe: bool = False
    hybrid: bool = False  # Qwen3.5: Gated DeltaNet layers (layer_types), gated full attention, a shared expert


@dataclass(frozen=True)
class Family:
    """One row of :data:`FAMILIES` (see the module docstring for what each field decides)."""
    model_type: str
    title: str
    swift_model_type: str
    template: str
    packing_template: str
    resize_patch: Optional[int]          # None: the processor's patch_size (ms-swift passes it to fetch_image)
    env_patch: int                       # patch ms-swift's loader converts MAX_PIXELS / MIN_PIXELS with
    default_system: Optional[str]
    vision: VisionKeys
    text: TextKeys
    tokens: SpecialTokens = QWEN_TOKENS
    hooks: tuple = field(default=())     # named model-specific steps (e.g. "linear_attention")

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "template": self.template, "packing_template": self.packing_template,
                "swift_model_type": self.swift_model_type}


_QWEN2_SYSTEM = "You are a helpful assistant."  # ms-swift template/templates/utils.DEFAULT_SYSTEM
_QWEN2_TEXT = TextKeys(qkv_bias=True)
_QWEN3_VISION = VisionKeys(deepstack="deepstack_visual_indexes", position_embeddings="num_position_embeddings",
                           patch_bias=True)
_QWEN3_5_VISION = VisionKeys(position_embeddings="num_position_embeddings", patch_bias=True)  # no DeepStack

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("qwen2_vl", "Qwen2-VL", "qwen2_vl", "qwen2_vl", "qwen2_vl_packing", 14, 14, _QWEN2_SYSTEM,
           VisionKeys(width="embed_dim", out="hidden_size", intermediate=None, mlp_ratio="mlp_ratio"), _QWEN2_TEXT),
    Family("qwen2_5_vl", "Qwen2.5-VL", "qwen2_5_vl", "qwen2_5_vl", "qwen2_5_vl_packing", 14, 14, _QWEN2_SYSTEM,
           VisionKeys(gated=True, norm_params=1), _QWEN2_TEXT),
    Family("qwen3_vl", "Qwen3-VL", "qwen3_vl", "qwen3_vl", "qwen3_vl_packing", None, 16, None, _QWEN3_VISION,
           TextKeys(qk_norm=True)),
    Family("qwen3_vl_moe", "Qwen3-VL-MoE", "qwen3_vl_moe", "qwen3_vl", "qwen3_vl_packing", None, 16, None,
           _QWEN3_VISION, TextKeys(qk_norm=True, moe=True)),
    Family("qwen3_5", "Qwen3.5", "qwen3_5", "qwen3_5", "qwen3_5_packing", None, 16, None, _QWEN3_5_VISION,
           TextKeys(qk_norm=True, hybrid=True), QWEN3_5_TOKENS, hooks=("linear_attention",)),
    Family("qwen3_5_moe", "Qwen3.5-MoE", "qwen3_5_moe", "qwen3_5", "qwen3_5_packing", None, 16, None,
           _QWEN3_5_VISION, TextKeys(qk_norm=True, moe=True, hybrid=True), QWEN3_5_TOKENS,
           hooks=("linear_attention",)),
)}

# The family whose packing template an exported config names when model.model is no local folder
# (a hub id): training then refuses a model of another family (training/packed_dataset.py).
DEFAULT_FAMILY = "qwen3_vl"


def supported() -> str:
    """The supported ``model_type`` values, for messages: ``qwen2_vl, qwen2_5_vl, ...``."""
    return ", ".join(FAMILIES)


def read_config(model_path) -> dict:
    """The checkpoint's ``config.json`` (a :class:`UserError` naming the folder if it is missing or broken)."""
    path = os.path.join(os.fspath(model_path), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{model_path}: config.json: not found (give a local model folder; its model_type picks the "
                        f"family: {supported()})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} (fix or replace the model's config.json)") from None


def family_for_config(config: Mapping, where: str = "config.json") -> Family:
    """The row of ``config['model_type']``; an unsupported one is a :class:`UserError` naming the supported ones."""
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise UserError(f"{where}: model_type: {model_type!r} is not supported (supported: {supported()}); point "
                        "model.model at a checkpoint of one of these families")
    return family


def family_of_model(model_path) -> Family:
    """The family of a local checkpoint folder, from its ``config.json``."""
    return family_for_config(read_config(model_path), where=os.path.join(os.fspath(model_path), "config.json"))


def counting_template(family: Family, template: Optional[str], where: str) -> str:
    """The ms-swift template to count with: ``family.template`` when ``template`` is None, the family's
    template or its packing template (same meta, same lengths); another is a :class:`UserError`.

    >>> counting_template(FAMILIES["qwen2_5_vl"], "qwen2_5_vl_packing", "--template")
    'qwen2_5_vl'
    """
    if template in (None, family.template, family.packing_template):
        return family.template
    raise UserError(f"{where}: {template!r} is not the {family.title} template (use {family.template!r} or leave it "
                    "unset: training packs with the family's template)")


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    return default if value is None else int(value)


def image_token_limits(family: Family, environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(merge size, min tokens, max tokens) per image as ms-swift sets them in qwen-vl-utils.

    ms-swift's loader (``compat_qwen_vl_utils``) turns ``MIN_PIXELS`` / ``MAX_PIXELS`` into
    ``IMAGE_MIN/MAX_TOKEN_NUM`` (divided by (``env_patch`` * merge)^2) unless those are set; then
    ``patch_qwen_vl_utils`` reads ``SPATIAL_MERGE_SIZE`` and the two token numbers.

    >>> image_token_limits(FAMILIES["qwen2_5_vl"], {"MAX_PIXELS": "1003520"})
    (2, 4, 1280)
    >>> image_token_limits(FAMILIES["qwen3_vl"], {"MAX_PIXELS": "1003520"})
    (2, 4, 980)
    """
    merge = int(environ.get("SPATIAL_MERGE_SIZE") or DEFAULT_MERGE)
    env_factor = family.env_patch * merge
    limits = []
    for pixels_var, tokens_var, default in (("MIN_PIXELS", "IMAGE_MIN_TOKEN_NUM", DEFAULT_MIN_TOKENS),
                                            ("MAX_PIXELS", "IMAGE_MAX_TOKEN_NUM", DEFAULT_MAX_TOKENS)):
        tokens = environ.get(tokens_var)
        if environ.get(pixels_var) and not tokens:
            tokens = str(int(environ[pixels_var]) // env_factor ** 2)
        limits.append(default if tokens is None else int(tokens))
    return merge, limits[0], limits[1]


def image_rule(family: Family, environ: Mapping[str, str], *, processor_patch: int, processor_merge: int,
               template_max_pixels: Optional[int] = None) -> ImageTokenRule:
    """The image-token rule of ``family`` under ``environ`` for a processor of this patch / merge size.

    ms-swift resizes with patch ``family.resize_patch`` (or the processor's) times qwen-vl-utils'
    merge size, then the processor cuts (patch x patch) patches and merges merge^2 of them into one
    token; a resize patch or merge that differs from the processor's would give tokens the
    processor does not produce, so that is refused (ValueError).
    """
    patch = family.resize_patch or processor_patch
    merge, min_tokens, max_tokens = image_token_limits(family, environ)
    if (patch, merge) != (processor_patch, processor_merge):
        raise ValueError(f"{family.title}: ms-swift resizes images with patch {patch} x merge {merge} but the "
                         f"processor cuts patch {processor_patch} x merge {processor_merge} (check the model's "
                         "preprocessor_config.json and SPATIAL_MERGE_SIZE)")
    factor = patch * merge
    return ImageTokenRule(patch_size=patch, merge_size=merge, min_pixels=min_tokens * factor ** 2,
                          max_pixels=max_tokens * factor ** 2, template_max_pixels=template_max_pixels,
                          max_ratio=float(_env_int(environ, "MAX_RATIO", DEFAULT_MAX_RATIO)))
