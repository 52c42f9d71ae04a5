"""``swiftpack_varlen``: packed attention per sample segment, never an L x L mask.

A packed row of three samples; only the diagonal blocks are computed, nothing else exists::

    tokens         [ a a a a a | b b b | c c c c ]     cu_seq_lens = [0, 5, 8, 12]
    computed         5 x 5       3 x 3   4 x 4         causal inside a block (text), full (vision)
    never built      the 12 x 12 block-diagonal mask that sdpa / eager get from transformers

Why: with sdpa or eager, transformers turns restarting position ids into a (1, 1, L, L) mask and
the kernel scores all L^2 pairs. At L = 20,000 that mask alone is 381 MiB as bool and 763 MiB as
an additive bf16 mask, before any scores; here the extra memory is O(L) (segment boundaries).
The price on the fallback path is one sdpa call per segment; the CUDA varlen kernel takes all
segments in one call. Measured time and memory against sdpa with the 4-D mask, eager and the
samples one by one: docs/benchmarks.md, section "Packed attention (bench/bench_attention.py)".

Semantics are flash-attn's varlen path as transformers' ``_flash_attention_forward`` drives it;
segments come from the first of these that applies:

    1. a 2-D padding mask (padded batch)       each row's unpadded tokens are one segment
    2. ``cu_seq_lens_q`` / ``cu_seq_lens_k``   ms-swift's packing collator passes them
    3. ``position_ids`` of a single row         a segment starts wherever they equal their minimum
    4. nothing                                  one segment per batch row

Causal unless the caller says ``is_causal=False`` or the module has ``is_causal = False``
(Qwen3-VL's vision blocks: one call per image, non-causal); a query block shorter than its key
block is aligned bottom-right, as flash-attn does. Boundaries that do not end at the call's token
count are refused, causal or not: transformers 5.19 keeps the text row's ``cu_seq_lens`` out of the
vision tower (``accepts_precomputed_kwargs`` on every family's ``get_image_features`` drops them),
so a vision call only gets its own. Grouped-query heads, the module's ``scaling`` and dropout (only
while ``module.training``, per segment, sdpa's ``dropout_p``) are honoured. The output has
sdpa_attention_forward's layout: (batch, seq, heads, head_dim), no attention weights.

Kernel (:func:`choose_kernel`): CUDA + fp16/bf16 + no dropout -> ``torch.nn.attention.varlen``'s
``varlen_attn``; everywhere else ``scaled_dot_product_attention`` on each segment alone.

>>> choose_kernel("cuda", torch.bfloat16, dropout=0.0, head_dim=128, varlen_available=True)
'varlen_attn'
>>> choose_kernel("cpu", torch.float32, dropout=0.0, head_dim=128, varlen_available=True)
'sdpa_per_segment'
>>> find_segments(1, 12, 12, position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])).cu_q
[0, 5, 8, 12]

Use: call :func:`register` before the model is loaded (transformers rejects unknown names at
load), then load with ``attn_implementation=ATTN_IMPL`` (ms-swift: ``--attn_impl swiftpack_varlen``).
Importing this module registers nothing.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from swift_plugins.names import VARLEN_ATTENTION

__all__ = ["ATTN_IMPL", "KERNEL_SDPA", "KERNEL_VARLEN", "Segments", "VarlenCall", "choose_kernel", "find_segments",
           "register", "varlen_attention_forward", "varlen_attention_mask", "varlen_call"]

ATTN_IMPL = VARLEN_ATTENTION
KERNEL_VARLEN = "varlen_attn"
KERNEL_SDPA = "sdpa_per_segment"
# Flash kernels in torch take fp16/bf16 and head dims up to 256 in multiples of 8.
_VARLEN_DTYPES = (torch.float16, torch.bfloat16)


def choose_kernel(device_type: str, dtype: torch.dtype, *, dropout: float, head_dim: int,
                  varlen_available: bool) -> str:
    """``KERNEL_VARLEN`` where torch's flash varlen kernel runs (it has no dropout), else ``KERNEL_SDPA``."""
    if (device_type == "cuda" and dtype in _VARLEN_DTYPES and dropout == 0.0 and head_dim <= 256
            and head_dim % 8 == 0 and varlen_available):
        return KERNEL_VARLEN
    return KERNEL_SDPA


