"""python -m swift_plugins.sft: previews, launcher checks and user errors (no torch imported)."""
from __future__ import annotations

import pathlib
import sys


from helpers import run
from swift_plugins import config as C
from swift_plugins.sft import launch_issues

REPO = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable


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
    assert out == ("error: command line: training.learnign_rate: unknown key (did you mean '--training.learning_rate'?)\n"
                   "error: configs/dlora/sft_text_only.yaml:30: training.effective_batch_size: 128 is not a multiple of "
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
    assert out.splitlines() == [
        "error: environment: NPROC_PER_NODE: is set (2) inside a torchrun rank; unset it (torchrun's --nproc_per_node "
        "already started the processes; NPROC_PER_NODE would make ms-swift start torchrun again in every rank)",
        f"error: command line: model.model: {tmp_path / 'nope'}: no such file or directory (paths are relative to "
        f"the working directory {REPO})"]




def test_deepspeed_on_the_cpu_is_shown_or_refused_before_anything_runs(subprocess_env):
    base = [PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_packing.yaml", "--deepspeed.config",
            "configs/deepspeed/zero3.json", "--print_config", "--world_size", "2"]
    code, out = run(base, subprocess_env)
    assert code == 0, out
    assert out.rstrip().endswith(f"#   deepspeed: {C.zero.CPU_DEEPSPEED_NOTE}")
    code, out = run(base + ["--model.torch_dtype", "bfloat16"], subprocess_env)
    assert (code, out) == (2, "error: command line: model.torch_dtype: DeepSpeed on the CPU (training.use_cpu true) "
                              "trains in float32, got bfloat16; set --model.torch_dtype float32 (or run on a GPU with "
                              "training.use_cpu false)\n")
