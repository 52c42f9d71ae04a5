"""End to end per model family on the tiny checkpoints (CPU): analysis -> figures -> migration -> packed training.

One chain per family, every assertion on it (Qwen3-VL's runs are tests/e2e/test_runs.py)::

    qwen2_vl       analysis, figures, migration in process; python -m swift_plugins.sft, 2 packed steps
    qwen2_5_vl     the same, the training under torchrun with 2 ranks (the 2-rank packed run)
    qwen3_vl_moe   the same as qwen2_vl
    qwen3_5        the same; its Gated DeltaNet layers isolated per packed sample (the start-up line says so)

The analysis reads the bundled LVIS and messages samples (first 16 records each) and hand-made
awkward messages rows (system prompts, multi-turn, several images, odd image sizes); every
``total_tokens`` it reports must equal ms-swift's ``template.encode`` of that record. The training
runs the migrated config on the bundled samples with only ``model.model`` pointed at the family's
checkpoint: the family picks model_type, template and packing template.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import yaml

from helpers import REPO, awkward_messages_records, child_environment, free_port, read_jsonl, run
from swift_plugins import analyze
from swift_plugins.analysis import migrate, report
from swift_plugins.data import swift_row
from swift_plugins.families import FAMILIES

pytestmark = pytest.mark.e2e
PY = sys.executable
RANKS = {"qwen2_vl": 1, "qwen2_5_vl": 2, "qwen3_vl_moe": 1, "qwen3_5": 1}
SAMPLES = [REPO / "public_data" / "lvis" / "sample" / "train.jsonl", REPO / "public_data" / "messages" / "sample" /
           "train.jsonl"]
PADDING = "configs/tiny/sft_padding.yaml"
MAX_RECORDS = 16


def _analyse(model, files, out, world):
    assert analyze.main(["--model_path", str(model), "--train_jsonl", *map(str, files), "--output_dir", str(out),
                                "--cache_dir", str(out / "cache"), "--max_samples", str(MAX_RECORDS),
                                "--max_pixels", "262144", "--max_lengths", "700,900", "--effective_batch_size", "4",
                                "--world_size", str(world), "--num_train_epochs", "1", "--tuner", "dora",
                                "--lora_rank", "4", "--zero_stage", "0", "--gpu_memory_gib", "10",
                                "--max_drop_fraction", "0.5"]) == 0


def _train(model, config, out, world, cache):
    args = ["-m", "swift_plugins.sft", "--config", str(config), "--model.model", str(model), "--training.max_steps", "2",
            "--training.output_dir", str(out), "--training.add_version", "false", "--custom.val_jsonl", "null",
            "--training.logging_steps", "1", "--training.save_steps", "2", "--data.length_cache_dir", str(cache),
            "--training.effective_batch_size", str(world), "--training.log_data_order", "true"]
    launch = [PY] if world == 1 else [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                                      "--master_port", str(free_port())]
    code, log = run(launch + args, child_environment(), timeout=900)
    assert code == 0, log[-8000:]
    return log


@pytest.fixture(scope="module", params=list(RANKS))
def chain(request, tiny_family_dir, tmp_path_factory):
    """(family, model, folder, training log) after analysis -> figures -> migration -> 2 packed steps."""
    family, model, world = FAMILIES[request.param], tiny_family_dir(request.param), RANKS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    awkward = folder / "awkward.jsonl"
    awkward.write_text("".join(json.dumps(r) + "\n" for r in awkward_messages_records(folder)))
    _analyse(model, SAMPLES + [awkward], folder / "analysis", world)
    assert report.main(["--input_dir", str(folder / "analysis"), "--config", PADDING, "--model_path", str(model),
                        "--world_size", str(world)]) == 0
    assert migrate.main(["--padding_config", PADDING, "--analysis_dir", str(folder / "analysis"), "--output",
                         str(folder / "sft_packed.yaml"), "--world_size", str(world)]) == 0
    log = _train(model, folder / "sft_packed.yaml", folder / "train", world, folder / "cache")
    return family, model, folder, log


def test_analysis_counts_every_record_as_the_family_template_encodes_it(chain):
    from swift_plugins.training.calibration import load_template

    family, model, folder, _ = chain
    stats = json.loads((folder / "analysis" / "dataset_stats.json").read_text())
    assert (stats["inputs"]["family"], stats["inputs"]["template"]) == (family.model_type, family.template)
    assert stats["inputs"]["image_rule"]["patch_size"] == (family.resize_patch or 16)
    files = stats["inputs"]["train_jsonl"]
    rows = read_jsonl(folder / "analysis" / "sample_stats.jsonl")
    awkward_rows = len((folder / "awkward.jsonl").read_text().splitlines())
    assert [sum(r["file"] == k for r in rows) for k in range(3)] == [MAX_RECORDS, MAX_RECORDS, awkward_rows]
    template = load_template(model, max_pixels=262144)
    for r in rows:
        path = files[r["file"]]
        record = json.loads(open(path, encoding="utf-8").read().splitlines()[r["line"] - 1])
        encoded = template.encode(swift_row(record, r["kind"], base_dir=str(folder if r["file"] == 2 else
                                                                            SAMPLES[r["file"]].parent),
                                            sample_key=r["line"]))
        assert len(encoded["input_ids"]) == r["total_tokens"], (path, r["line"])
    assert sum(r["num_images"] > 1 for r in rows) >= 3 and max(r["total_tokens"] for r in rows) > 900


def test_figures_memory_and_migration_follow_the_family(chain):
    family, model, folder, _ = chain
    figures = folder / "analysis" / "figures"
    for name in ("token_distribution.png", "packing_efficiency.png", "comparison_table.md", "memory_estimates.md"):
        assert (figures / name).is_file(), name
    memory = (figures / "memory_estimates.md").read_text()
    assert f"- Model shape from `{model}/config.json`:" in memory
    assert ("MoE in 2 layers: 4 experts resident, 2 per token" in memory) == family.text.moe
    rec = json.loads((folder / "analysis" / "recommendations.json").read_text())["recommended"]
    packed = yaml.safe_load((folder / "sft_packed.yaml").read_text())
    assert packed["training"]["packing"] is True
    assert packed["training"]["global_max_length"] == rec["global_max_length"]


def test_packed_training_runs_the_family_template_on_the_planned_lengths(chain):
    family, _, folder, log = chain
    out = folder / "train"
    args = json.loads((out / "args.json").read_text())
    assert (args["model_type"], args["template"], args["attn_impl"]) == (
        family.swift_model_type, family.packing_template, "swiftpack_varlen")
    logs = [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert [r["global_step/max_steps"] for r in logs] == ["1/2", "2/2"]
    assert all(math.isfinite(r["loss"]) and r["samples_per_step"] >= 1 for r in logs)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # the training plan counted the same lengths the analysis reported (whole records, first 16 per file)
    samples = json.loads((out / "packing" / "samples.json").read_text())
    planned = {(str(REPO / samples["jsonl"][f]), l): n for f, l, n, p in zip(
        samples["files"], samples["lines"], samples["lengths"], samples["parts"]) if p == -1}
    analysed = {(str(SAMPLES[r["file"]]), r["line"]): r["total_tokens"]
                for r in read_jsonl(folder / "analysis" / "sample_stats.jsonl") if r["file"] < 2}
    common = {k for k in analysed if k in planned}
    assert len(common) >= MAX_RECORDS and all(planned[k] == analysed[k] for k in common)
    assert "Traceback" not in log
    hybrid = "linear attention (3 of 4 layers): per-segment"
    assert (log.count(f"swiftpack attention: full attention: swiftpack_varlen; {hybrid}") == 1) == \
        ("linear_attention" in family.hooks)


def test_two_ranks_each_train_their_own_packs(chain):
    family, _, folder, _ = chain
    world = RANKS[family.model_type]
    served = [read_jsonl(folder / "train" / "packing" / f"served_rank{r}.jsonl") for r in range(world)]
    assert [[s["step"] for s in steps] for steps in served] == [[1, 2]] * world
    positions = [p for steps in served for s in steps for p in s["positions"]]
    assert sorted(positions) == list(range(2 * world))  # each rank its dealt packs, none twice
