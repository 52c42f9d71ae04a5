"""Bench-only ms-swift plugin: let stock `swift sft --packing true` start with ``--attn_impl sdpa``.

Used ONLY by ``bench/bench_packed_training.py`` to time ms-swift's own packing path (encode every
row up front, then pack) on a CPU machine, where flash-attn cannot be installed. Passed as
``swift sft ... --external_plugins bench/swiftpack_bench_allow_cpu_packing.py``.

ms-swift 4.6 refuses packing / padding_free unless ``attn_impl`` is a flash-attention variant
(``SftArguments._check_padding_free``). This plugin replaces that check with the part of it that
has an effect (``packing`` turns ``padding_free`` on) and drops the refusal.

The refusal is right for training: with stock sdpa ms-swift's collator passes only the 3 mrope
rows of ``position_ids``, so packed samples ATTEND TO EACH OTHER (measured: max logit diff 0.76
against separate runs; docs/ms-swift-4.6.md). The benchmark only
times preprocessing and the first optimizer step, where the amount of work does not depend on the
mask; never use this plugin to train a model.
"""
from swift.arguments import SftArguments


def _check_padding_free_bench_only(self) -> None:
    if self.packing:
        self.padding_free = True


SftArguments._check_padding_free = _check_padding_free_bench_only
