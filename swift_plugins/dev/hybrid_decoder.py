"""A tiny random text-only Qwen3.5 decoder (dense or MoE) for the linear-attention tests and bench.

Hidden 64, four layers ``linear, linear, linear, full`` (Qwen3.5's 3-in-4 pattern), fp32,
weights from ``torch.manual_seed(seed)``: the same seed gives the same model, byte for byte.

>>> model = build(moe=False, seed=0)
>>> model.config.layer_types, model.config._attn_implementation, model.training
(['linear_attention', 'linear_attention', 'linear_attention', 'full_attention'], 'sdpa', False)
"""
from __future__ import annotations

import torch

__all__ = ["LAYER_TYPES", "VOCAB", "build"]

LAYER_TYPES = ["linear_attention"] * 3 + ["full_attention"]
VOCAB = 512


def build(*, moe: bool = False, seed: int = 0, attn_impl: str = "sdpa") -> torch.nn.Module:
    """``Qwen3_5ForCausalLM`` (``moe``: ``Qwen3_5MoeForCausalLM``, 4 experts, top 2) in eval mode."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=len(LAYER_TYPES), num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                  linear_key_head_dim=16, linear_value_head_dim=16, layer_types=list(LAYER_TYPES), use_cache=False)
    if moe:
        config = Qwen3_5MoeTextConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                      shared_expert_intermediate_size=32)
    else:
        config = Qwen3_5TextConfig(**common, intermediate_size=128)
    config._attn_implementation = attn_impl
    torch.manual_seed(seed)
    model = (Qwen3_5MoeForCausalLM if moe else Qwen3_5ForCausalLM)(config)
    return model.float().eval()
