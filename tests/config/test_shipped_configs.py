"""Every config under configs/ loads and validates; each opens with its launch command."""
from __future__ import annotations

import json
import pathlib

import pytest

from swift_plugins import config as C
from swift_plugins.config.schema import PRESET_DEEPSPEED

REPO = pathlib.Path(__file__).resolve().parents[2]
YAMLS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("**/*.y*ml"))
DEEPSPEED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("**/*.json"))
# The world size each folder's configs are meant for (a new folder must be added here).
WORLD_SIZE = {"dlora": 4, "tiny": 1}


def test_the_configs_are_found():
    assert {"configs/dlora/sft_base.yaml", "configs/dlora/sft_text_only.yaml",
            "configs/dlora/sft_text_only_padding.yaml", "configs/tiny/sft_padding.yaml",
            "configs/tiny/sft_packing.yaml"} <= set(YAMLS)
    assert {"configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"} <= set(DEEPSPEED)


@pytest.mark.parametrize("path", YAMLS)
def test_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    folder = pathlib.Path(path).parent.name
    assert folder in WORLD_SIZE, f"{path}: add its folder's world size to WORLD_SIZE"
    resolved = C.resolve_config(path, world_size=WORLD_SIZE[folder])  # raises ConfigError with every problem
    ds = resolved.config.deepspeed.config
    if ds is not None and ds not in PRESET_DEEPSPEED:
        assert (REPO / ds).is_file(), f"{path}: deepspeed.config {ds} does not exist"


@pytest.mark.parametrize("path", YAMLS)
def test_config_opens_with_its_launch_command(path):
    lines = (REPO / path).read_text().splitlines()
    assert lines[0].startswith("# Launch"), path
    head = "\n".join(line for line in lines if line.startswith("#"))
    assert f"-m swift_plugins.sft --config {path}" in head, path


def test_text_only_configs_hold_the_lvis_run_settings(monkeypatch):
    monkeypatch.chdir(REPO)
    packed = C.resolve_config("configs/dlora/sft_text_only.yaml", world_size=4)
    t = packed.config.training
    assert (t.packing, t.global_max_length, t.packing_buffer, t.packing_min_fill_ratio, t.packing_drop_last,
            t.eval_packing) == (True, 20000, 256, 0.7, True, True)
    assert (t.optimizer, t.learning_rate, t.vit_lr, t.aligner_lr, t.num_train_epochs) == (
        "multimodal", 2e-4, 1e-4, 4e-4, 4.0)
    assert (t.per_device_train_batch_size, t.effective_batch_size, packed.gradient_accumulation_steps) == (1, 128, 32)
    assert (t.eval_steps, t.save_steps, t.save_delay_steps, t.save_total_limit, t.logging_steps) == (20, 20, 50, 2, 5)
    m = packed.config.model
    assert (m.model, m.torch_dtype, m.attn_impl) == ("model_cache/Qwen3-VL-8B-Instruct", "bfloat16", "flash_attn")
    assert packed.config.tuner.use_dora and packed.config.deepspeed.config == "configs/deepspeed/zero2.json"
    assert packed.config.template.max_pixels == 786432
    assert packed.sources["model.model"] == "configs/dlora/sft_base.yaml"

    padded = C.resolve_config("configs/dlora/sft_text_only_padding.yaml", world_size=4)
    assert not padded.config.training.packing
    assert (padded.config.training.per_device_train_batch_size, padded.gradient_accumulation_steps) == (2, 16)
    assert padded.config.training.learning_rate == 2e-4 and padded.config.custom == packed.config.custom


def test_tiny_configs_run_on_cpu(monkeypatch):
    monkeypatch.chdir(REPO)
    for path in ("configs/tiny/sft_padding.yaml", "configs/tiny/sft_packing.yaml"):
        cfg = C.resolve_config(path, world_size=1).config
        assert (cfg.model.model, cfg.model.torch_dtype, cfg.model.attn_impl) == (
            "model_cache/tiny-qwen3-vl", "float32", "sdpa")
        assert cfg.deepspeed.config is None and cfg.training.use_cpu
        assert cfg.custom.train_jsonl == ["public_data/lvis/sample/train.jsonl",
                                          "public_data/messages/sample/train.jsonl"]
        assert cfg.training.max_steps is not None and cfg.training.max_steps <= 10
    # also valid for the 2-process CPU run
    assert C.resolve_config("configs/tiny/sft_padding.yaml", world_size=2).gradient_accumulation_steps == 1


@pytest.mark.parametrize("path", DEEPSPEED)
def test_deepspeed_json_leaves_batch_sizes_to_the_trainer(path):
    ds = json.loads((REPO / path).read_text())
    # "auto": filled from the run's arguments, so our derived gradient_accumulation_steps wins.
    for key in ("gradient_accumulation_steps", "train_batch_size", "train_micro_batch_size_per_gpu",
                "gradient_clipping"):
        assert ds[key] == "auto", (path, key)
    assert ds["bf16"]["enabled"] == "auto"
    assert ds["zero_optimization"]["stage"] == int(pathlib.Path(path).stem[-1])
