"""Packed samples isolated in the linear-attention (Gated DeltaNet) layers of hybrid decoders.

Qwen3.5 / Qwen3.6 mix full-attention layers with Gated DeltaNet layers (``layer_types``): a
4-tap causal convolution and a recurrent state carried token by token. In a packed row both run
from one sample into the next unless something restarts them at each boundary::

    row            [ a a a a a | b b b | c c c c ]      cu_seq_lens = [0, 5, 8, 12]
    transformers     conv window and state flow a -> b -> c   (its torch kernels ignore cu_seqlens)
    ms-swift 4.6     flash-linear-attention varlen kernels, or it refuses the row (no fla)
    here             per-segment: the layer runs on a, b, c alone (window and state restart)
                     or, where ms-swift's forward and fla's kernels are there (CUDA), ms-swift's varlen path

Boundaries come from ``cu_seq_lens_q`` (ms-swift's packing collator), else from the decoder
layer's ``position_ids`` where they restart (one row): the same rules as ``swiftpack_varlen``
(``attention.find_segments``). The per-segment path calls the layer's own class forward on each
segment without the varlen keys, so it composes with whatever forward the class has: transformers'
or ms-swift's replacement (which takes a one-segment call to transformers' forward and never
reaches its refusal). Its cost is the samples' own cost: the layer is linear in length, one
Python call per sample; the CUDA kernels take all segments in one call.

Why an instance attribute: transformers picks the layer's kernels at import time (its runtime
registration needs the ``kernels`` hub package) and ms-swift's forward refuses a packed row
without flash-linear-attention; torch's forward hooks can change a call's inputs and outputs but
not what the forward computes. So :func:`install` sets ``forward`` on each linear-attention
module of ONE model (and a pre-hook on its decoder layer for position-id boundaries);
transformers' and ms-swift's classes stay as they are, other models are untouched, and
:func:`uninstall` (or the returned handle) removes it. The packing template installs it when
the trainer registers its hooks and removes it when training ends.

>>> segment_bounds(1, 12, {"cu_seq_lens_q": torch.tensor([0, 5, 8, 12])})
[0, 5, 8, 12]
>>> segment_bounds(1, 12, {}) is None
True
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from swift_plugins.errors import UserError

__all__ = ["BACKEND_FLA", "BACKEND_PER_SEGMENT", "ISOLATED_CLASSES", "Isolation", "attention_line",
           "fla_kernels_available", "install", "install_for_training", "isolated_forward", "linear_attention_layers",
           "segment_bounds", "uninstall"]

BACKEND_PER_SEGMENT = "per-segment"
BACKEND_FLA = "flash-linear-attention varlen (ms-swift)"
# Layer classes whose forward(hidden_states, cache_params=None, attention_mask=None, **kwargs) is a causal
# sequence mixer that starts from a zero conv window and a zero state on every call without a cache.
ISOLATED_CLASSES = ("Qwen3_5GatedDeltaNet", "Qwen3_5MoeGatedDeltaNet", "Qwen3NextGatedDeltaNet")
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_MS_SWIFT_PATCHED = "_ms_swift_sp_linear_patched"  # set by ms-swift 4.6 on the classes it gives its forward
_INSTALLED = "_swiftpack_isolation"


@functools.lru_cache(maxsize=None)
def fla_kernels_available() -> bool:
    """Whether the two flash-linear-attention kernels ms-swift 4.6 imports for packed rows import here."""
    try:
        from fla.modules.convolution import causal_conv1d  # noqa: F401
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
    except Exception:  # not installed, or no Triton / CUDA to import it with
        return False
    return True


def segment_bounds(batch: int, seq_len: int, kwargs: Dict[str, Any]) -> Optional[List[int]]:
    """The row's sample boundaries from ``cu_seq_lens_q`` over the flattened ``batch * seq_len`` tokens, or None.

    Raises ValueError when they do not rise from 0 to ``batch * seq_len``.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return None
    bounds = [int(x) for x in cu.tolist()]
    total = batch * seq_len
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != total or any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seq_lens_q must rise from 0 to the {total} tokens of the row (got {bounds[:8]}); "
                         "pass the boundaries of this row's samples")
    return bounds


def _delegate_to_fla(module: torch.nn.Module, hidden_states: torch.Tensor) -> bool:
    """ms-swift's forward drives fla's varlen kernels with cu_seqlens: use it where it can run."""
    return bool(getattr(type(module), _MS_SWIFT_PATCHED, False)) and hidden_states.is_cuda and fla_kernels_available()


