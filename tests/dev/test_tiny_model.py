"""The tiny Qwen3-VL: deterministic bytes, Qwen-shaped tokenizer, loads in transformers and ms-swift."""
from __future__ import annotations

import filecmp
import json

import pytest

from swift_plugins.dev import tiny_model


def test_build_twice_gives_identical_files(tiny_model_dir, tmp_path):
    again = tiny_model.build(tmp_path / "again")
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names
    match, mismatch, errors = filecmp.cmpfiles(tiny_model_dir, again, names, shallow=False)
    assert mismatch == [] and errors == []


def test_tokenizer_has_qwen_special_ids_and_single_digit_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                "<|video_pad|>": 151656, "</think>": 151668}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(tok) == 151669
    pieces = tok.convert_ids_to_tokens(tok("at 512,384").input_ids)
    assert pieces == ["at", "Ġ", "5", "1", "2", ",", "3", "8", "4"]
    assert tok.decode(tok("Detect all objects: [1,2]").input_ids) == "Detect all objects: [1,2]"


def test_config_is_qwen3_vl_shaped(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl"
    assert cfg["text_config"]["vocab_size"] == 151936
    assert (cfg["vision_config"]["patch_size"], cfg["vision_config"]["spatial_merge_size"],
            cfg["vision_config"]["temporal_patch_size"]) == (16, 2, 2)
    proc = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert (proc["patch_size"], proc["merge_size"], proc["temporal_patch_size"]) == (16, 2, 2)


def test_loads_with_transformers_auto_classes_and_chat_template(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "ok"}]
    assert processor.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n")


@pytest.mark.parametrize("width,height,tokens", [(640, 480, 300), (640, 427, 260), (500, 375, 192)])
def test_ms_swift_qwen3_vl_template_expands_image_to_patch_tokens(tiny_model_dir, tmp_path, width, height, tokens):
    from PIL import Image
    from swift import get_model_processor, get_template

    _, processor = get_model_processor(str(tiny_model_dir), model_type="qwen3_vl", load_model=False)
    template = get_template(processor, template_type="qwen3_vl")
    template.set_mode("train")
    image = tmp_path / "img.png"
    Image.new("RGB", (width, height), (10, 20, 30)).save(image)
    encoded = template.encode({"messages": [{"role": "user", "content": "<image>hi"},
                                            {"role": "assistant", "content": "ok"}],
                               "images": [str(image)]})
    assert encoded["input_ids"].count(151655) == tokens
