"""swift_plugins.config.zero: what DeepSpeed on the CPU derives from the config, and what it refuses."""
from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from swift_plugins import config as C
from swift_plugins.config.zero import (CPU_DEEPSPEED_NOTE, cpu_deepspeed, cpu_deepspeed_issues, deepspeed_json,
                                       mixed_precision_off)
from swift_plugins.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = "configs/tiny/sft_packing.yaml"


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def resolve(path=TINY, *overrides, world_size=2):
    return C.resolve_config(path, [(k, [v]) for k, v in overrides], world_size=world_size)


def test_presets_and_files_are_read_as_they_are():
    preset = deepspeed_json("zero3")  # ms-swift's own preset, found without importing swift
    assert preset["zero_optimization"]["stage"] == 3 and preset["fp16"]["enabled"] == "auto"
    assert deepspeed_json("configs/deepspeed/zero2.json") == json.loads((REPO / "configs/deepspeed/zero2.json").read_text())


def test_an_unreadable_json_is_one_user_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=rf"^{bad}: deepspeed.config: cannot read the DeepSpeed JSON \(.*\); fix the "
                                        rf"file or name a preset \(zero0, zero1, zero2, zero3, zero2_offload, "
                                        rf"zero3_offload\)$"):
        deepspeed_json(str(bad))
    with pytest.raises(UserError, match="no_such.json"):
        deepspeed_json(str(tmp_path / "no_such.json"))


def test_mixed_precision_off_keeps_everything_else_and_the_input():
    ds = deepspeed_json("configs/deepspeed/zero3.json")
    off = mixed_precision_off(ds)
    assert (off["fp16"]["enabled"], off["bf16"]["enabled"]) == (False, False)
    assert off["fp16"]["initial_scale_power"] == 16 and off["zero_optimization"] == ds["zero_optimization"]
    assert ds["fp16"]["enabled"] == "auto"  # a copy: the shipped JSON is untouched
    assert mixed_precision_off({"zero_optimization": {"stage": 2}})["bf16"] == {"enabled": False}


def test_a_cpu_deepspeed_run_gets_fp32_in_the_args_and_the_json():
    r = resolve(TINY, ("deepspeed.config", "configs/deepspeed/zero3.json"))
    derived = cpu_deepspeed(r)
    assert (derived["fp16"], derived["bf16"]) == (False, False)
    assert derived["deepspeed"] == mixed_precision_off(deepspeed_json("configs/deepspeed/zero3.json"))
    flat = C.flat_swift_args(r)
    assert (flat["fp16"], flat["bf16"], flat["deepspeed"]) == (False, False, derived["deepspeed"])
    assert C.render_config(r).rstrip().endswith(f"#   deepspeed: {CPU_DEEPSPEED_NOTE}")
    assert cpu_deepspeed_issues(r) == []


def test_gpu_configs_and_ddp_runs_derive_nothing():
    gpu = resolve("configs/dlora/sft_text_only.yaml", world_size=4)  # zero2.json, use_cpu false: as before
    assert cpu_deepspeed(gpu) is None and cpu_deepspeed_issues(gpu) == []
    flat = C.flat_swift_args(gpu)
    assert flat["deepspeed"] == "configs/deepspeed/zero2.json" and "fp16" not in flat and "bf16" not in flat
    assert "#   deepspeed:" not in C.render_config(gpu)
    assert cpu_deepspeed(resolve(TINY)) is None  # CPU DDP


def test_export_flat_writes_the_derivation_for_plain_swift_sft(tmp_path):
    r = resolve(TINY, ("deepspeed.config", "zero2"))
    files = C.export_flat(r, str(tmp_path / "flat.yaml"))
    text = open(files.flat_yaml).read()
    flat = yaml.safe_load(text)
    assert (flat["fp16"], flat["bf16"], flat["deepspeed"]["zero_optimization"]["stage"]) == (False, False, 2)
    assert f"# {CPU_DEEPSPEED_NOTE}: fp16, bf16 and deepspeed below are derived" in text
    assert C.load_sidecar(files.sidecar_json)[1:] == (2, True)


def test_what_deepspeed_on_the_cpu_cannot_do_is_refused_with_the_fix():
    r = resolve(TINY, ("deepspeed.config", "zero3"), ("model.torch_dtype", "bfloat16"), ("swift.fp16", "true"))
    assert [str(i) for i in cpu_deepspeed_issues(r)] == [
        "command line: model.torch_dtype: DeepSpeed on the CPU (training.use_cpu true) trains in float32, got "
        "bfloat16; set --model.torch_dtype float32 (or run on a GPU with training.use_cpu false)",
        "command line: swift.fp16: DeepSpeed on the CPU has no fp16; remove swift.fp16 (the CPU run is fp32)"]