def isolated_forward(module: torch.nn.Module, hidden_states: torch.Tensor, cache_params=None,
                     attention_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
    """The linear-attention layer on a packed row: (B, L, H) -> (B, L, H), each sample alone.

    One segment (or no boundaries): the class forward, unchanged. Several: ms-swift's fla varlen
    path where :func:`_delegate_to_fla`, else the class forward on each segment without the varlen keys.
    """
    forward = type(module).forward
    batch, seq_len, hidden = hidden_states.shape
    bounds = segment_bounds(batch, seq_len, kwargs)
    if bounds is None or len(bounds) <= 2 or _delegate_to_fla(module, hidden_states):
        return forward(module, hidden_states, cache_params=cache_params, attention_mask=attention_mask, **kwargs)
    if cache_params is not None:
        raise ValueError("a packed row with a cache: decoding packed samples is not supported (pass use_cache=False)")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("a packed row with padding: pass either a padding mask or cu_seq_lens, not both")
    rest = {k: v for k, v in kwargs.items() if k not in _VARLEN_KEYS}
    # split, not slicing: its backward writes each segment's gradient into one row once
    segments = torch.split(hidden_states.reshape(1, batch * seq_len, hidden),
                           [e - s for s, e in zip(bounds, bounds[1:])], dim=1)
    pieces = [forward(module, seg, cache_params=None, attention_mask=None, **rest)
              for seg in segments if seg.shape[1]]
    return torch.cat(pieces, dim=1).reshape(batch, seq_len, -1)


def _boundaries_from_positions(layer: torch.nn.Module, args, kwargs):
    """Decoder-layer pre-hook: restarting ``position_ids`` of one row become ``cu_seq_lens_q`` when none came."""
    from swift_plugins.training.attention import find_segments

    hidden = args[0] if args else kwargs.get("hidden_states")
    pos = kwargs.get("position_ids")
    if "cu_seq_lens_q" in kwargs or pos is None or hidden is None or hidden.shape[0] != 1:
        return None
    seq_len = hidden.shape[1]
    if pos.numel() != seq_len:  # mrope rows without the text row: no text positions to read
        return None
    seg = find_segments(1, seq_len, seq_len, position_ids=pos.reshape(1, -1))
    if seg.source != "position_ids":
        return None
    kwargs = dict(kwargs, cu_seq_lens_q=torch.tensor(seg.cu_q, dtype=torch.int32, device=hidden.device))
    return args, kwargs


@dataclass
class Isolation:
    """What :func:`install` did to one model: its linear-attention layers and the backend they use."""
    layers: List[str]
    total_layers: int
    backend: Optional[str]
    handles: list = field(default_factory=list, repr=False)


def linear_attention_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """``{decoder layer name: its linear_attn module}`` for every decoder layer that has one."""
    return {name: layer.linear_attn for name, layer in model.named_modules()
            if isinstance(getattr(layer, "linear_attn", None), torch.nn.Module)}


def _layer_types(model: torch.nn.Module) -> List[str]:
    config = getattr(model, "config", None)
    return list(getattr(getattr(config, "text_config", config), "layer_types", None) or [])


def install(model: torch.nn.Module) -> Isolation:
    """Isolate packed samples in every linear-attention layer of ``model`` (idempotent per model).

    Raises :class:`UserError` (one line, the fix) for a linear-attention class this module does
    not know to restart per call: packing such a model would train mixed samples.
    """
    owner = _owner(model)
    if owner is not None:
        return vars(owner)[_INSTALLED]
    layers = linear_attention_layers(model)
    unknown = sorted({type(m).__name__ for m in layers.values()} - set(ISOLATED_CLASSES))
    expected = _layer_types(model).count("linear_attention")
    if expected > len(layers):
        unknown.append(f"(the {expected - len(layers)} of {expected} linear_attention layers without a linear_attn)")
    if unknown:
        raise UserError(f"model: layer_types: linear-attention layers of class {', '.join(unknown)} cannot be "
                        "isolated per packed sample (this project knows " + ", ".join(ISOLATED_CLASSES)
                        + "); packing would mix samples (set training.packing false)")
    handles = []
    for name, module in layers.items():
        module.forward = types.MethodType(isolated_forward, module)
        parent = model.get_submodule(name) if name else model
        handles.append(parent.register_forward_pre_hook(_boundaries_from_positions, with_kwargs=True))
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    backend = None
    if layers:
        some = next(iter(layers.values()))
        backend = BACKEND_FLA if (getattr(type(some), _MS_SWIFT_PATCHED, False) and device.type == "cuda"
                                  and fla_kernels_available()) else BACKEND_PER_SEGMENT
    isolation = Isolation(sorted(layers), len(_layer_types(model)) or len(layers), backend, handles)
    vars(model)[_INSTALLED] = isolation  # a plain attribute in the model's own __dict__, not a submodule
    return isolation


def uninstall(model: torch.nn.Module) -> None:
    """Undo :func:`install` on ``model``: class forwards and no hooks again."""
    owner = _owner(model)
    if owner is None:
        return
    for module in linear_attention_layers(owner).values():
        module.__dict__.pop("forward", None)
    for handle in vars(owner).pop(_INSTALLED).handles:
        handle.remove()


def _owner(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The module (``model`` or one inside it, e.g. the model a PEFT wrapper holds) :func:`install` ran on."""
    return next((m for m in model.modules() if _INSTALLED in vars(m)), None)


def attention_line(attn_impl: Optional[str], isolation: Isolation) -> str:
    """The start-up log line for both kinds of layer.

    >>> print(attention_line("swiftpack_varlen", Isolation(["l.0", "l.1", "l.2"], 4, BACKEND_PER_SEGMENT)))
    ... # doctest: +NORMALIZE_WHITESPACE
    full attention: swiftpack_varlen; linear attention (3 of 4 layers): per-segment
    (conv window and recurrent state restart at each packed sample)
    >>> attention_line("sdpa", Isolation([], 2, None))
    'full attention: sdpa; no linear-attention layers'
    """
    full = f"full attention: {attn_impl}"
    if not isolation.layers:
        return f"{full}; no linear-attention layers"
    how = ("conv window and recurrent state restart at each packed sample" if isolation.backend == BACKEND_PER_SEGMENT
           else "cu_seqlens to fla's causal_conv1d and chunk_gated_delta_rule")
    return (f"{full}; linear attention ({len(isolation.layers)} of {isolation.total_layers} layers): "
            f"{isolation.backend} ({how})")


def install_for_training(models, *, packing: bool) -> List[Isolation]:
    """What the packing template runs when ms-swift's trainer starts: install on each packed model, log the line.

    A run without packing keeps the class forwards (nothing to isolate) and logs nothing.
    """
    if not packing:
        return []
    from swift.utils import get_logger

    done = []
    for model in models:
        isolation = install(model)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        get_logger().info(f"swiftpack attention: {attention_line(impl, isolation)}")
        done.append(isolation)
    return done