@dataclass(frozen=True)
class VarlenCall:
    """How to call this torch's ``varlen_attn``: keyword arguments, and what to do around the call."""
    kwargs: Dict[str, Any]
    repeat_kv: bool       # the signature has no enable_gqa: give it as many kv heads as q heads
    prescale: bool        # the signature has no scale: multiply q by scale * sqrt(head_dim) first


def varlen_call(params, *, causal: bool, scale: float, gqa: bool) -> VarlenCall:
    """Map (causal, scale, gqa) onto a ``varlen_attn`` signature's parameter names.

    Early releases took ``is_causal=True``; later ones (2.13 here) take ``window_size=(-1, 0)``.

    >>> varlen_call({"window_size", "scale", "enable_gqa"}, causal=True, scale=0.125, gqa=True).kwargs
    {'window_size': (-1, 0), 'scale': 0.125, 'enable_gqa': True}
    >>> varlen_call({"is_causal"}, causal=True, scale=0.125, gqa=True)
    VarlenCall(kwargs={'is_causal': True}, repeat_kv=True, prescale=True)
    """
    params = set(params)
    kwargs: Dict[str, Any] = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)  # a tuple: varlen_attn compares with (-1, 0)
    elif "is_causal" in params:
        kwargs["is_causal"] = causal
    else:
        raise RuntimeError(f"varlen_attn takes neither window_size nor is_causal (parameters: {sorted(params)})")
    prescale = "scale" not in params
    if not prescale:
        kwargs["scale"] = scale
    repeat = gqa and "enable_gqa" not in params
    if gqa and not repeat:
        kwargs["enable_gqa"] = True
    return VarlenCall(kwargs, repeat, prescale)


@functools.lru_cache(maxsize=None)
def _varlen_fn() -> Optional[Callable]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


@functools.lru_cache(maxsize=None)
def _varlen_params() -> frozenset:
    return frozenset(inspect.signature(_varlen_fn()).parameters)


@dataclass(frozen=True)
class Segments:
    """Segment boundaries over the flattened (batch * seq) tokens, or over the gathered unpadded ones.

    ``cu_q[i]:cu_q[i+1]`` attends to ``cu_k[i]:cu_k[i+1]``. ``index_q`` / ``index_k`` (padded
    batches only) pick the unpadded tokens out of the flattened row before the segments apply.
    """
    cu_q: List[int]
    cu_k: List[int]
    source: str                                  # padding_mask | cu_seq_lens | position_ids | rows
    index_q: Optional[torch.Tensor] = None
    index_k: Optional[torch.Tensor] = None
    cu_q_tensor: Optional[torch.Tensor] = None   # the caller's cu_seq_lens, reused by the CUDA kernel
    cu_k_tensor: Optional[torch.Tensor] = None


def _cumsum(counts) -> List[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + int(c))
    return out


def _check_cu(name: str, cu: List[int], total: int) -> None:
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != total or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{name} must rise from 0 to the {total} tokens of the row (got {cu[:8]}"
                         f"{'...' if len(cu) > 8 else ''}, last {cu[-1] if cu else None}); pass the boundaries of "
                         "this row's samples")


