"""Packed training end to end on CPU (sdpa): the real entry point, 2-rank torchrun, resume."""
from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import make_lvis_jsonl, read_jsonl, run, tiny_overrides

pytestmark = pytest.mark.e2e

# Varied object counts -> varied lengths, so packs hold several samples; 40 objects is a dense
# record over global_max_length 640 that packing_overlong split cuts into pieces.
COUNTS = [1, 3, 2, 6, 1, 4, 2, 1, 5, 2, 3, 1, 40, 2]


def _packing_run(tiny_model_dir, tmp_path, env, out, *extra, launcher=None, n=14):
    data = make_lvis_jsonl(tmp_path / "data", n, object_counts=COUNTS)
    cmd = (launcher or [sys.executable, "-m", "swift_plugins.sft"]) + [
        "--config", "configs/tiny/sft_packing.yaml", *tiny_overrides(tiny_model_dir, data.parent, out),
        "--training.global_max_length", "640", "--training.packing_overlong", "split",
        "--training.dataloader_num_workers", "1", "--training.logging_steps", "1", *extra]
    code, log = run(cmd, env)
    assert code == 0, log[-6000:]
    return data, log


def test_entry_point_trains_packed_and_accounts_for_every_sample(tiny_model_dir, tmp_path, subprocess_env):
    out = tmp_path / "out"
    data, log = _packing_run(tiny_model_dir, tmp_path, subprocess_env, out, "--training.max_steps", "null",
                             "--training.num_train_epochs", "1", "--training.save_steps", "100")
    summary = json.loads((out / "packing" / "summary.json").read_text())["train"]
    assert summary["records_read"] == 14 and summary["records_skipped"] == 0
    assert summary["records_split"] == 1 and summary["samples"] > 14
    assert summary["samples"] == summary["samples_packed"] + summary["samples_dropped"]
    assert summary["samples_dropped"] == 0
    plan = json.loads((out / "packing" / "plan.json").read_text())
    assert sum(len(p) for p in plan["packs"]) == summary["samples_packed"]
    assert summary["avg_samples_per_pack"] > 1.5
    logs = [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert logs and all(math.isfinite(r["loss"]) for r in logs)
    # every packed sample trained exactly once in the epoch, as logged per step
    assert sum(r["samples_per_step"] for r in logs) == summary["samples_packed"]
    assert all(0 < r["packing_efficiency"] <= 1 for r in logs)
    assert (out / "checkpoint-{}".format(len(logs)) / "adapter_model.safetensors").is_file()
    assert "swiftpack packing: " in log and "dropped/skipped list" in log


def test_two_rank_torchrun_shares_one_plan_and_splits_the_packs(tiny_model_dir, tmp_path, subprocess_env):
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                "-m", "swift_plugins.sft"]
    _, log = _packing_run(tiny_model_dir, tmp_path, subprocess_env, out, "--training.max_steps", "2",
                          "--training.log_data_order", "true", "--training.effective_batch_size", "2",
                          launcher=launcher)
    lines = sorted({l.split("swiftpack packing: ", 1)[1] for l in log.splitlines() if "swiftpack packing: " in l})
    assert len(lines) == 1  # both ranks logged the identical plan summary
    plan = json.loads((out / "packing" / "plan.json").read_text())
    assert len(plan["packs"]) % 2 == 0  # a multiple of the world size
    orders = [json.loads((out / "data_order" / f"rank{r}.json").read_text()) for r in (0, 1)]
    batches = [[i for b in o["batches"] for i in b] for o in orders]
    assert set(batches[0]).isdisjoint(batches[1])
    assert sorted(batches[0] + batches[1]) == list(range(len(plan["packs"])))
    logs = [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)


def test_resume_continues_the_same_plan(tiny_model_dir, tmp_path, subprocess_env):
    full = tmp_path / "full"
    _packing_run(tiny_model_dir, tmp_path, subprocess_env, full, "--training.max_steps", "4",
                 "--training.save_steps", "2")
    resumed = tmp_path / "resumed"
    _packing_run(tiny_model_dir, tmp_path, subprocess_env, resumed, "--training.max_steps", "4",
                 "--training.save_steps", "2", "--training.resume_from_checkpoint", str(full / "checkpoint-2"))
    a = {r["global_step/max_steps"]: r for r in read_jsonl(full / "logging.jsonl") if "loss" in r}
    b = {r["global_step/max_steps"]: r for r in read_jsonl(resumed / "logging.jsonl") if "loss" in r}
    assert sorted(b) == ["3/4", "4/4"]
    for step in ("3/4", "4/4"):
        assert b[step]["samples_per_step"] == a[step]["samples_per_step"]
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5)


def test_bundled_sample_trains_packed_through_plain_swift_sft(tiny_model_dir, tmp_path, subprocess_env, swift_cli):
    """The bundled sample, exported to a flat YAML, trains packed under plain `swift sft`; the
    packing metrics reach TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb, flat = tmp_path / "out", tmp_path / "tb", tmp_path / "flat" / "sample.yaml"
    code, log = run([sys.executable, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_packing.yaml",
                     "--model.model", str(tiny_model_dir), "--custom.val_jsonl", "null",
                     "--training.output_dir", str(out), "--training.add_version", "false",
                     "--training.max_steps", "1", "--training.effective_batch_size", "1",
                     "--training.report_to", "tensorboard", "--training.logging_dir", str(tb),
                     "--export_flat", str(flat)], subprocess_env)
    assert code == 0, log
    code, log = run([swift_cli, "sft", str(flat)], subprocess_env)
    assert code == 0, log[-6000:]
    summary = json.loads((out / "packing" / "summary.json").read_text())["train"]
    assert summary["records_read"] == 200 and summary["records_skipped"] == 0
    assert summary["samples"] == summary["samples_packed"] and summary["records_split"] > 0
    (logged,) = [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert math.isfinite(logged["loss"]) and 0 < logged["packing_efficiency"] <= 1
    events = EventAccumulator(str(tb)).Reload()
    tags = events.Tags()["scalars"]
    assert "train/packing_efficiency" in tags and "train/samples_per_step" in tags
    assert events.Scalars("train/samples_per_step")[0].value == logged["samples_per_step"]
