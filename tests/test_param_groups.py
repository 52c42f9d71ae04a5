"""swift_plugins.param_groups: exact LLM / ViT / aligner grouping and the no-decay rule on hand-written names."""
from __future__ import annotations

import pytest

from swift_plugins.param_groups import ParamGroup, group_parameters, is_no_decay, part_of

VISION, ALIGNER = ["model.visual"], ["model.visual.merger", "model.visual.deepstack_merger_list"]
LRS = dict(learning_rate=2e-4, vit_lr=1e-4, aligner_lr=4e-4, weight_decay=0.1)


def groups(params, **kwargs):
    return group_parameters(params, vision_prefixes=VISION, aligner_prefixes=ALIGNER, **{**LRS, **kwargs})


def test_dora_names_under_peft_are_grouped_exactly():
    p = "base_model.model."
    params = [
        (p + "model.visual.patch_embed.proj.base_layer.weight", False),
        (p + "model.visual.blocks.0.attn.qkv.lora_A.default.weight", True),
        (p + "model.visual.blocks.0.attn.qkv.lora_B.default.weight", True),
        (p + "model.visual.blocks.0.attn.qkv.lora_magnitude_vector.default.weight", True),
        (p + "model.visual.blocks.0.norm1.weight", False),
        (p + "model.visual.merger.linear_fc1.lora_A.default.weight", True),
        (p + "model.visual.deepstack_merger_list.1.linear_fc2.lora_B.default.weight", True),
        (p + "model.visual.deepstack_merger_list.1.linear_fc2.lora_magnitude_vector.default.weight", True),
        (p + "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight", True),
        (p + "model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight", True),
        (p + "model.language_model.layers.0.self_attn.q_proj.base_layer.weight", False),
        (p + "model.language_model.embed_tokens.weight", False),
    ]
    assert groups(params) == [
        ParamGroup("llm/decay", 2e-4, 0.1,
                   (p + "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight",)),
        ParamGroup("llm/no_decay", 2e-4, 0.0,
                   (p + "model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight",)),
        ParamGroup("vit/decay", 1e-4, 0.1, (p + "model.visual.blocks.0.attn.qkv.lora_A.default.weight",
                                            p + "model.visual.blocks.0.attn.qkv.lora_B.default.weight")),
        ParamGroup("vit/no_decay", 1e-4, 0.0,
                   (p + "model.visual.blocks.0.attn.qkv.lora_magnitude_vector.default.weight",)),
        ParamGroup("aligner/decay", 4e-4, 0.1,
                   (p + "model.visual.merger.linear_fc1.lora_A.default.weight",
                    p + "model.visual.deepstack_merger_list.1.linear_fc2.lora_B.default.weight")),
        ParamGroup("aligner/no_decay", 4e-4, 0.0,
                   (p + "model.visual.deepstack_merger_list.1.linear_fc2.lora_magnitude_vector.default.weight",)),
    ]


def test_full_tuning_with_frozen_vit_has_no_vit_group():
    params = [
        ("model.visual.blocks.0.attn.qkv.weight", False),
        ("model.visual.blocks.0.attn.qkv.bias", False),
        ("model.visual.merger.norm.weight", True),
        ("model.visual.merger.linear_fc1.weight", True),
        ("model.visual.merger.linear_fc1.bias", True),
        ("model.language_model.embed_tokens.weight", True),
        ("model.language_model.layers.0.input_layernorm.weight", True),
        ("model.language_model.layers.0.self_attn.k_norm.weight", True),
        ("model.language_model.layers.0.mlp.down_proj.weight", True),
        ("model.language_model.norm.weight", True),
        ("lm_head.weight", True),
    ]
    assert groups(params, vit_lr=None, aligner_lr=None) == [
        ParamGroup("llm/decay", 2e-4, 0.1, ("model.language_model.layers.0.mlp.down_proj.weight", "lm_head.weight")),
        ParamGroup("llm/no_decay", 2e-4, 0.0, (
            "model.language_model.embed_tokens.weight", "model.language_model.layers.0.input_layernorm.weight",
            "model.language_model.layers.0.self_attn.k_norm.weight", "model.language_model.norm.weight")),
        ParamGroup("aligner/decay", 2e-4, 0.1, ("model.visual.merger.linear_fc1.weight",)),
        ParamGroup("aligner/no_decay", 2e-4, 0.0, ("model.visual.merger.norm.weight",
                                                   "model.visual.merger.linear_fc1.bias")),
    ]
    assert groups([("model.visual.x.weight", False)]) == []


@pytest.mark.parametrize("name,expected", [
    ("model.visual.blocks.3.norm2.bias", True), ("model.visual.blocks.3.norm2.weight", True),
    ("model.language_model.layers.1.post_attention_layernorm.weight", True), ("transformer.ln_f.weight", True),
    ("model.visual.pos_embed.weight", True), ("model.visual.patch_embed.proj.weight", False),
    ("base_model.model.model.language_model.layers.0.mlp.up_proj.lora_magnitude_vector.default.weight", True),
    ("base_model.model.model.language_model.layers.0.mlp.up_proj.lora_B.default.weight", False),
    ("model.visual.merger.modules_to_save.default.norm.weight", True), ("lm_head.weight", False),
    ("model.visual.blocks.0.mlp.linear_fc1.weight", False),
])
def test_no_decay_rule(name, expected):
    assert is_no_decay(name) is expected


@pytest.mark.parametrize("name,expected", [
    ("model.visual", "vit"), ("model.visual.blocks.0.attn.qkv.weight", "vit"), ("model.visual2.x", "llm"),
    ("model.visual.merger.linear_fc1.weight", "aligner"), ("model.visual.mergerx.weight", "vit"),
    ("base_model.model.model.visual.deepstack_merger_list.0.norm.bias", "aligner"),
    ("base_model.model.lm_head.weight", "llm"),
])
def test_part_of(name, expected):
    assert part_of(name, VISION, ALIGNER) == expected
