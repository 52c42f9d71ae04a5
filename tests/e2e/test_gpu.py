"""GPU checks of the training path (marker ``gpu``: run with ``pytest -m gpu`` on a GPU machine)."""
from __future__ import annotations

import math
import sys

import pytest

from helpers import make_lvis_jsonl, read_jsonl, run, tiny_overrides

PY = sys.executable


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "logging.jsonl") if "loss" in r]


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


@pytest.mark.gpu
def test_zero3_packed_on_gpus_with_mixed_text_and_image_packs(tiny_model_dir, tmp_path, subprocess_env):
    """tests/e2e/test_deepspeed.py's ZeRO-3 launch on GPUs: bf16, the shipped zero3.json as it is (nothing
    derived: training.use_cpu false), text-only and image packs in one run."""
    import json

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("deepspeed")
    from helpers import free_port
    from test_deepspeed import ROWS, readme_launch, run_args, save_image

    env = {k: v for k, v in subprocess_env.items() if k != "CUDA_VISIBLE_DEVICES"}
    data = tmp_path / "data"
    save_image(data / "big.png", (512, 512))
    save_image(data / "small.png", (384, 384))
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    gpus = min(2, torch.cuda.device_count())
    out = tmp_path / "out"
    code, log = run([PY, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "--master_port",
                     str(free_port()), "-m", "swift_plugins.sft",
                     *readme_launch(3), *run_args(tiny_model_dir, data, out, "--training.use_cpu", "false",
                                                  "--model.torch_dtype", "bfloat16",
                                                  "--training.effective_batch_size", str(gpus))], env)
    assert code == 0, log[-5000:]
    assert "swiftpack deepspeed:" not in log  # nothing derived on a GPU
    args = json.loads((out / "args.json").read_text())
    assert (args["bf16"], args["deepspeed"]["zero_optimization"]["stage"]) == (True, 3)
    assert len(losses(out)) == 2 and all(math.isfinite(float(x)) for x in losses(out))
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
