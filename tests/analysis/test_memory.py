"""swift_plugins.analysis.memory: parameter counts, the step estimate and its table, exactly, on hand-made shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from swift_plugins.analysis.memory import GIB, LOSS_CHUNK_TOKENS, OVERHEAD_BYTES, MemorySetup, ModelShape, \
    estimate_step_memory, logits_bytes, memory_table, setup_dict

# h 4, i 8, 2 layers, 2 heads of 2 (q 4 wide), 1 kv head (k / v 2 wide), vocab 10, 1,100 parameters
SMALL = ModelShape(hidden=4, intermediate=8, layers=2, heads=2, kv_heads=1, head_dim=2, vocab=10, vision_params=100,
                   llm_params=1000)
TWO_31 = 2 * GIB  # the fixed overhead, 2,147,483,648 bytes


def test_lora_params_count_every_linear_layer_of_the_language_model():
    # (d_in, d_out): q (4, 4), k (4, 2), v (4, 2), o (4, 4), gate (4, 8), up (4, 8), down (8, 4)
    # rank 2: 2 * (8 + 6 + 6 + 8 + 12 + 12 + 12) = 128 per layer, 2 layers -> 256
    assert SMALL.lora_params(2) == 256
    # DoRA adds the d_out magnitudes: 4 + 2 + 2 + 4 + 8 + 8 + 4 = 32 per layer -> 2 * (128 + 32) = 320
    assert SMALL.lora_params(2, dora=True) == 320
    assert SMALL.lora_params(1) == 128 and SMALL.total_params == 1100


def test_lora_zero2_with_checkpointing_spelled_out():
    parts = estimate_step_memory(SMALL, 8, MemorySetup(tuner="lora", lora_rank=2, zero_stage=2,
                                                       gradient_checkpointing=True, world_size=4, fused_loss=False))
    # weights      1,100 params * 2 B (bf16, whole under ZeRO-2)                 = 2,200
    # gradients    256 LoRA params * 2 B / 4 ranks (ZeRO >= 2)                   =   128
    # optimizer    256 * 12 B (fp32 master 4 + Adam 8) / 4 ranks (ZeRO >= 1)     =   768
    # activations  2 layers * 8 tokens * 4 hidden * 2 B (one saved input each)   =   128
    #              + one layer recomputed: 8 * (16 * 4 + 6 * 8) * 2 = 8 * 224    = 1,792   -> 1,920
    # logits       8 tokens * 10 vocab * 10 B (full logits)                      =   800
    # overhead     2 GiB                                                         = 2,147,483,648
    assert parts == {"weights": 2200.0, "gradients": 128.0, "optimizer": 768.0, "activations": 1920.0,
                     "logits": 800.0, "overhead": float(TWO_31), "total": float(TWO_31 + 5816)}
    assert all(type(v) is float for v in parts.values())
    assert list(parts) == ["weights", "gradients", "optimizer", "activations", "logits", "overhead", "total"]


def test_full_zero3_without_checkpointing_spelled_out():
    parts = estimate_step_memory(SMALL, 8, MemorySetup(tuner="full", zero_stage=3, gradient_checkpointing=False,
                                                       world_size=4, fused_loss=False))
    # weights 1,100 * 2 / 4 = 550 (ZeRO-3 shards them); every parameter trains: gradients 1,100 * 2 / 4 = 550,
    # optimizer 1,100 * 12 / 4 = 3,300; activations, every layer kept: 2 * 8 * 224 = 3,584; logits 800
    assert parts == {"weights": 550.0, "gradients": 550.0, "optimizer": 3300.0, "activations": 3584.0,
                     "logits": 800.0, "overhead": float(TWO_31), "total": float(TWO_31 + 8784)}


def test_dora_zero1_shards_only_the_optimizer_state():
    parts = estimate_step_memory(SMALL, 8, MemorySetup(tuner="dora", lora_rank=2, zero_stage=1, world_size=2,
                                                       fused_loss=False))
    # 320 trainable: gradients 320 * 2 = 640 (whole under ZeRO-1), optimizer 320 * 12 / 2 = 1,920
    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (2200.0, 640.0, 1920.0)
    assert parts["total"] == float(TWO_31 + 2200 + 640 + 1920 + 1920 + 800)


def test_fused_loss_holds_one_chunk_of_logits_not_the_whole_row():
    # 8 tokens (< one chunk): 8 * 10 vocab * 6 B = 480 + the hidden-state gradient 8 * 4 hidden * 2 B = 64 -> 544
    lora = estimate_step_memory(SMALL, 8, MemorySetup(tuner="lora", lora_rank=2, zero_stage=2, world_size=4))
    assert lora["logits"] == 544.0 and lora["total"] == float(TWO_31 + 5816 - 800 + 544)
    # full tuning adds the fp32 lm_head gradient: 10 * 4 * 4 B = 160
    assert logits_bytes(SMALL, 8, MemorySetup(tuner="full"), fused=True) == 704.0
    # past one chunk only the hidden-state gradient grows: 20,000 tokens -> 1,024 * 10 * 6 + 20,000 * 8
    assert LOSS_CHUNK_TOKENS == 1024
    assert logits_bytes(SMALL, 20_000, MemorySetup(), fused=True) == 1024 * 60 + 160_000
    assert logits_bytes(SMALL, 20_000, MemorySetup(), fused=False) == 2_000_000
    # ZeRO-3 gathers lm_head for the loss (10 * 4 * 2 B = 80); full tuning adds the probe (80) to the gradient
    assert logits_bytes(SMALL, 8, MemorySetup(zero_stage=3), fused=True) == 544.0 + 80
    assert logits_bytes(SMALL, 8, MemorySetup(tuner="full", zero_stage=3), fused=True) == 704.0 + 160
    assert logits_bytes(SMALL, 8, MemorySetup(tuner="full", zero_stage=3), fused=False) == 800.0


@pytest.mark.parametrize("world_size", [0, 1])
def test_zero0_and_a_world_size_below_one_divide_nothing(world_size):
    parts = estimate_step_memory(SMALL, 8, MemorySetup(lora_rank=2, zero_stage=3, world_size=world_size))
    # ZeRO-3 on one rank (max(1, world_size)): nothing to shard
    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (2200.0, 512.0, 3072.0)
    zero0 = estimate_step_memory(SMALL, 8, MemorySetup(lora_rank=2, zero_stage=0, world_size=8))
    assert (zero0["weights"], zero0["gradients"], zero0["optimizer"]) == (2200.0, 512.0, 3072.0)


def test_memory_table_rounds_each_part_to_hundredths_of_a_gib():
    # 2^29 parameters (1 GiB of bf16 weights), vocab 2^20: logits of 1,024 tokens = 2^10 * 2^20 * 10 B = 10 GiB
    shape = ModelShape(hidden=1024, intermediate=4096, layers=3, heads=8, kv_heads=2, head_dim=128, vocab=2 ** 20,
                       vision_params=36_870_912, llm_params=500_000_000)
    setup = MemorySetup(tuner="full", zero_stage=0, gradient_checkpointing=False, world_size=1, fused_loss=False)
    rows = memory_table(shape, (1024, np.int64(2048)), setup)
    # fused: one chunk 1,024 * 2^20 * 6 B = 6 GiB + L * 1,024 * 2 B (2 / 4 MiB) + the lm_head grad 2^20 * 1,024 * 4 B
    # = 4 GiB -> 10.00 at both lengths (the chunk does not grow with L); total 20.2363 / 20.4727 GiB
    fused = {"logits_fused_gib": 10.0, "logits_full_gib": 10.0, "total_fused_gib": 20.24, "total_full_gib": 20.23}
    # gradients 2^29 * 2 B = 1 GiB, optimizer 2^29 * 12 B = 6 GiB; activations 3 * L * (16 * 1024 + 6 * 4096) * 2
    # = 3 * 1,024 * 81,920 B = 0.234375 GiB at L 1,024 (0.46875 at 2,048); total 20.234375 / 30.46875 GiB
    assert rows == [
        {"seq_len": 1024, "weights_gib": 1.0, "gradients_gib": 1.0, "optimizer_gib": 6.0, "activations_gib": 0.23,
         "logits_gib": 10.0, "overhead_gib": 2.0, "total_gib": 20.23, **fused},
        {"seq_len": 2048, "weights_gib": 1.0, "gradients_gib": 1.0, "optimizer_gib": 6.0, "activations_gib": 0.47,
         "logits_gib": 20.0, "overhead_gib": 2.0, "total_gib": 30.47, "logits_fused_gib": 10.0, "logits_full_gib": 20.0,
         "total_fused_gib": 20.47, "total_full_gib": 30.47},
    ]
    assert type(rows[1]["seq_len"]) is int and OVERHEAD_BYTES == 2 * 1024 ** 3
    assert memory_table(shape, [], setup) == []


def test_setup_dict_is_every_field():
    assert setup_dict(MemorySetup()) == {"tuner": "lora", "lora_rank": 16, "zero_stage": 2,
                                         "gradient_checkpointing": True, "world_size": 4, "fused_loss": True}
    custom = MemorySetup(tuner="full", lora_rank=8, zero_stage=3, gradient_checkpointing=False, world_size=2,
                         fused_loss=False)
    assert setup_dict(custom) == {"tuner": "full", "lora_rank": 8, "zero_stage": 3, "gradient_checkpointing": False,
                                  "world_size": 2, "fused_loss": False}
    assert MemorySetup(**setup_dict(custom)) == custom


def _write_config(folder, cfg):
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_from_config_reads_a_qwen3_vl_config(tmp_path):
    text = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 32}
    vision = {"hidden_size": 4, "intermediate_size": 8, "depth": 2, "out_hidden_size": 8, "patch_size": 2,
              "temporal_patch_size": 2, "in_channels": 3, "spatial_merge_size": 2, "num_position_embeddings": 4,
              "deepstack_visual_indexes": [0]}
    shape = ModelShape.from_config(_write_config(tmp_path, {"model_type": "qwen3_vl", "text_config": text,
                                                            "vision_config": vision, "tie_word_embeddings": False}))
    # head_dim 8 // 2 = 4; per layer: q+k+v 8 * 4 * (2 + 2 * 1) = 128, o 2 * 4 * 8 = 64, q/k norms 2 * 4 = 8,
    # mlp 3 * 8 * 16 = 384, norms 2 * 8 = 16 -> 600; llm 2 * 600 + embeddings and head 32 * 8 * 2 + final norm 8 = 1,720
    # vision (w 4): patch embedding 3 * 2 * 2 * 2 * 4 + bias 4 + positions 4 * 4 = 116; a block: LayerNorms 2 * 8,
    # qkv + proj 4 * 16 + 16, MLP 2 * 4 * 8 + 8 + 4 -> 172, 2 blocks 344; merger over 4 patches (16 wide): norm 8 +
    # 16 * 16 + 16 + 16 * 8 + 8 = 416; one DeepStack merger, its norm over 16: 32 + 408 = 440 -> 1,316
    assert shape == ModelShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=32,
                               vision_params=1316, llm_params=1720)
    assert shape.total_params == 3036


def test_from_config_of_a_qwen2_vl_config_with_top_level_text_sizes(tmp_path):
    cfg = {"model_type": "qwen2_vl", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "head_dim": 5, "vocab_size": 32, "tie_word_embeddings": True,
           "vision_config": {"embed_dim": 4, "hidden_size": 8, "mlp_ratio": 2, "depth": 1, "spatial_patch_size": 2,
                             "in_chans": 3}}
    shape = ModelShape.from_config(str(_write_config(tmp_path, cfg)))
    # kv heads default to the heads (2); q+k+v 8 * 5 * 6 = 240 + their biases 30, o 2 * 5 * 8 = 80, mlp 384,
    # norms 16 -> 750; llm 750 + tied embeddings 32 * 8 + 8 = 1,014
    # vision: embed_dim 4 wide, MLP 4 * 2 = 8, merger out = vision hidden_size 8; patch embedding 24 * 4 = 96 (no
    # bias); a block 172 (as Qwen3-VL's); merger 416 -> 684
    assert (shape.kv_heads, shape.head_dim, shape.llm_params, shape.vision_params) == (2, 5, 1014, 684)


def test_from_config_of_a_qwen2_5_vl_vision_tower(tmp_path):
    vision = {"hidden_size": 4, "intermediate_size": 8, "out_hidden_size": 8, "depth": 1, "patch_size": 2}
    text = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 32}
    shape = ModelShape.from_config(_write_config(tmp_path, {"model_type": "qwen2_5_vl", "text_config": text,
                                                            "vision_config": vision}))
    # RMSNorms (4 each) and a gated MLP with biases: block 2 * 4 + 80 + 3 * 4 * 8 + 2 * 8 + 4 = 204; patch
    # embedding 96; merger RMSNorm 4 + 408 -> 96 + 204 + 412 = 712
    assert shape.vision_params == 712 and shape.moe_layers == 0


def test_moe_weights_count_every_expert_and_activations_follow_the_routed_ones(tmp_path):
    text = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 6, "decoder_sparse_step": 1, "mlp_only_layers": [1]}
    shape = ModelShape.from_config(_write_config(tmp_path, {"model_type": "qwen3_vl_moe", "text_config": text,
                                                            "tie_word_embeddings": True}))
    # layer 0 is MoE, layer 1 dense (mlp_only_layers); attention + norms 216 per layer -> 432; dense MLP 384;
    # 4 experts of 3 * 8 * 6 = 144 + router 4 * 8 -> 608; + tied embeddings 256 + final norm 8 -> 1,688
    assert (shape.moe_layers, shape.experts, shape.active_intermediate, shape.llm_params) == (1, 4, 12, 1688)
    # LoRA rank 2: attention 2 * (16 + 12 + 12 + 16) = 112 per layer, the dense MLP 2 * 72 = 144 more
    assert shape.lora_params(2) == 112 + 256
    # activations of 8 tokens: dense layer (16 * 8 + 6 * 16) * 2 = 448 B per token, MoE layer (128 + 6 * 12) * 2 = 400
    full = estimate_step_memory(shape, 8, MemorySetup(gradient_checkpointing=False))
    ckpt = estimate_step_memory(shape, 8, MemorySetup(gradient_checkpointing=True))
    assert full["activations"] == 8 * (448 + 400)
    assert ckpt["activations"] == 2 * 8 * 8 * 2 + 8 * 448  # saved inputs + the largest layer recomputed


def test_an_unsupported_model_type_is_a_user_error(tmp_path):
    from swift_plugins.errors import UserError

    with pytest.raises(UserError, match=r"config.json: model_type: 'llava' is not supported \(supported: qwen2_vl, "):
        ModelShape.from_config(_write_config(tmp_path, {"model_type": "llava"}))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"])
def test_parameter_counts_equal_each_tiny_checkpoint(tiny_family_dir, model_type):
    """The family's keys give exactly the tensors the checkpoint stores (tied lm_head stored once)."""
    from safetensors import safe_open

    model = tiny_family_dir(model_type)
    counts = {"vision": 0, "llm": 0}
    with safe_open(str(model / "model.safetensors"), "np") as f:
        for name in f.keys():
            counts["vision" if ".visual." in name else "llm"] += int(np.prod(f.get_slice(name).get_shape()))
    shape = ModelShape.from_config(model)
    assert (shape.vision_params, shape.llm_params) == (counts["vision"], counts["llm"])
    assert (shape.moe_layers, shape.experts, shape.experts_per_token) == ((2, 4, 2) if model_type.endswith("moe")
                                                                          else (0, 0, 0))


