"""Qwen-VL packing templates: packed samples isolated on every attention backend.

One per family of :data:`swift_plugins.families.FAMILIES` (``qwen2_vl_packing``,
``qwen2_5_vl_packing``, ``qwen3_vl_packing``): a subclass of the class ms-swift registered under the
family's template (``Qwen2VLTemplate``, ``Qwen2_5VLTemplate``, ``Qwen3VLTemplate``), registered
with a copy of that template's meta (same prompt layout and default system prompt). The right base
matters beyond layout: Qwen2-VL / Qwen2.5-VL templates embed the images themselves
(``_post_encode``), Qwen3-VL's leave it to the model (DeepStack).

A packed row concatenates whole samples. ms-swift's Qwen-VL collator already restarts each
sample's positions (``get_rope_index`` per sample, with its own image grid) and passes
``cu_seq_lens_q/k`` for flash-attention's varlen kernel, but hands the model only the three
mrope rows of ``position_ids``. With sdpa or eager attention transformers then sees no sample
boundary and builds ONE causal mask over the whole row: sample 2 attends to sample 1.

This template keeps the text row in front (4 rows: text, t, h, w) and sets ``use_cache=False``.
transformers' Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE models all read row 0 as the text positions and, when they restart and no KV cache
exists, builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``);
flash-attention still gets ``cu_seq_lens``. On the tiny model (fp32, 3 samples) the packed logits
equal separate runs within 1e-4 (sdpa and eager) and ms-swift's 3-row ids mix the samples (over
1e-2), as ``tests/training/test_template.py`` asserts::

    row:        [ s1: 0 1 2 3 4 | s2: 0 1 2 | s3: 0 1 2 3 ]       text positions (row 0)
    mask (sdpa)   s1 x s1 causal   s2 x s2       s3 x s3         zeros elsewhere

Every packed batch is checked before it leaves the collator (:func:`isolation_problems`): text
positions restart at every sample start, ``cu_seq_lens_q/k`` mark the same starts, no KV cache.
A change that drops one of them fails loudly instead of training mixed samples. The packs of a
:class:`~swift_plugins.training.packed_dataset.PackedDataset` arrive as :class:`EncodedPack`
items; the batch then also carries ``swiftpack_served`` (pack position, samples, tokens, sample ids)
so that the packing metrics count what was actually trained (``training/metrics.py`` takes it
out before the model sees the batch).

Nothing else changes: labels keep each sample's first token at -100 (its prompt), so no token
learns across a boundary, and the loss is ms-swift's token mean. Equivalence (fp32, tiny model):
packed logits equal each sample run alone, and loss + gradients equal the unpacked batch
(``tests/training/test_template.py``; for flash-attention on CPU through a plain-torch kernel of
its varlen semantics, with the real kernel under the ``gpu`` marker).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional

import torch

from swift_plugins.errors import UserError
from swift_plugins.families import FAMILIES, Family, family_for_config

__all__ = ["SERVED_KEY", "EncodedPack", "check_packing_template", "is_packing_template", "isolation_problems", "packing_class", "register",
           "register_family"]

SERVED_KEY = "swiftpack_served"  # batch key: per pack [position, samples, tokens, sample indices..., -1 padding]


class EncodedPack(list):
    """The encoded samples of one pack (a list, as ms-swift's packing collator expects) and which
    pack it is: ``position`` in the epoch's order, ``samples`` (sample indices), ``tokens``."""

    def __init__(self, encoded, *, position: int, samples, tokens: int):
        super().__init__(encoded)
        self.position, self.samples, self.tokens = int(position), [int(s) for s in samples], int(tokens)


def isolation_problems(batch: Dict[str, Any]) -> List[str]:
    """What a packed batch lacks for its samples to stay isolated ([] when nothing).

    >>> pos = torch.tensor([[0, 1, 2, 0, 1]] * 4)
    >>> cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    >>> isolation_problems({"position_ids": pos, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "use_cache": False})
    []
    >>> isolation_problems({"position_ids": pos[1:], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu})
    ['position_ids has 3 rows; the text row (row 0) is missing', 'use_cache is not False']
    """
    problems = []
    pos = batch.get("position_ids")
    if pos is None or pos.dim() != 3 and pos.dim() != 2:
        return ["position_ids missing"]
    if pos.shape[0] != 4:
        problems.append(f"position_ids has {pos.shape[0]} rows; the text row (row 0) is missing")
    text = pos[0].reshape(-1)
    starts = torch.nonzero(text == 0).flatten().to(torch.int64)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        cu = batch.get(key)
        if cu is None:
            problems.append(f"{key} missing")
        elif not torch.equal(cu[:-1].to(torch.int64).cpu(), starts.cpu()) or int(cu[-1]) != text.numel():
            problems.append(f"{key} {cu.tolist()} do not mark the samples' starts {starts.tolist()}")
    if batch.get("use_cache") is not False:
        problems.append("use_cache is not False")
    return problems


class _PackingCollator:
    """What every packing template adds to its ms-swift base (mixed in before it)."""

    def data_collator(self, batch: List[Any], *, padding_to: Optional[int] = None) -> Dict[str, Any]:
        served = [[p.position, len(p.samples), p.tokens, *p.samples] for p in batch if isinstance(p, EncodedPack)]
        res = super().data_collator(batch, padding_to=padding_to)
        if self.padding_free:
            problems = isolation_problems(res)
            if problems:
                raise RuntimeError("packed batch would let samples attend to each other: " + "; ".join(problems))
        if served:
            width = max(map(len, served))
            res[SERVED_KEY] = torch.tensor([row + [-1] * (width - len(row)) for row in served], dtype=torch.int64)
        return res

    def _data_collator(self, batch: List[Dict[str, Any]], *, padding_to: Optional[int] = None) -> Dict[str, Any]:
        res = super()._data_collator(batch, padding_to=padding_to)
        text = res.get("text_position_ids")
        if self.padding_free and text is not None and res["position_ids"].shape[0] == 3:
            res["position_ids"] = torch.cat([text[None].to(res["position_ids"]), res["position_ids"]], dim=0)
            # transformers only looks for sample boundaries when no KV cache exists (training);
            # a model whose config has use_cache=True would otherwise build one and mix samples.
            res["use_cache"] = False
        return res

    def register_post_encode_hook(self, models: List[torch.nn.Module]) -> None:
        """ms-swift's trainer calls this when training starts: also isolate linear-attention layers."""
        super().register_post_encode_hook(models)
        from swift_plugins.training.linear_attention import install_for_training

        install_for_training(models, packing=bool(self.padding_free))

    def remove_post_encode_hook(self):
        """ms-swift's trainer calls this when training ends: the models get their class forwards back."""
        from swift_plugins.training.linear_attention import uninstall

        models = super().remove_post_encode_hook()
        for model in models:
            uninstall(model)
        return models


def packing_class(base: type) -> type:
    """``base`` (an ms-swift Qwen-VL template class) with 4-row packed positions, e.g. ``Qwen2_5VLTemplatePacking``."""
    return type(f"{base.__name__}Packing", (_PackingCollator, base),
                {"__doc__": f"``{base.__name__}`` whose packed batches carry 4-row position ids (module docstring).",
                 "__module__": __name__})


def is_packing_template(template) -> bool:
    """Whether ``template`` is one of ours (any family)."""
    return isinstance(template, _PackingCollator)


def check_packing_template(template) -> Family:
    """The model's family, if ``template`` is that family's packing template; else a :class:`UserError`
    (an unsupported model, packing without our template, or a template exported for another family)."""
    info = template.model_info
    family = family_for_config({"model_type": info.config.model_type},
                               where=f"model.model: {info.model_dir}/config.json")
    name = template.template_meta.template_type
    if not is_packing_template(template) or name != family.packing_template:
        raise UserError(f"template: training.packing with a {family.title} model needs template "
                        f"{family.packing_template} (got {name}); set template.template: null and re-export "
                        "(the config layer picks it from the model's config.json)")
    return family


def register_family(family: Family) -> None:
    """Register ``family.packing_template`` (idempotent): a copy of ms-swift's ``family.template`` meta with
    :func:`packing_class` of its class, through ms-swift's ``register_template``."""
    from swift.template import TEMPLATE_MAPPING, register_template

    if family.packing_template in TEMPLATE_MAPPING:
        return
    meta = TEMPLATE_MAPPING[family.template]
    register_template(dataclasses.replace(copy.deepcopy(meta), template_type=family.packing_template,
                                          template_cls=packing_class(meta.template_cls)))


def register() -> None:
    """Register the packing template of every family (idempotent)."""
    for family in FAMILIES.values():
        register_family(family)
