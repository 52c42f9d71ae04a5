"""swift_plugins: exact-length analysis and isolated, planned sequence packing for Qwen-VL with ms-swift.

Supported model families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE): ``families.py``.

The data's path, one folder per stage::

    data/      records, validator, record -> conversation, dense-scene split, LVIS converter
    lengths/   exact text + image token counts without decoding images, cached
    packing/   plan_packs, rank deal, records -> samples -> plan
    training/  everything inside ms-swift / transformers / torch (the only package importing them)
    config/    the typed schema, resolution, CLI, export
    analysis/  token analysis, simulations, recommendation, report + summary, memory, migration
    dev/       tiny model, demo, doc generators (developer tooling)

``register_plugins()`` is the one registration entry with ms-swift and transformers.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["register_plugins"]


def register_plugins(sidecar: Optional[str] = None) -> None:
    """Register everything this project adds to ms-swift and transformers; idempotent.

    The packing template of every family (``qwen2_vl_packing``, ``qwen2_5_vl_packing``,
    ``qwen3_vl_packing``, ``qwen3_5_packing``; they also isolate linear-attention layers when training
    starts, ``training/linear_attention.py``), optimizer ``swiftpack_multimodal``, callbacks
    ``swiftpack_*``, attention ``swiftpack_varlen``. With ``sidecar`` (the JSON ``--export_flat``
    writes) also that run's options: its JSONL datasets, and the next ``swift sft`` run of this
    process routed through our hooks (``swift_plugins.training.plain_swift``, undone when its
    training ends).
    """
    from swift_plugins.training import register_all

    register_all()
    if sidecar is not None:
        from swift_plugins.training.pipeline import register_sidecar

        register_sidecar(sidecar)