@pytest.mark.parametrize("model_type", ["qwen3_5", "qwen3_5_moe"])
def test_hybrid_qwen3_5_counts_equal_the_real_model(tiny_family_dir, model_type):
    """Parameters and LoRA / DoRA counts of the tiny Qwen3.5 checkpoints equal what transformers builds from them."""
    import torch
    from transformers import AutoConfig, Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

    folder = tiny_family_dir(model_type)
    shape = ModelShape.from_config(folder)
    cls = Qwen3_5MoeForConditionalGeneration if model_type.endswith("moe") else Qwen3_5ForConditionalGeneration
    model = cls(AutoConfig.from_pretrained(folder))
    vision = sum(p.numel() for p in model.model.visual.parameters())
    llm = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("model.visual"))
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and not n.startswith(("model.visual", "lm_head"))]
    assert (shape.llm_params, shape.vision_params) == (llm, vision)
    assert shape.lora_params(2) == sum(2 * (m.in_features + m.out_features) for m in linear)
    assert shape.lora_params(2, dora=True) == shape.lora_params(2) + sum(m.out_features for m in linear)
    assert (shape.moe_layers, shape.experts) == ((4, 4) if model_type.endswith("moe") else (0, 0))


def test_the_recommendation_takes_a_longer_pack_that_only_the_fused_loss_fits():
    """Qwen3-VL-8B's text shape, LoRA, ZeRO-2 on 4 GPUs of 80 GiB; only 32,000-token packs train every record."""
    from swift_plugins.analysis.simulate import recommend

    qwen8b = ModelShape(hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936,
                        vision_params=576_000_000, llm_params=8_190_000_000)
    lengths = (8000, 16000, 32000)
    sims = [{"global_max_length": L, "strategy": "ffd", "buffer_size": None, "overlong": "split",
             "records_lost": 0 if L == 32000 else 3, "records_split": 0, "samples_dropped": 0, "num_packs": 10,
             "efficiency": 0.9, "avg_samples_per_pack": 5.0, "tokens_dropped": 0, "steps_per_epoch": 1,
             "optimizer_steps_per_epoch": 1, "total_optimizer_steps": 1, "samples_per_step": 40.0} for L in lengths]
    picked = {}
    for fused in (True, False):
        rows = {r["seq_len"]: r for r in memory_table(qwen8b, lengths, MemorySetup(fused_loss=fused))}
        # full logits at 32,000 tokens: 32,000 * 151,936 * 10 B = 45.3 GiB of logits alone
        assert rows[32000]["logits_full_gib"] == 45.28 and rows[32000]["logits_fused_gib"] == 1.11
        r = recommend(sims, {"num_samples": 100}, memory_rows=rows, gpu_memory_gib=80, memory_headroom=0.1,
                      max_drop_fraction=0.0, effective_batch_size=8, world_size=4, per_device_train_batch_size=1,
                      padding_batch_size=2, num_train_epochs=1, overlong="split")
        picked[fused] = (r["recommended"]["global_max_length"], r["why"]["estimated_memory_gib"])
    assert picked[True][0] == 32000 and picked[True][1] <= 72  # fits 80 GiB less 10% headroom
    assert picked[False][0] != 32000  # with full logits it does not fit: a shorter, lossy length is taken