def find_segments(batch: int, len_q: int, len_k: int, attention_mask: Optional[torch.Tensor] = None,
                  cu_seq_lens_q: Optional[torch.Tensor] = None, cu_seq_lens_k: Optional[torch.Tensor] = None,
                  position_ids: Optional[torch.Tensor] = None) -> Segments:
    """Where each sample starts (module docstring, steps 1-4); raises on a dense mask or bad boundaries."""
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise ValueError(f"{ATTN_IMPL} takes a 2-D padding mask, got shape {tuple(attention_mask.shape)}: a dense "
                             f"mask means the mask function of {ATTN_IMPL} was not registered (call register())")
        mask_k = attention_mask[:, -len_k:].bool()
        if len_q == len_k:
            mask_q = mask_k
        elif len_q == 1:  # decoding: every row's one new token is a query
            mask_q = torch.ones(batch, 1, dtype=torch.bool, device=mask_k.device)
        else:
            mask_q = attention_mask[:, -len_q:].bool()
        index_k = mask_k.reshape(-1).nonzero().squeeze(1)
        index_q = index_k if mask_q is mask_k else mask_q.reshape(-1).nonzero().squeeze(1)
        return Segments(_cumsum(mask_q.sum(1).tolist()), _cumsum(mask_k.sum(1).tolist()), "padding_mask",
                        index_q.to(mask_k.device), index_k.to(mask_k.device))
    if cu_seq_lens_q is not None or cu_seq_lens_k is not None:
        cu_q_t = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        cu_k_t = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        cu_q, cu_k = [int(x) for x in cu_q_t.tolist()], [int(x) for x in cu_k_t.tolist()]
        _check_cu("cu_seq_lens_q", cu_q, batch * len_q)
        _check_cu("cu_seq_lens_k", cu_k, batch * len_k)
        if len(cu_q) != len(cu_k):
            raise ValueError(f"cu_seq_lens_q has {len(cu_q) - 1} segments, cu_seq_lens_k {len(cu_k) - 1}")
        return Segments(cu_q, cu_k, "cu_seq_lens", cu_q_tensor=cu_q_t, cu_k_tensor=cu_k_t)
    if position_ids is not None and batch == 1 and len_q == len_k:
        if position_ids.numel() != len_q or position_ids.ndim > 2:
            raise ValueError(f"position_ids of shape {tuple(position_ids.shape)} do not give one position per token "
                             f"of a {len_q}-token row; pass the text positions (batch, seq) or cu_seq_lens")
        pos = position_ids.reshape(-1)
        starts = (pos == pos.min()).nonzero().squeeze(1).tolist()
        if starts[0] == 0 and len(starts) > 1:
            cu = [int(s) for s in starts] + [len_q]
            return Segments(cu, cu, "position_ids")
    return Segments([i * len_q for i in range(batch + 1)], [i * len_k for i in range(batch + 1)], "rows")


def _sdpa_per_segment(q, k, v, seg: Segments, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    """(1, H, T, D) -> (1, Hq, T, Dv): each segment through sdpa alone, GQA as transformers' sdpa path does it."""
    gqa = q.shape[1] != k.shape[1]
    pieces = []
    for qs, qe, ks, ke in zip(seg.cu_q, seg.cu_q[1:], seg.cu_k, seg.cu_k[1:]):
        if qe == qs:
            continue
        if ke == ks:  # no keys: flash-attn writes zeros
            pieces.append(q.new_zeros(1, q.shape[1], qe - qs, v.shape[3]))
            continue
        mask, seg_causal = None, causal and qe - qs > 1
        if seg_causal and qe - qs != ke - ks:
            from torch.nn.attention.bias import causal_lower_right
            mask, seg_causal = causal_lower_right(qe - qs, ke - ks), False
        pieces.append(F.scaled_dot_product_attention(q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke], attn_mask=mask,
                                                     dropout_p=dropout, is_causal=seg_causal, scale=scale,
                                                     enable_gqa=gqa))
    return torch.cat(pieces, dim=2) if pieces else q.new_zeros(1, q.shape[1], 0, v.shape[3])


def _varlen_kernel(q, k, v, seg: Segments, causal: bool, scale: float, kernel: Optional[Callable] = None):
    """(T, H, D) tokens -> (T, H, Dv) through torch's flash varlen kernel (or ``kernel``, same signature)."""
    params = _varlen_params() if kernel is None else frozenset(inspect.signature(kernel).parameters)
    call = varlen_call(params, causal=causal, scale=scale, gqa=q.shape[1] != k.shape[1])
    if call.repeat_kv:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if call.prescale:
        q = q * (scale * q.shape[-1] ** 0.5)

    def device_cu(tensor, values):
        src = tensor if tensor is not None else torch.tensor(values)
        return src.to(device=q.device, dtype=torch.int32)

    cu_q, cu_k = device_cu(seg.cu_q_tensor, seg.cu_q), device_cu(seg.cu_k_tensor, seg.cu_k)
    max_q = max(b - a for a, b in zip(seg.cu_q, seg.cu_q[1:]))
    max_k = max(b - a for a, b in zip(seg.cu_k, seg.cu_k[1:]))
    kernel = kernel or _varlen_fn()
    return kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, max_q, max_k, **call.kwargs)


