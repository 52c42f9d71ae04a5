"""`make demo`: the whole pipeline on the bundled samples with the tiny model, about 10 minutes on 2 CPU cores.

The bundled samples: 200 LVIS detection records (public_data/lvis/sample) and 40 ms-swift
messages rows (public_data/messages/sample: captions, VQA, grounding, multi-image, multi-turn),
analysed and trained together, as configs/tiny/sft_padding.yaml lists them.

    1. build the tiny offline Qwen3-VL                 model_cache/tiny-qwen3-vl
    2. exact token analysis + packing simulations      demo_output/analysis/
    3. figures and tables                              demo_output/analysis/figures/
    4. padding -> packing config migration             demo_output/sft_packed.yaml
    5. packed training on CPU, one epoch              demo_output/train/   (--train_steps N: N steps)

The plan holds every record of the bundled samples (dense scenes as pieces, so no object is
dropped), and the epoch trains all of them; the summary gives both accountings: records in =
planned + skipped + lost, and the records the run actually trained, from the packs each step's
batches held (``packing/served_rank0.jsonl``) mapped to their records (``packing/samples.json``).
Most of its time is the epoch (46 optimizer steps of the tiny model; measured times: README.md's
introduction, docs/benchmarks.md "make demo"); ``--train_steps 2`` stops after two steps for a quick look.

Each step is the same command a user runs (printed before it runs), so the demo doubles as a
walkthrough; see docs/migration.md for the real 4-GPU version.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

TRAIN_JSONL = ["public_data/lvis/sample/train.jsonl", "public_data/messages/sample/train.jsonl"]
MODEL = "model_cache/tiny-qwen3-vl"
PADDING_CONFIG = "configs/tiny/sft_padding.yaml"


def steps(out: str, train_steps: int) -> list[tuple[str, list[str]]]:
    py = sys.executable
    analysis = f"{out}/analysis"
    return [
        ("build the tiny offline Qwen3-VL", [py, "scripts/make_tiny_model.py", MODEL]),
        ("exact token lengths + packing simulations", [
            py, "scripts/analyze_token_lengths.py", "--model_path", MODEL, "--train_jsonl", *TRAIN_JSONL, "--output_dir", analysis, "--on_error", "skip", "--max_pixels", "262144",
            "--max_lengths", "2000,4000,8000", "--effective_batch_size", "4", "--padding_batch_size", "2",
            "--world_size", "1", "--num_train_epochs", "3", "--tuner", "dora", "--lora_rank", "4",
            "--zero_stage", "0", "--gradient_checkpointing", "false", "--gpu_memory_gib", "10",
            "--max_drop_fraction", "0.1"]),
        ("figures, comparison table, memory estimates", [
            py, "scripts/visualize_packing_results.py", "--input_dir", analysis, "--config", PADDING_CONFIG,
            "--world_size", "1"]),
        ("migrate the padding config to packing", [
            py, "scripts/migrate_to_packing.py", "--padding_config", PADDING_CONFIG, "--analysis_dir", analysis,
            "--output", f"{out}/sft_packed.yaml", "--world_size", "1"]),
        (f"packed training on CPU, {f'{train_steps} optimizer steps' if train_steps else 'one epoch'}", [
            py, "-m", "swift_plugins.sft", "--config", f"{out}/sft_packed.yaml", "--training.max_steps",
            str(train_steps) if train_steps else "null", "--training.num_train_epochs", "1", "--training.output_dir",
            f"{out}/train", "--training.add_version", "false", "--custom.val_jsonl", "null",
            "--training.save_steps", str(train_steps or 100000), "--training.logging_steps", "1",
            "--training.log_data_order", "true"]),
    ]


def records_of(samples: dict, indices) -> set:
    """The (file, line) records that sample ``indices`` of ``packing/samples.json`` come from."""
    return {(samples["files"][i], samples["lines"][i]) for i in indices}


def trained_records(train_dir: pathlib.Path) -> tuple[int, int]:
    """(records, samples) the run trained, from what each step's batches held (not from the plan)."""
    samples = json.loads((train_dir / "packing" / "samples.json").read_text())
    trained = [i for path in sorted((train_dir / "packing").glob("served_rank*.jsonl"))
               for step in map(json.loads, path.read_text().splitlines()) for pack in step["samples"] for i in pack]
    return len(records_of(samples, trained)), len(trained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run analysis -> figures -> migration -> packed training on the "
                                                 "bundled sample with the tiny model.")
    parser.add_argument("--output_dir", default="demo_output", help="where everything is written")
    parser.add_argument("--train_steps", type=int, default=0,
                        help="optimizer steps of the packed training; 0: one full epoch (every record trained)")
    args = parser.parse_args(argv)
    repo = pathlib.Path(__file__).resolve().parents[2]
    os.chdir(repo)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MODELSCOPE_OFFLINE="1")
    plan = steps(args.output_dir, args.train_steps)
    t0 = time.time()
    for k, (title, cmd) in enumerate(plan, 1):
        print(f"\n=== [{k}/{len(plan)}] {title}\n$ {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}",
              flush=True)
        started = time.time()
        code = subprocess.call(cmd, env=env)
        if code != 0:
            print(f"demo: step {k} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"=== [{k}/{len(plan)}] done in {time.time() - started:.0f}s", flush=True)
    out = pathlib.Path(args.output_dir)
    summary = json.loads((out / "train" / "packing" / "summary.json").read_text())["train"]
    records, samples = trained_records(out / "train")
    packs = json.loads((out / "train" / "packing" / "plan.json").read_text())["packs"]
    planned = len(records_of(json.loads((out / "train" / "packing" / "samples.json").read_text()),
                             [i for pack in packs for i in pack]))
    lost = summary["records_read"] - summary["records_skipped"] - planned  # dropped by the plan, listed with reasons
    kinds = ", ".join(f"{f['records_by_kind']['lvis']} lvis + {f['records_by_kind']['messages']} messages from "
                      f"{f['jsonl']}" for f in summary["files"])
    print(f"\nDemo finished in {time.time() - t0:.0f}s. Records in {summary['records_read']} ({kinds}) = in the "
          f"plan {planned} (as {summary['samples_packed']} samples: {summary['records_split']} dense records split "
          f"into pieces) + skipped {summary['records_skipped']} + lost {lost}; trained by this run: {records} records "
          f"({samples} samples, {summary['optimizer_steps_per_epoch']} steps make the epoch). Outputs:")
    for path, what in [
        (out / "analysis" / "dataset_stats.json", "token statistics (text / image / total)"),
        (out / "analysis" / "packing_simulations.json", "packing simulations per length and strategy"),
        (out / "analysis" / "recommendations.json", "recommended global_max_length and why"),
        (out / "analysis" / "FULL_RESULTS_SUMMARY.md", "summary report"),
        (out / "analysis" / "figures", "token_distribution.png, packing_efficiency.png, comparison_table.md, "
                                       "memory_estimates.md"),
        (out / "sft_packed.yaml", "the migrated packing config"),
        (out / "train", f"packed run: {summary['samples_packed']} samples in {summary['num_packs']} packs of "
                        f"{summary['global_max_length']} tokens, efficiency {summary['efficiency']:.1%}; "
                        "logging.jsonl, packing/, checkpoint"),
    ]:
        print(f"  {path}  - {what}")
    return 0
