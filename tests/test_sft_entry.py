"""python -m swift_plugins.sft: previews, export, launcher checks, and real runs on the tiny model (CPU)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from conftest import make_lvis_jsonl, read_jsonl, run, tiny_overrides
from swift_plugins import config as C
from swift_plugins.sft import launch_issues

REPO = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "logging.jsonl") if "loss" in r]


# ----------------------------------------------------------------------------- no torch needed
def test_print_config_exit_codes(subprocess_env):
    code, out = run([PY, "-m", "swift_plugins.sft", "--config", "configs/dlora/sft_text_only.yaml", "--print_config",
                     "--world_size", "4"], subprocess_env)
    assert code == 0, out
    assert "  learning_rate: 0.0002  # configs/dlora/sft_text_only.yaml" in out
    assert "  model: model_cache/Qwen3-VL-8B-Instruct  # configs/dlora/sft_base.yaml" in out
    assert out.rstrip().endswith("#   gradient_accumulation_steps: 32  (derived: 128 / (1 x 4))")

    code, out = run([PY, "-m", "swift_plugins.sft", "--config", "configs/dlora/sft_text_only.yaml", "--print_config",
                     "--world_size", "3", "--training.learnign_rate", "1"], subprocess_env)
    assert code == 2
    assert out == ("swift_plugins.sft: 2 problem(s):\n"
                   "  command line: training.learnign_rate: unknown key (did you mean '--training.learning_rate'?)\n"
                   "  configs/dlora/sft_text_only.yaml: training.effective_batch_size: 128 is not a multiple of "
                   "per_device_train_batch_size x world_size = 1 x 3 = 3; effective_batch_size values that work: "
                   "126, 129; no per_device_train_batch_size works with 128 on 3 processes\n")


def test_help_and_missing_config(subprocess_env):
    code, out = run([PY, "-m", "swift_plugins.sft", "--help"], subprocess_env)
    assert code == 0 and out.startswith("usage: python -m swift_plugins.sft --config FILE")
    code, out = run([PY, "-m", "swift_plugins.sft"], subprocess_env)
    assert code == 2 and out.startswith("usage:")


def test_launch_issues():
    assert [str(i) for i in launch_issues({"NPROC_PER_NODE": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, None)] == [
        "environment: NPROC_PER_NODE: is set (4) inside a torchrun rank; unset it (torchrun's --nproc_per_node already "
        "started the processes; NPROC_PER_NODE would make ms-swift start torchrun again in every rank)"]
    assert [str(i) for i in launch_issues({"NPROC_PER_NODE": "2"}, None)] == [
        "environment: NPROC_PER_NODE: is set (2) but python -m swift_plugins.sft does not start processes; unset it "
        "and launch with torchrun --nproc_per_node=2 -m swift_plugins.sft ..."]
    assert [str(i) for i in launch_issues({}, 4)] == [
        "command line: --world_size: 4 does not match this run's world size 1 (torchrun's WORLD_SIZE); --world_size "
        "is for --print_config / --export_flat previews, drop it or launch with torchrun --nproc_per_node=4"]
    assert launch_issues({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 2) == []


def test_run_refuses_nproc_per_node_and_missing_inputs(subprocess_env, tmp_path):
    env = dict(subprocess_env, NPROC_PER_NODE="2", LOCAL_RANK="0", WORLD_SIZE="2")
    code, out = run([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml", "--model.model",
                     str(tmp_path / "nope"), "--training.effective_batch_size", "4",
                     "--training.per_device_train_batch_size", "1"], env)
    assert code == 2
    assert out.splitlines()[1:3] == [
        "  environment: NPROC_PER_NODE: is set (2) inside a torchrun rank; unset it (torchrun's --nproc_per_node "
        "already started the processes; NPROC_PER_NODE would make ms-swift start torchrun again in every rank)",
        f"  command line: model.model: {tmp_path / 'nope'}: no such file or directory (paths are relative to the "
        f"working directory {REPO})"]


def test_packing_without_packed_dataset_is_not_implemented(monkeypatch):
    import types

    from swift_plugins.sft_pipeline import packing_post_process

    monkeypatch.setitem(sys.modules, "swift_plugins.packed_dataset", None)  # as before the module exists
    options = C.RuntimeOptions(packing=True, global_max_length=64)
    with pytest.raises(NotImplementedError, match=r"^training.packing true needs swift_plugins.packed_dataset"
                                                  r".build_packed_datasets, which is not available yet"):
        packing_post_process(types.SimpleNamespace(swiftpack_options=options), [[], None], lambda d: d)
    off = C.RuntimeOptions(packing=False)
    assert packing_post_process(types.SimpleNamespace(swiftpack_options=off), ["t", "v"], lambda d: d[::-1]) == \
        ["v", "t"]


def test_sidecar_registration_checks_world_size_and_hooks_packing(tmp_path, monkeypatch, request):
    import types

    from swift.callbacks import callbacks_map
    from swift.dataset import DATASET_MAPPING
    from swift.pipelines.train.sft import SwiftSft

    from swift_plugins.sft_pipeline import register_sidecar

    # global registrations are restored after the test
    monkeypatch.setattr(SwiftSft, "_post_process_datasets", SwiftSft._post_process_datasets)
    monkeypatch.setitem(callbacks_map, "swiftpack_save_delay", callbacks_map.get("swiftpack_save_delay"))
    saved_datasets = dict(DATASET_MAPPING)

    def restore_datasets():
        from swift.dataset import dataset_syntax
        DATASET_MAPPING.clear()
        DATASET_MAPPING.update(saved_datasets)
        dataset_syntax._dataset_meta_mapping = None
    request.addfinalizer(restore_datasets)
    monkeypatch.setitem(sys.modules, "swift_plugins.packed_dataset", None)
    monkeypatch.chdir(REPO)
    resolved = C.resolve_config("configs/tiny/sft_packing.yaml", [("training.save_delay_steps", ["3"])], world_size=1)
    files = C.export_flat(resolved, str(tmp_path / "packed.yaml"))

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError) as e:
        register_sidecar(files.sidecar_json)
    assert str(e.value) == (f"{files.sidecar_json}: exported for world_size 1 (gradient_accumulation_steps was "
                            f"derived from it) but this run has WORLD_SIZE 2; re-export with --world_size 2")
    monkeypatch.delenv("WORLD_SIZE")
    options = register_sidecar(files.sidecar_json)
    assert options == C.runtime_options(resolved)
    assert callbacks_map["swiftpack_save_delay"].keywords == {"save_delay_steps": 3}
    registered = {getattr(m, "dataset_path", None) for m in DATASET_MAPPING.values()}
    assert os.path.abspath("public_data/lvis/sample/train.jsonl") in registered
    stand_in = types.SimpleNamespace()
    with pytest.raises(NotImplementedError):  # stock SwiftSft now routes through packing_post_process
        SwiftSft._post_process_datasets(stand_in, [[], None])
    assert stand_in.swiftpack_options == options


def test_export_matches_ms_swift_yaml_parsing(tmp_path, monkeypatch):
    """The flat YAML becomes, through ms-swift's own parse_yaml_args, the argv our entry point builds."""
    from swift.cli.main import parse_yaml_args

    monkeypatch.chdir(REPO)
    resolved = C.resolve_config("configs/dlora/sft_text_only.yaml", world_size=4)
    files = C.export_flat(resolved, str(tmp_path / "flat.yaml"))
    argv = [files.flat_yaml]
    monkeypatch.delenv("SWIFT_CONFIG_FILE", raising=False)
    parse_yaml_args(argv)
    monkeypatch.delenv("SWIFT_CONFIG_FILE", raising=False)
    expected = C.flat_swift_args(resolved)
    expected["external_plugins"] = [files.plugin_py]
    assert argv == C.swift_argv(expected)
    assert "--train_type" not in argv and "--packing" not in argv
    assert argv[argv.index("--gradient_accumulation_steps") + 1] == "32"


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
