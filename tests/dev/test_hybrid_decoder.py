"""The tiny hybrid decoder: deterministic per seed, Qwen3.5's layer pattern, dense and MoE."""
from __future__ import annotations

import pytest
import torch

from swift_plugins.dev.hybrid_decoder import LAYER_TYPES, build


@pytest.mark.parametrize("moe", [False, True])
def test_same_seed_same_weights_other_seed_differs(moe):
    a, b, c = build(moe=moe, seed=0), build(moe=moe, seed=0), build(moe=moe, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    layers = a.model.layers
    assert [hasattr(layer, "linear_attn") for layer in layers] == [t == "linear_attention" for t in LAYER_TYPES]
    assert type(layers[0].linear_attn).__name__ == ("Qwen3_5MoeGatedDeltaNet" if moe else "Qwen3_5GatedDeltaNet")
    assert a.config.hidden_size == 64 and hasattr(layers[0].mlp, "experts") == moe