def varlen_attention_forward(module: Optional[torch.nn.Module], query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                             scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                             cu_seq_lens_q: Optional[torch.Tensor] = None,
                             cu_seq_lens_k: Optional[torch.Tensor] = None, max_length_q: Optional[int] = None,
                             max_length_k: Optional[int] = None,
                             position_ids: Optional[torch.Tensor] = None, sliding_window: Optional[int] = None,
                             softcap: Optional[float] = None, **kwargs) -> Tuple[torch.Tensor, None]:
    """transformers attention function: q (B, Hq, Lq, D), k / v (B, Hk, Lk, D) -> ((B, Lq, Hq, Dv), None).

    ``max_length_q/k`` are accepted and not needed (the maxima come from the boundaries).
    """
    if sliding_window is not None or softcap is not None:
        raise NotImplementedError(f"{ATTN_IMPL} implements neither sliding windows nor softcapping")
    batch, heads_q, len_q, head_dim = query.shape
    heads_k, len_k = key.shape[1], key.shape[2]
    if heads_q % heads_k:
        raise ValueError(f"{heads_q} query heads are not a multiple of {heads_k} key/value heads")
    requested_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = requested_causal and len_q > 1  # one query attends to every key (flash-attn: bottom-right)
    dropout = float(dropout) if module is not None and module.training else 0.0
    scale = float(scaling) if scaling is not None else head_dim ** -0.5
    seg = find_segments(batch, len_q, len_k, attention_mask, cu_seq_lens_q, cu_seq_lens_k, position_ids)

    kernel = choose_kernel(query.device.type, query.dtype, dropout=dropout, head_dim=head_dim,
                           varlen_available=_varlen_fn() is not None)
    if kernel == KERNEL_SDPA and batch == 1 and seg.index_q is None:
        # one row: slice the (1, H, L, D) tensors per segment, no copies (what sdpa_attention_forward gets)
        out = _sdpa_per_segment(query, key, value, seg, causal, scale, dropout)[0].transpose(0, 1)
        return out.reshape(batch, len_q, heads_q, -1).contiguous(), None
    # token-major (T, H, D), the layout of varlen kernels; the batch rows are concatenated
    q = query.transpose(1, 2).reshape(batch * len_q, heads_q, head_dim)
    k = key.transpose(1, 2).reshape(batch * len_k, heads_k, head_dim)
    v = value.transpose(1, 2).reshape(batch * len_k, heads_k, value.shape[-1])
    if seg.index_q is not None:
        q, k, v = q.index_select(0, seg.index_q), k.index_select(0, seg.index_k), v.index_select(0, seg.index_k)
    if kernel == KERNEL_VARLEN:
        out = _varlen_kernel(q, k, v, seg, causal, scale)
    else:
        heads_first = [t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)]
        out = _sdpa_per_segment(*heads_first, seg, causal, scale, dropout)[0].transpose(0, 1)
    if seg.index_q is not None:  # padding positions get zeros, as flash-attn's pad_input writes
        out = out.new_zeros(batch * len_q, heads_q, out.shape[-1]).index_copy(0, seg.index_q, out)
    return out.reshape(batch, len_q, heads_q, -1).contiguous(), None


def varlen_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                          mask_function: Optional[Callable] = None, attention_mask: Optional[torch.Tensor] = None,
                          **kwargs) -> Optional[torch.Tensor]:
    """transformers mask function: the 2-D padding mask when a row is padded, else None; never an L x L mask.

    ``mask_function`` (the causal / packed-sequence pattern) is never evaluated: the attention
    function gets the same boundaries from ``cu_seq_lens`` or ``position_ids``.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


def register() -> None:
    """Register ``swiftpack_varlen`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPL, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPL, varlen_attention_mask)
