"""Per-family config, processors and chat template of the tiny checkpoints (pure data)."""
from __future__ import annotations

import jinja2
import pytest

from swift_plugins.dev import tiny_families
from swift_plugins.dev.tiny_families import FAMILIES

# model_type -> (patch size, min pixels, max pixels): the published preprocessor configs.
REAL_IMAGE_RULES = {"qwen2_vl": (14, 3136, 12845056), "qwen2_5_vl": (14, 3136, 12845056),
                    "qwen3_vl": (16, 65536, 16777216), "qwen3_vl_moe": (16, 65536, 16777216),
                    "qwen3_5": (16, 65536, 16777216), "qwen3_5_moe": (16, 65536, 16777216)}
# model_type -> (image, video, vision start, vision end, vocabulary rows, eos <|im_end|>)
REAL_IDS = {**{t: (151655, 151656, 151652, 151653, 151936, 151645)
               for t in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")},
            **{t: (248056, 248057, 248053, 248054, 248320, 248046) for t in ("qwen3_5", "qwen3_5_moe")}}


@pytest.mark.parametrize("model_type", list(REAL_IMAGE_RULES))
def test_image_processor_has_the_family_patch_merge_and_pixel_limits(model_type):
    proc = tiny_families.image_processor(FAMILIES[model_type])
    patch, low, high = REAL_IMAGE_RULES[model_type]
    assert (proc["patch_size"], proc["merge_size"], proc["temporal_patch_size"]) == (patch, 2, 2)
    assert (proc["min_pixels"], proc["max_pixels"]) == (low, high)
    assert proc["size"] == {"shortest_edge": low, "longest_edge": high}
    video = tiny_families.video_processor(FAMILIES[model_type])
    assert (video["patch_size"], video["merge_size"]) == (patch, 2)
    cfg = tiny_families.model_config(FAMILIES[model_type])
    assert (cfg["vision_config"]["patch_size"], cfg["vision_config"]["spatial_merge_size"]) == (patch, 2)


def test_every_family_is_listed():
    assert set(REAL_IMAGE_RULES) == set(REAL_IDS) == set(FAMILIES)


@pytest.mark.parametrize("model_type", list(REAL_IDS))
def test_config_ids_and_vocab(model_type):
    cfg = tiny_families.model_config(FAMILIES[model_type])
    assert cfg["model_type"] == model_type and cfg["architectures"] == [FAMILIES[model_type].architecture]
    assert (cfg["image_token_id"], cfg["video_token_id"], cfg["vision_start_token_id"], cfg["vision_end_token_id"],
            cfg["text_config"]["vocab_size"], cfg["text_config"]["eos_token_id"]) == REAL_IDS[model_type]
    assert cfg["text_config"]["model_type"] == model_type + "_text"
    assert cfg["vision_config"]["model_type"] == model_type + "_vision"


@pytest.mark.parametrize("model_type", ["qwen3_5", "qwen3_5_moe"])
def test_qwen3_5_text_is_hybrid_with_a_quarter_rotary_full_layer(model_type):
    text = tiny_families.model_config(FAMILIES[model_type])["text_config"]
    assert text["layer_types"] == ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
    rope = text["rope_parameters"]
    rotary_pairs = int(text["head_dim"] * rope["partial_rotary_factor"]) // 2
    assert sum(rope["mrope_section"]) == rotary_pairs == 4
    assert FAMILIES[model_type].tokenizer_class == "Qwen3_5Tokenizer"


def test_qwen2_5_vl_vision_has_windows_and_full_attention_blocks():
    vision = tiny_families.model_config(FAMILIES["qwen2_5_vl"])["vision_config"]
    assert vision["fullatt_block_indexes"] == [1] and vision["depth"] == 2
    assert vision["window_size"] // vision["spatial_merge_size"] // vision["patch_size"] == 2  # merged tokens


def _render(model_type, messages, **kw):
    env = jinja2.Environment()
    return env.from_string(tiny_families.chat_template(FAMILIES[model_type])).render(messages=messages, **kw)


def test_chat_templates_insert_the_default_system_prompt_only_for_qwen2_families():
    msgs = [{"role": "user", "content": "hi"}]
    assert _render("qwen2_vl", msgs, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert _render("qwen2_5_vl", [{"role": "system", "content": "S"}] + msgs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    assert _render("qwen3_vl", msgs) == "<|im_start|>user\nhi<|im_end|>\n"


def test_qwen3_5_chat_template_trims_and_opens_the_thinking_block():
    msgs = [{"role": "user", "content": "  hi \n"}]
    assert _render("qwen3_5", msgs, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert _render("qwen3_5_moe", msgs, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_generation_config_uses_the_family_ids():
    assert tiny_families.generation_config(FAMILIES["qwen3_vl"]) == {
        "bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": False}
