"""bench/gpu_acceptance.py --dry_run: the GPU script's code paths on CPU (fp32, tiny sizes), asserted on its summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swift_plugins.analysis.memory import MemorySetup, ModelShape, estimate_step_memory

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "bench"))
import bench_attention  # noqa: E402

ROWS = {"swiftpack_varlen", "sdpa_4d_mask", "eager", "one_by_one"}


@pytest.fixture(scope="module")
def summary(tiny_model_dir, repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_acceptance")
    proc = subprocess.run([sys.executable, str(repo_root / "bench" / "gpu_acceptance.py"), "--dry_run", "--out_dir",
                           str(out), "--model_path", str(tiny_model_dir)], cwd=repo_root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
                                                        "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def test_every_check_ran_without_ms_swift(summary):
    s, md = summary
    assert s["dry_run"] is True and s["failed"] == [] and s["imported_ms_swift"] is False
    assert list(s["checks"]) == ["isolation", "flash", "attention", "training", "memory", "zero3"]
    assert s["checks"]["flash"]["skipped"] == "CPU run"
    for heading in ("| isolation | passed |", "| training | passed |", "| zero3 | passed |", "## Attention bench",
                    "packed / padded samples/s", "## Peak memory per pack length"):
        assert heading in md


def test_isolation_on_the_fallback_kernel(summary):
    iso = summary[0]["checks"]["isolation"]
    assert iso["passed"] and iso["expected_kernel"] == "sdpa" and iso["tolerance"] == 1e-4
    for boundaries in ("cu_seq_lens", "position_ids"):
        r = iso[boundaries]
        assert len({tuple(g) for g in r["grids"]}) == len(r["lengths"]) == 4 and max(r["max_abs_diff"]) <= 1e-4
        assert r["sdpa_ran"] and not r["varlen_kernel_ran"]


def test_attention_bench_cases_and_targets(summary):
    bench = summary[0]["checks"]["attention"]
    cases = bench["cases"]
    assert {(c["model"], c["n"]) for c in cases} == {("tiny", 128), ("tiny", 256), ("wide", 128)}
    assert all({c["row"] for c in cases if (c["model"], c["n"]) == key} == ROWS
               for key in {(c["model"], c["n"]) for c in cases})
    assert all(c["seconds"] > 0 and c["mem_above_model"] is None for c in cases)
    assert sum(cases[0]["lengths"]) == 128 and bench["device"] == "cpu"
    by_target = {(t["model"], t["target"][:4]): t for t in bench["targets"]}
    assert by_target[("tiny", "time")]["value"]["128"] == pytest.approx(
        next(c["seconds"] for c in cases if c["n"] == 128 and c["row"] == "swiftpack_varlen")
        / next(c["seconds"] for c in cases if c["n"] == 128 and c["row"] == "one_by_one" and c["model"] == "tiny"))


def test_training_packed_and_padded_train_the_same_samples(summary):
    t = summary[0]["checks"]["training"]
    packed, padded = t["packed"], t["padded"]
    assert packed["samples"] == padded["samples"] == len(t["lengths"]) == 8
    assert packed["tokens"] == padded["tokens"] == sum(t["lengths"])
    assert padded["steps"] == 2 and packed["positions"] == packed["tokens"] < padded["positions"]
    assert t["samples_per_s_ratio"] == pytest.approx(packed["samples_per_s"] / padded["samples_per_s"])


def test_memory_rows_are_the_estimate_of_the_written_config_for_each_loss_path(summary):
    m = summary[0]["checks"]["memory"]
    shape = ModelShape.from_config(m["config"].rsplit("/", 1)[0])
    assert m["setup"] == {"tuner": "full", "lora_rank": 16, "zero_stage": 0, "gradient_checkpointing": True,
                          "world_size": 1, "fused_loss": True}
    assert [(r["seq_len"], r["loss_path"]) for r in m["rows"]] == [(64, "full"), (64, "fused"), (128, "full"),
                                                                   (128, "fused")]
    for r in m["rows"]:
        setup = MemorySetup(tuner="full", zero_stage=0, gradient_checkpointing=True, world_size=1,
                            fused_loss=r["loss_path"] == "fused")
        est = estimate_step_memory(shape, r["seq_len"], setup)
        assert r["measured_gib"] is None  # CPU: no allocator peak to read
        assert r["estimate_total_gib"] == pytest.approx(est["total"] / 1024 ** 3)
        assert r["estimate_without_overhead_gib"] == pytest.approx((est["total"] - est["overhead"]) / 1024 ** 3)
    for full, fused in zip(m["rows"][::2], m["rows"][1::2]):  # the same model and row: the same loss either way
        assert fused["losses"] == pytest.approx(full["losses"], rel=1e-5)
    assert "| 128 | fused | n/a (CPU) |" in summary[1]


def test_bench_reports_every_row_of_every_length_measured_or_skipped(tiny_model_dir):
    """A skipped row stays in the table (with its estimate) at every later length: nothing disappears."""
    result = bench_attention.bench(["tiny"], {"tiny": [64, 128, 192]}, str(tiny_model_dir), "cpu", "float32", reps=1,
                                   skip_s=0.0, skip_gib=1.0, memory=False, log=lambda line: None)
    cases = {(c["n"], c["row"]): c for c in result["cases"]}
    assert sorted(cases) == sorted((n, row) for n in (64, 128, 192) for row in ROWS)
    assert all(cases[(64, row)]["seconds"] > 0 for row in ROWS)  # nothing to estimate from: measured
    for n in (128, 192):  # any estimate exceeds 0 s: every row skipped, and says why
        assert all(cases[(n, row)]["skipped"].startswith("skipped: estimated") for row in ROWS)
    assert all(t["met"] is None for t in result["targets"])


def test_skip_estimate_grows_the_dense_rows_extra_quadratically():
    mib = 1024 ** 2
    history = {"swiftpack_varlen": {8192: {"n": 8192, "seconds": 1.0, "mem_above_model": 100 * mib},
                                    16384: {"n": 16384, "seconds": 2.0, "mem_above_model": 200 * mib}},
               "eager": {8192: {"n": 8192, "seconds": 5.0, "mem_above_model": 1100 * mib}}}
    # eager at 32k from its 8k case: (1 s x 4 + 4 s x 16) x (3 reps + 2) = 340 s; 100 MiB x 4 + 1000 MiB x 16
    assert bench_attention.skip_reason("eager", 32768, history, 3, 600, 17) is None  # 16,400 MiB = 16.02 GiB
    assert bench_attention.skip_reason("eager", 32768, history, 3, 600, 16) == (
        "skipped: estimated 340 s for the case, 16.0 GiB above model (from the measured 8192: linear part x 4, "
        "the rest x 16); --skip_over 600,16")
    assert bench_attention.skip_reason("eager", 32768, history, 3, 339, 17).startswith("skipped: estimated 340 s")
    # a linear row grows linearly from its own last length: 2 s x 2 x 5 = 20 s
    assert bench_attention.skip_reason("swiftpack_varlen", 32768, history, 3, 19, 17).startswith(
        "skipped: estimated 20 s")
    assert bench_attention.skip_reason("one_by_one", 32768, history, 3, 0, 0) is None  # never measured: run it
    # a dense row faster than ours at its last length grows at least linearly (never a negative estimate):
    # sdpa 0.5 s at 8k, ours 1 s -> 1 s x 4 x 5 = 20 s at 32k, not (4 - 8) x 5 < 0
    history["sdpa_4d_mask"] = {8192: {"n": 8192, "seconds": 0.5, "mem_above_model": 50 * mib}}
    assert bench_attention.skip_reason("sdpa_4d_mask", 32768, history, 3, 19, 17).startswith(
        "skipped: estimated 20 s for the case, 0.4 GiB above model")


def test_zero3_packed_steps_equal_the_plain_run(summary):
    """DeepSpeed ZeRO-3 (CPU accelerator, one process) around packed rows of image samples: fp32 equality."""
    z = summary[0]["checks"]["zero3"]
    assert z["passed"] and z["tolerance"] == 1e-4 and len(z["losses"]["plain"]) == len(z["losses"]["zero3"]) == 2
    assert z["losses"]["zero3"] == pytest.approx(z["losses"]["plain"], rel=1e-4)  # step 2 too, after the update
    assert z["losses"]["plain"][1] != z["losses"]["plain"][0]  # the first step changed the weights
