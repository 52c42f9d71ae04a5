"""End to end: the real `swift sft` CLI trains the tiny Qwen3-VL on CPU without packing."""
from __future__ import annotations

import json
import math
import subprocess

import pytest
from PIL import Image

from conftest import read_jsonl

pytestmark = pytest.mark.e2e


def _write_records(folder, n=4):
    rows = []
    for i in range(n):
        image = folder / f"img{i}.png"
        Image.new("RGB", (160, 128 + 32 * i), (40 * i, 80, 120)).save(image)
        rows.append({"messages": [{"role": "user", "content": "<image>Detect all objects."},
                                  {"role": "assistant", "content": '[{"desc":"cat","bbox_2d":[1,2,30,%d]}]' % (40 + i)}],
                     "images": [str(image)]})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_swift_sft_trains_two_steps_and_saves_checkpoint(tiny_model_dir, tmp_path, swift_cli, subprocess_env):
    data = _write_records(tmp_path)
    out = tmp_path / "out"
    cmd = [swift_cli, "sft", "--model", str(tiny_model_dir), "--model_type", "qwen3_vl", "--dataset", str(data),
           "--tuner_type", "lora", "--max_steps", "2", "--per_device_train_batch_size", "1",
           "--gradient_accumulation_steps", "1", "--check_model", "false", "--output_dir", str(out),
           "--logging_steps", "1", "--save_steps", "2", "--torch_dtype", "float32", "--attn_impl", "sdpa",
           "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--report_to", "none",
           "--split_dataset_ratio", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    checkpoint = run_dir / "checkpoint-2"
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    losses = [r["loss"] for r in read_jsonl(run_dir / "logging.jsonl") if "loss" in r]
    assert len(losses) == 2
    assert all(math.isfinite(float(x)) for x in losses)
