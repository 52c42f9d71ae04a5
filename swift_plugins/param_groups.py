"""Multimodal optimizer: separate LLM / ViT / aligner learning rates, no decay on norms and biases.

Pure: :func:`group_parameters` over ``(name, requires_grad)`` pairs; the ms-swift adapter
(``swift_plugins.training.optimizer``, selected by ``optimizer: multimodal``) builds the
optimizer from these groups. Worked example (Qwen3-VL, LoRA
with ``freeze_vit: false``, prefixes ``model.visual`` / ``model.visual.merger`` /
``model.visual.deepstack_merger_list``; peft's ``base_model.model.`` is stripped first)::

    base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight   -> vit/decay      vit_lr
    base_model.model.model.visual.merger.linear_fc1.lora_B.default.weight   -> aligner/decay  aligner_lr
    base_model.model.model.language_model.layers.0.mlp.up_proj.lora_magnitude_vector.default.weight
                                                                             -> llm/no_decay   learning_rate
    base_model.model.model.language_model.layers.0.mlp.up_proj.base_layer.weight (frozen) -> no group

No weight decay (decided, not inherited from HF's module-type rule):
- biases (``*.bias``) and norms (a name part containing ``norm``, or ``ln``/``ln_*``): scale and
  shift parameters, decaying them pulls activations' scale toward 0;
- DoRA magnitudes (``lora_magnitude_vector``): a per-channel norm of the weight, same reason;
- embedding tables (``embed_tokens``, ``pos_embed``, ``wte``, ``wpe``, ``word_embeddings``,
  ``position_embedding(s)``): a row only gets gradient when its token occurs, but decay shrinks
  every row every step, so rare tokens drift to 0 (HF's default decays them).
Everything else trainable (linear / conv weights, LoRA A and B) decays with ``weight_decay``.
Groups that would be empty are left out (a frozen ViT gives no ViT group).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

__all__ = ["ParamGroup", "group_parameters", "is_no_decay", "part_of", "strip_peft_prefix"]

PEFT_PREFIX = "base_model.model."
PARTS = ("llm", "vit", "aligner")
_EMBEDDINGS = {"embed_tokens", "pos_embed", "wte", "wpe", "word_embeddings", "position_embedding",
               "position_embeddings"}
_LN = re.compile(r"ln(_?[a-z0-9]+)?")


@dataclass(frozen=True)
class ParamGroup:
    """One optimizer parameter group: ``name`` is ``<part>/<decay|no_decay>``."""
    name: str
    lr: float
    weight_decay: float
    params: Tuple[str, ...]


def strip_peft_prefix(name: str) -> str:
    """``base_model.model.model.visual.x`` -> ``model.visual.x`` (a PeftModel's names)."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part_of(name: str, vision_prefixes: Sequence[str], aligner_prefixes: Sequence[str]) -> str:
    """``llm``, ``vit`` or ``aligner``; the aligner wins over the vision tower it sits in."""
    name = strip_peft_prefix(name)
    if any(_under(name, p) for p in aligner_prefixes):
        return "aligner"
    if any(_under(name, p) for p in vision_prefixes):
        return "vit"
    return "llm"


def is_no_decay(name: str) -> bool:
    """True for biases, norms, DoRA magnitudes and embedding tables (see the module docstring)."""
    parts = strip_peft_prefix(name).split(".")
    if parts[-1] == "bias":
        return True
    for part in parts:
        low = part.lower()
        if "norm" in low or _LN.fullmatch(low) or low == "lora_magnitude_vector" or low in _EMBEDDINGS:
            return True
    return False


def group_parameters(params: Iterable[Tuple[str, bool]], *, vision_prefixes: Sequence[str],
                     aligner_prefixes: Sequence[str], learning_rate: float, vit_lr: Optional[float] = None,
                     aligner_lr: Optional[float] = None, weight_decay: float = 0.0) -> List[ParamGroup]:
    """``(name, requires_grad)`` pairs -> non-empty groups in the order llm, vit, aligner (decay
    before no_decay). Frozen parameters are in no group; ``vit_lr`` / ``aligner_lr`` default to
    ``learning_rate``.

    >>> group_parameters([("model.visual.blocks.0.attn.qkv.weight", True),
    ...                   ("model.visual.merger.norm.weight", True),
    ...                   ("model.language_model.norm.weight", False)],
    ...                  vision_prefixes=["model.visual"], aligner_prefixes=["model.visual.merger"],
    ...                  learning_rate=2e-4, vit_lr=1e-4, aligner_lr=4e-4, weight_decay=0.1)
    ... # doctest: +NORMALIZE_WHITESPACE
    [ParamGroup(name='vit/decay', lr=0.0001, weight_decay=0.1, params=('model.visual.blocks.0.attn.qkv.weight',)),
     ParamGroup(name='aligner/no_decay', lr=0.0004, weight_decay=0.0, params=('model.visual.merger.norm.weight',))]
    """
    lrs = {"llm": learning_rate, "vit": learning_rate if vit_lr is None else vit_lr,
           "aligner": learning_rate if aligner_lr is None else aligner_lr}
    buckets = {(part, decay): [] for part in PARTS for decay in (True, False)}
    for name, requires_grad in params:
        if requires_grad:
            buckets[(part_of(name, vision_prefixes, aligner_prefixes), not is_no_decay(name))].append(name)
    return [ParamGroup(f"{part}/{'decay' if decay else 'no_decay'}", lrs[part], weight_decay if decay else 0.0,
                       tuple(names))
            for (part, decay), names in buckets.items() if names]
