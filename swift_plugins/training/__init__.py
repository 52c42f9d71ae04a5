"""Training inside ms-swift: the one package that imports torch, transformers and ms-swift.

    template.py        <family>_packing: packed rows with 4-row positions, no KV cache (isolation)
    attention.py       swiftpack_varlen: attention per packed sample, no L x L mask
    linear_attention.py  linear-attention (Gated DeltaNet) layers restarted at each packed sample;
                       the packing template installs it when training starts (same log line)
    datasets.py        --dataset PATH.jsonl read by our validator and to_swift_row
    packed_dataset.py  the plan as a dataset: lazy per-pack encoding in the dealt order
    callbacks.py       save delay, data order, packing metrics
    optimizer.py       swiftpack_multimodal: LLM / ViT / aligner learning rates
    hooks.py           what our runs change in ms-swift's SFT pipeline (datasets, train callbacks)
    linear_ce.py       lm_head + cross-entropy a chunk of tokens at a time (pure PyTorch)
    fused_loss.py      swiftpack_fused_ce: that loss inside ms-swift, no (L, vocab) logits
    pipeline.py        SwiftpackSft: ms-swift's SFT pipeline holding our typed options
    plain_swift.py     the one patch: plain `swift sft` through the same hooks, for one run
    calibration.py     template facts the pure length counter needs (used by the analysis too)

Modules only declare; :func:`register_all` (called by ``swift_plugins.register_plugins``)
registers everything, idempotently. Submodules import ms-swift, so import them when needed.
"""
from __future__ import annotations

__all__ = ["register_all"]


def register_all() -> None:
    """Register the template, optimizer, callbacks, attention and fused loss (idempotent). A run's JSONL
    files are registered by the run (``pipeline.register_runtime``), with its conversation options."""
    from swift_plugins.training import attention, callbacks, fused_loss, optimizer, template

    attention.register()
    template.register()
    optimizer.register()
    callbacks.register()
    fused_loss.register()
