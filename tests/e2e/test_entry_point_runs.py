"""End-to-end runs of python -m swift_plugins.sft on the tiny model (CPU)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import pytest
import yaml

from conftest import make_lvis_jsonl, read_jsonl, run, tiny_overrides

PY = sys.executable


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "logging.jsonl") if "loss" in r]


# ----------------------------------------------------------------------- real runs (tiny model)
@pytest.mark.e2e
def test_entry_point_trains_tiny_model_and_saves(tiny_model_dir, tmp_path, subprocess_env):
    data = make_lvis_jsonl(tmp_path / "data", 6)
    make_lvis_jsonl(tmp_path / "data", 2, "val.jsonl")
    out = tmp_path / "out"
    code, log = run([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml",
                     *tiny_overrides(tiny_model_dir, data.parent, out), "--custom.val_jsonl",
                     str(tmp_path / "data" / "val.jsonl"), "--training.max_steps", "2", "--training.eval_steps", "2",
                     "--training.save_steps", "2"], subprocess_env)
    assert code == 0, log[-5000:]
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "optimizer.pt"):
        assert (out / "checkpoint-2" / name).is_file(), name
    assert [float(x) for x in losses(out)] and all(math.isfinite(float(x)) for x in losses(out))
    assert len(losses(out)) == 2
    evals = [r for r in read_jsonl(out / "logging.jsonl") if "eval_loss" in r]
    assert len(evals) == 1 and math.isfinite(float(evals[0]["eval_loss"]))
    args = json.loads((out / "args.json").read_text())
    assert (args["optimizer"], args["tuner_type"], args["use_dora"], args["gradient_accumulation_steps"]) == (
        "swiftpack_multimodal", "lora", True, 2)
    assert (args["swiftpack_train_jsonl"], args["swiftpack_object_ordering"], args["packing"]) == (
        str(data), "sorted", False)
    assert "swiftpack multimodal optimizer groups: llm/decay:" in log


@pytest.mark.e2e
def test_export_flat_runs_with_plain_swift_sft(tiny_model_dir, tmp_path, subprocess_env, swift_cli):
    """Plain `swift sft OUT.yaml`: our keys (here save_delay_steps) reach ms-swift through the sidecar."""
    data = make_lvis_jsonl(tmp_path / "data", 4)
    out = tmp_path / "out"
    flat = tmp_path / "flat" / "tiny.yaml"
    code, log = run([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml",
                     *tiny_overrides(tiny_model_dir, data.parent, out), "--training.max_steps", "2",
                     "--training.save_steps", "1", "--training.save_delay_steps", "2",
                     "--training.save_total_limit", "null", "--export_flat", str(flat)], subprocess_env)
    assert code == 0, log
    assert yaml.safe_load(flat.read_text())["callbacks"] == ["swiftpack_save_delay"]
    code, log = run([swift_cli, "sft", str(flat)], subprocess_env)
    assert code == 0, log[-5000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert len(losses(out)) == 2 and all(math.isfinite(float(x)) for x in losses(out))
    assert "swiftpack multimodal optimizer groups: llm/decay:" in log


@pytest.mark.e2e
def test_torchrun_two_cpu_processes_share_one_data_order(tiny_model_dir, tmp_path, subprocess_env):
    data = make_lvis_jsonl(tmp_path / "data", 8)
    out = tmp_path / "out"
    torchrun = str(pathlib.Path(PY).parent / "torchrun")
    code, log = run([torchrun, "--nproc_per_node=2", "--master_port", str(29600 + os.getpid() % 300), "-m",
                     "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml",
                     *tiny_overrides(tiny_model_dir, data.parent, out), "--training.max_steps", "2",
                     "--training.save_steps", "2", "--training.log_data_order", "true"], subprocess_env)
    assert code == 0, log[-5000:]  # torchrun fails if any rank fails
    ranks = [json.loads((out / "data_order" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    # 8 rows, batch 2 per device, 2 ranks: each rank 2 batches; shards of ONE permutation are
    # disjoint and together cover the data (ranks with different orders would overlap).
    shards = [[i for batch in r["batches"] for i in batch] for r in ranks]
    assert [len(s) for s in shards] == [4, 4] and [len(r["first_batch"]) for r in ranks] == [2, 2]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(8))
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "args.json").read_text())["gradient_accumulation_steps"] == 1  # 4 / (2 x 2)
    assert len(losses(out)) == 2 and all(math.isfinite(float(x)) for x in losses(out))


@pytest.mark.gpu
def test_zero2_bf16_on_a_gpu_keeps_the_optimizer_groups(tiny_model_dir, tmp_path, subprocess_env):
    """The GPU path of the dlora configs (bf16, DeepSpeed ZeRO-2 from configs/deepspeed) on the tiny model."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("deepspeed")
    env = {k: v for k, v in subprocess_env.items() if k != "CUDA_VISIBLE_DEVICES"}
    data = make_lvis_jsonl(tmp_path / "data", 4)
    out = tmp_path / "out"
    code, log = run([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml",
                     *tiny_overrides(tiny_model_dir, data.parent, out), "--training.use_cpu", "false",
                     "--model.torch_dtype", "bfloat16", "--deepspeed.config", "configs/deepspeed/zero2.json",
                     "--training.max_steps", "2", "--training.save_steps", "2"], env)
    assert code == 0, log[-5000:]
    assert "swiftpack multimodal optimizer groups: llm/decay:" in log
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert len(losses(out)) == 2 and all(math.isfinite(float(x)) for x in losses(out))
