"""The tiny Qwen-VL checkpoints: deterministic bytes, loaded by transformers and ms-swift per family."""
from __future__ import annotations

import filecmp
import json
import os
import pathlib
import subprocess
import sys

import pytest

from swift_plugins.dev import tiny_model
from swift_plugins.dev.tiny_families import FAMILIES

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
NO_THINKING = "<think>\n\n</think>\n\n"
# model_type -> (ms-swift template, resize factor, what the template puts first, before the answer)
TEMPLATES = {"qwen2_vl": ("qwen2_vl", 28, SYSTEM, ""), "qwen2_5_vl": ("qwen2_5_vl", 28, SYSTEM, ""),
             "qwen3_vl": ("qwen3_vl", 32, "", ""), "qwen3_vl_moe": ("qwen3_vl", 32, "", ""),
             "qwen3_5": ("qwen3_5", 32, "", NO_THINKING), "qwen3_5_moe": ("qwen3_5", 32, "", NO_THINKING)}


def test_every_family_is_tested_here():
    assert set(TEMPLATES) == set(FAMILIES)


# The default and the most involved (hybrid MoE, placeholders up to the 248,320-row vocabulary).
@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_5_moe"])
def test_build_twice_gives_identical_files(tiny_family_dir, tmp_path, model_type):
    first = tiny_family_dir(model_type)
    again = tiny_model.build(tmp_path / "again", family_name=model_type)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"} <= set(names)
    match, mismatch, errors = filecmp.cmpfiles(first, again, names, shallow=False)
    assert mismatch == [] and errors == []
    assert json.loads((first / "config.json").read_text())["model_type"] == model_type


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
    assert processor.tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]


def _swift_template(model_dir, model_type, load_model=False):
    from swift import get_model_processor, get_template

    model, processor = get_model_processor(str(model_dir), model_type=model_type, load_model=load_model)
    template = get_template(processor, template_type=TEMPLATES[model_type][0])
    template.set_mode("train")
    template.model = model
    return model, template


@pytest.mark.parametrize("model_type", list(TEMPLATES))
def test_ms_swift_loads_each_family_and_its_template_encodes_an_image(tiny_family_dir, tmp_path, model_type):
    """Explicit model_type; the image expands to (h/f)*(w/f) pads; the collated batch runs the model."""
    import torch
    from PIL import Image

    _, factor, first, answer_prefix = TEMPLATES[model_type]
    model, template = _swift_template(tiny_family_dir(model_type), model_type, load_model=True)
    assert type(model).__name__ == FAMILIES[model_type].architecture
    width, height = 9 * factor, 5 * factor
    Image.new("RGB", (width, height), (10, 20, 30)).save(tmp_path / "img.png")
    encoded = template.encode({"messages": [{"role": "user", "content": "<image>Detect all objects."},
                                            {"role": "assistant", "content": "a cat at 512,384"}],
                               "images": [str(tmp_path / "img.png")]})
    tok = template.tokenizer
    ids = encoded["input_ids"]
    image_pad = FAMILIES[model_type].ids()["<|image_pad|>"]
    assert tok.convert_tokens_to_ids("<|image_pad|>") == image_pad and ids.count(image_pad) == 9 * 5
    text = tok.decode([i for i in ids if i != image_pad])
    answer = answer_prefix + "a cat at 512,384<|im_end|>\n"
    assert text == (first + "<|im_start|>user\n<|vision_start|><|vision_end|>Detect all objects.<|im_end|>\n"
                    "<|im_start|>assistant\n" + answer)
    assert [t for t in encoded["labels"] if t != -100] == tok(answer, add_special_tokens=False).input_ids
    batch = template.data_collator([encoded])
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw", "position_ids")
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k in keys}).loss
    assert torch.isfinite(loss) and loss.item() > 0
    if model_type.startswith("qwen3_5"):
        check_qwen3_5_model(model)


def check_qwen3_5_model(model):
    """Hybrid: Gated DeltaNet in layers 0-2, gated attention in layer 3; the 248,320-row vocabulary."""
    text = model.config.text_config
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    kinds = [type(layer.linear_attn).__name__ if hasattr(layer, "linear_attn") else type(layer.self_attn).__name__
             for layer in model.model.language_model.layers]
    assert [k.endswith("GatedDeltaNet") for k in kinds] == [True, True, True, False]
    assert model.get_input_embeddings().weight.shape == (248320, 64)
    assert (model.config.image_token_id, model.config.video_token_id) == (248056, 248057)
    if model.config.model_type == "qwen3_5_moe":
        assert (text.num_experts, text.num_experts_per_tok) == (4, 2)


@pytest.mark.parametrize("width,height,tokens", [(640, 480, 300), (640, 427, 260), (500, 375, 192)])
def test_ms_swift_qwen3_vl_template_expands_image_to_patch_tokens(tiny_model_dir, tmp_path, width, height, tokens):
    from PIL import Image

    _, template = _swift_template(tiny_model_dir, "qwen3_vl")
    image = tmp_path / "img.png"
    Image.new("RGB", (width, height), (10, 20, 30)).save(image)
    encoded = template.encode({"messages": [{"role": "user", "content": "<image>hi"},
                                            {"role": "assistant", "content": "ok"}],
                               "images": [str(image)]})
    assert encoded["input_ids"].count(151655) == tokens


def test_qwen2_5_vl_vision_tower_has_several_windows_and_a_full_attention_block(tiny_family_dir):
    """A 224 x 224 image: 8 x 8 merged tokens in windows of 2 x 2 -> 16 windows in block 0; block 1 full."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.vision_utils import get_vision_window_index

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_family_dir("qwen2_5_vl"))
    visual = model.model.visual
    assert list(visual.fullatt_block_indexes) == [1] and len(visual.blocks) == 2
    _, cu_window_seqlens = get_vision_window_index(
        torch.tensor([[1, 16, 16]]), spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
        patch_size=visual.patch_size)
    windows = torch.unique_consecutive(torch.as_tensor(cu_window_seqlens)).numel() - 1
    assert windows == 16 and int(cu_window_seqlens[-1]) == 16 * 16  # 16 patches of 14 px per side


def test_qwen3_vl_moe_routes_top_2_of_4_experts(tiny_family_dir):
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(tiny_family_dir("qwen3_vl_moe")).text_config
    assert (text.num_experts, text.num_experts_per_tok, text.decoder_sparse_step, text.mlp_only_layers) == (4, 2, 1, [])


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _read_only_target(tmp_path) -> pathlib.Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "m" if not os.access(ro, os.W_OK) else pathlib.Path("/proc/sys/swiftpack-tiny")  # root: a ro mount


@pytest.mark.parametrize("case", ["family", "file", "read_only", "seed"])
def test_cli_refuses_a_bad_family_or_output_path_in_one_line(tmp_path, capsys, case):
    """Checked before anything is built; the family case runs the script itself."""
    (tmp_path / "a_file").write_text("x")
    args = {"family": [tmp_path / "m", "--family", "qwen9_vl"], "file": [tmp_path / "a_file"],
            "read_only": [_read_only_target(tmp_path)], "seed": [tmp_path / "m", "--seed", "-1"]}[case]
    if case == "family":
        proc = _cli(*args)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code = tiny_model.main(list(map(str, args)))
        out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert {"family": "unknown model_type 'qwen9_vl' (choose one of qwen2_vl,", "file": "is a file",
            "read_only": "is not writable", "seed": "--seed: -1 is out of range"}[case] in lines[0]
    assert not (tmp_path / "m").exists() and (tmp_path / "a_file").read_text() == "x"
