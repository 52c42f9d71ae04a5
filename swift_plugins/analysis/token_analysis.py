"""`scripts/analyze_token_lengths.py`: exact token lengths, packing simulations and a recommended config.

    python scripts/analyze_token_lengths.py --model_path M --train_jsonl J \\
        --output_dir docs/temp_packed_dataset --max_samples 0

writes into ``--output_dir`` (each atomically):

    dataset_stats.json        num_samples, mean/median/max/p95/p99 of total, text and image tokens, skips
    sample_stats.jsonl        one line per record: line, text_tokens, image_tokens, total_tokens, num_objects
    packing_simulations.json  one entry per (global_max_length, strategy[, buffer]) from swift_plugins.packing
    recommendations.json      recommended global_max_length + the numbers behind it
    skipped_records.jsonl     every record left out under --on_error skip, with its reason
    analysis_full.log         everything printed, plus timings

``text_tokens`` counts every non-image token of the training sequence (chat markers, prompt,
``<|vision_start|>``/``<|vision_end|>``, the answer); ``image_tokens`` the ``<|image_pad|>``
tokens; ``total_tokens`` = their sum = ``len(template.encode(row)["input_ids"])``.

Steps: ``steps_per_epoch = num_packs / effective_batch_size`` with one packed row per device
batch (the seeds' 7,091 packs / 128 = 55.4); ``optimizer_steps_per_epoch`` rounds it up.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from swift_plugins.data import ON_ERROR_CHOICES, ConversationOptions, atomic_write_text
from swift_plugins.packing import STRATEGIES, plan_packs

logger = logging.getLogger("swiftpack.analysis")

AUTO_MAX_LENGTH_FACTORS = (1.5, 2.0, 2.5, 3.0)


def auto_max_lengths(total_tokens: np.ndarray, step: int = 1000) -> list[int]:
    """Lengths around the distribution: 1.5, 2, 2.5 and 3 x the p99 sample, rounded up to ``step``.

    >>> auto_max_lengths(np.array([7888.1]))  # the seeds' LVIS p99 -> the lengths they simulated
    [12000, 16000, 20000, 24000]
    """
    p99 = float(np.percentile(total_tokens, 99)) if len(total_tokens) else float(step)
    return sorted({max(step, math.ceil(p99 * f / step) * step) for f in AUTO_MAX_LENGTH_FACTORS})


# ------------------------------------------------------------------------------- pure parts
def describe(values: np.ndarray, name: str) -> dict:
    """mean/median/min/max/p95/p99 of ``values`` under keys like ``mean_total_tokens``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {f"{k}_{name}": 0.0 for k in ("mean", "median", "min", "max", "p95", "p99", "sum")}
    return {
        f"mean_{name}": round(float(v.mean()), 2),
        f"median_{name}": float(np.median(v)),
        f"min_{name}": int(v.min()),
        f"max_{name}": int(v.max()),
        f"p95_{name}": round(float(np.percentile(v, 95)), 2),
        f"p99_{name}": round(float(np.percentile(v, 99)), 2),
        f"sum_{name}": int(v.sum()),
    }


def dataset_stats(lengths, summary: dict) -> dict:
    total = lengths.total_tokens
    stats = {"num_samples": int(len(total)), "records_read": summary["read"], "records_skipped": summary["skipped"],
             "records_skipped_by_kind": summary["skipped_by_kind"], "blank_lines": summary["blank_lines"]}
    stats.update(describe(total, "total_tokens"))
    stats.update(describe(lengths.text_tokens, "text_tokens"))
    stats.update(describe(lengths.image_tokens, "image_tokens"))
    stats.update(describe(lengths.num_objects, "num_objects"))
    return stats


def training_steps(num_packs: int, effective_batch_size: int, num_train_epochs: int) -> dict:
    steps = num_packs / effective_batch_size
    per_epoch = math.ceil(steps)
    return {"steps_per_epoch": round(steps, 2), "optimizer_steps_per_epoch": per_epoch,
            "total_optimizer_steps": per_epoch * num_train_epochs}


def simulate(total_tokens: np.ndarray, max_lengths: Sequence[int], strategies: Sequence[str], *, seed: int,
             effective_batch_size: int, num_train_epochs: int, packing_buffer: Optional[int],
             min_fill_ratio: float, drop_last: bool) -> list[dict]:
    """One entry per (max_length, strategy) plus the buffered variant of ``bfd`` with the controls."""
    entries = []
    variants = [(s, None, 0.0, False) for s in strategies]
    if packing_buffer:
        variants.append(("bfd", packing_buffer, min_fill_ratio, drop_last))
    for max_length in max_lengths:
        for strategy, buffer, fill, drop in variants:
            t0 = time.perf_counter()
            plan = plan_packs(total_tokens, max_length, strategy=strategy, seed=seed, buffer_size=buffer,
                              min_fill_ratio=fill, drop_last=drop)
            seconds = time.perf_counter() - t0
            st = plan.stats(total_tokens)
            entry = {
                "global_max_length": int(max_length), "strategy": strategy, "buffer_size": buffer,
                "min_fill_ratio": fill, "drop_last": drop,
                "num_packs": st["num_packs"], "l1_bound": st["l1_bound"],
                "avg_samples_per_pack": round(st["avg_samples_per_pack"], 3),
                "efficiency": round(st["efficiency"], 6),
                "min_fill": round(st["min_fill"], 4), "max_fill": round(st["max_fill"], 4),
                "samples_packed": st["num_packed"], "samples_dropped": st["samples_dropped"],
                "tokens_dropped": st["tokens_dropped"], "dropped_by_reason": st["dropped_by_reason"],
                "samples_per_step": round(st["avg_samples_per_pack"] * effective_batch_size, 1),
                "plan_seconds": round(seconds, 4),
            }
            entry.update(training_steps(st["num_packs"], effective_batch_size, num_train_epochs))
            entries.append(entry)
    return entries


def recommend(simulations: list[dict], stats: dict, *, memory_rows: dict, gpu_memory_gib: float,
              memory_headroom: float, max_drop_fraction: float, effective_batch_size: int, world_size: int,
              per_device_train_batch_size: int, padding_batch_size: int, num_train_epochs: int,
              strategy: str = "bfd") -> dict:
    """Pick global_max_length: the smallest length (most optimizer steps, least memory) whose
    estimated memory fits ``gpu_memory_gib * (1 - memory_headroom)`` and whose dropped fraction is
    at most ``max_drop_fraction``; if none qualifies, the fitting length that drops the fewest."""
    n = max(1, stats["num_samples"])
    budget = gpu_memory_gib * (1 - memory_headroom)
    candidates = []
    for e in simulations:
        if e["strategy"] != strategy or e["buffer_size"] is not None:
            continue
        mem = memory_rows[e["global_max_length"]]["total_gib"]
        candidates.append({**e, "estimated_memory_gib": mem, "memory_headroom_gib": round(gpu_memory_gib - mem, 2),
                           "fits_memory": mem <= budget, "drop_fraction": e["samples_dropped"] / n})
    fitting = [c for c in candidates if c["fits_memory"]]
    good = [c for c in fitting if c["drop_fraction"] <= max_drop_fraction]
    if good:
        best = min(good, key=lambda c: c["global_max_length"])
        reason = (f"smallest global_max_length whose estimated memory ({best['estimated_memory_gib']} GiB) fits "
                  f"{budget:.1f} GiB ({gpu_memory_gib} GiB GPU, {memory_headroom:.0%} headroom) and drops at most "
                  f"{max_drop_fraction:.2%} of samples")
    elif fitting:
        best = min(fitting, key=lambda c: (c["samples_dropped"], c["global_max_length"]))
        reason = (f"no simulated length drops <= {max_drop_fraction:.2%} of samples within memory; this one drops "
                  f"the fewest ({best['samples_dropped']}) - consider overlong='split' to keep every object")
    else:
        best = min(candidates, key=lambda c: c["estimated_memory_gib"]) if candidates else None
        reason = "no simulated length fits the memory budget; this is the smallest estimate - lower the length"
    if best is None:
        return {"recommended": None, "reason": "no simulations"}
    padding_steps = math.ceil(n / effective_batch_size)
    samples_per_pack = best["avg_samples_per_pack"] or 1.0
    # Packs per step that keep samples per optimizer step near the padding run's effective batch,
    # rounded to a multiple of world_size x per-device batch (so gradient accumulation is integral).
    unit = world_size * per_device_train_batch_size
    matching = max(unit, int(round(effective_batch_size / samples_per_pack / unit)) * unit)
    ga = effective_batch_size // unit if effective_batch_size % unit == 0 else None
    return {
        "recommended": {
            "packing": True, "global_max_length": best["global_max_length"], "packing_strategy": strategy,
            "per_device_train_batch_size": per_device_train_batch_size, "effective_batch_size": effective_batch_size,
            "world_size": world_size, "gradient_accumulation_steps": ga, "num_train_epochs": num_train_epochs,
        },
        "reason": reason,
        "why": {
            "efficiency": best["efficiency"], "num_packs": best["num_packs"],
            "avg_samples_per_pack": best["avg_samples_per_pack"], "samples_dropped": best["samples_dropped"],
            "drop_fraction": round(best["drop_fraction"], 6), "tokens_dropped": best["tokens_dropped"],
            "estimated_memory_gib": best["estimated_memory_gib"], "gpu_memory_gib": gpu_memory_gib,
            "memory_headroom_gib": best["memory_headroom_gib"],
            "steps_per_epoch": best["steps_per_epoch"], "optimizer_steps_per_epoch": best["optimizer_steps_per_epoch"],
            "total_optimizer_steps": best["total_optimizer_steps"], "samples_per_step": best["samples_per_step"],
        },
        "padding_baseline": {
            "per_device_train_batch_size": padding_batch_size, "effective_batch_size": effective_batch_size,
            "samples_per_step": effective_batch_size, "optimizer_steps_per_epoch": padding_steps,
            "total_optimizer_steps": padding_steps * num_train_epochs,
        },
        "match_padding_samples_per_step": {
            "effective_batch_size": matching,
            "samples_per_step": round(matching * samples_per_pack, 1),
            "optimizer_steps_per_epoch": math.ceil(best["num_packs"] / matching),
            "note": "packs per optimizer step that keep samples per step near the padding baseline "
                    f"({effective_batch_size}); a multiple of world_size x per-device batch ({unit})",
        },
        "candidates": [{k: c[k] for k in ("global_max_length", "efficiency", "samples_dropped", "estimated_memory_gib",
                                          "fits_memory", "optimizer_steps_per_epoch")} for c in candidates],
    }


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyze_token_lengths.py",
        description="Exact Qwen3-VL token lengths of a detection JSONL (text + image tokens, the same numbers "
                    "ms-swift's template produces), packing simulations over max lengths and strategies, and a "
                    "recommended packing config. Image tokens come from each record's width/height through the "
                    "training path's resize rule; no image is decoded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--model_path", required=True, help="local model folder (tokenizer + processor; weights unused)")
    g.add_argument("--train_jsonl", required=True, help="detection JSONL (see public_data/README.md)")
    g.add_argument("--output_dir", default="docs/temp_packed_dataset", help="where the outputs are written")
    g.add_argument("--max_samples", type=int, default=0, help="analyse only the first N records (0 = all)")
    g.add_argument("--on_error", choices=ON_ERROR_CHOICES, default="raise",
                   help="bad record: raise = stop with path:line: field: reason; skip = leave it out and list it "
                        "in skipped_records.jsonl")
    g.add_argument("--check_images", type=parse_bool, default=True,
                   help="validate that each image file exists and its header size matches width/height "
                        "(false for width/height-only sets)")
    g.add_argument("--num_workers", type=int, default=1,
                   help="processes counting lengths (results identical for any value)")
    g.add_argument("--cache_dir", default=".cache/swiftpack",
                   help="length cache; keyed by data bytes, tokenizer, options and code")
    g.add_argument("--clear-cache", "--clear_cache", dest="clear_cache", action="store_true",
                   help="ignore and rebuild the cache entry for these inputs")
    g = p.add_argument_group("conversation and template (must match training)")
    g.add_argument("--model_type", default="qwen3_vl", help="ms-swift model type")
    g.add_argument("--template", default="qwen3_vl", help="ms-swift template type")
    g.add_argument("--max_pixels", type=int, default=None,
                   help="template max_pixels (ms-swift --max_pixels); images above it are scaled down first")
    g.add_argument("--prompt", default=None, help="user prompt (default: the data layer's DEFAULT_PROMPT)")
    g.add_argument("--object_ordering", default="sorted", choices=("sorted", "random", "none"),
                   help="object order in the answer (does not change lengths, kept for the cache key)")
    g.add_argument("--emit_norm", default="none", choices=("none", "norm1000"), help="coordinate format")
    g.add_argument("--seed", type=int, default=0, help="seed for object ordering and packing plans")
    g = p.add_argument_group("packing simulation")
    g.add_argument("--max_lengths", type=_int_list, default="auto",
                   help="comma-separated global_max_length values to simulate; auto: 1.5, 2, 2.5 and 3 x the "
                        "p99 sample length rounded up to 1,000 (12k/16k/20k/24k for the seeds' LVIS)")
    g.add_argument("--strategies", type=_str_list, default=list(STRATEGIES), help=f"subset of {list(STRATEGIES)}")
    g.add_argument("--packing_buffer", type=int, default=256,
                   help="also simulate bfd planned in windows of this many samples (0 = skip)")
    g.add_argument("--packing_min_fill_ratio", type=float, default=0.7, help="min fill for the buffered variant")
    g.add_argument("--packing_drop_last", type=parse_bool, default=True, help="drop_last for the buffered variant")
    g = p.add_argument_group("training setup (steps, recommendation)")
    g.add_argument("--effective_batch_size", type=int, default=128, help="packs (rows) per optimizer step")
    g.add_argument("--world_size", type=int, default=4, help="GPUs")
    g.add_argument("--per_device_train_batch_size", type=int, default=1, help="packed rows per device batch")
    g.add_argument("--padding_batch_size", type=int, default=2, help="per-device batch of the padding baseline")
    g.add_argument("--num_train_epochs", type=int, default=4, help="epochs")
    g.add_argument("--gpu_memory_gib", type=float, default=80.0, help="memory of one GPU")
    g.add_argument("--memory_headroom", type=float, default=0.15, help="fraction of GPU memory kept free")
    g.add_argument("--tuner", choices=("lora", "dora", "full"), default="dora", help="for the memory estimate")
    g.add_argument("--lora_rank", type=int, default=16, help="for the memory estimate")
    g.add_argument("--zero_stage", type=int, choices=(0, 1, 2, 3), default=2, help="for the memory estimate")
    g.add_argument("--gradient_checkpointing", type=parse_bool, default=True, help="for the memory estimate")
    g.add_argument("--max_drop_fraction", type=float, default=0.001,
                   help="largest fraction of samples the recommended length may drop")
    return p


def parse_bool(s: str) -> bool:
    """argparse type for true/false flags (1/0, yes/no accepted)."""
    if s.lower() in {"1", "true", "yes"}:
        return True
    if s.lower() in {"0", "false", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _int_list(s: str):
    if s == "auto":
        return s
    try:
        values = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return values


def _str_list(s: str) -> list[str]:
    values = [x.strip() for x in s.split(",") if x.strip()]
    bad = [v for v in values if v not in STRATEGIES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad}; choose from {list(STRATEGIES)}")
    return values


class _Progress:
    """tqdm progress on stderr for the counting pass (lines done)."""

    def __init__(self, path: str, max_records: int):
        from tqdm import tqdm

        total = max_records or _count_lines(path)
        self.bar = tqdm(total=total, desc="counting tokens", unit="rec", file=sys.stderr, mininterval=1.0)
        self.done = 0

    def __call__(self, done: int):
        self.bar.update(min(done, self.bar.total) - self.done)
        self.done = min(done, self.bar.total)

    def close(self):
        self.bar.close()


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            n += block.count(b"\n")
    return n


def _write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace) -> dict:
    from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table, setup_dict
    from swift_plugins.dataset_lengths import count_dataset, load_counter

    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "analysis_full.log")
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    t_start = time.perf_counter()
    options = ConversationOptions(prompt=args.prompt, object_ordering=args.object_ordering, emit_norm=args.emit_norm,
                                  seed=args.seed)
    log(f"analyze_token_lengths: {args.train_jsonl} with {args.model_path} (template {args.template}, "
        f"max_pixels {args.max_pixels})")
    t0 = time.perf_counter()
    counter = load_counter(args.model_path, model_type=args.model_type, template_type=args.template,
                           max_pixels=args.max_pixels, user_texts=("<image>" + options.resolved_prompt,),
                           cache_dir=args.cache_dir or None, clear_cache=args.clear_cache)
    log(f"template calibrated in {time.perf_counter() - t0:.1f}s; image rule {counter.rule.to_dict()}")

    t0 = time.perf_counter()
    progress = _Progress(args.train_jsonl, args.max_samples)
    try:
        lengths = count_dataset(args.train_jsonl, counter, options, on_error=args.on_error,
                                report_path=os.path.join(args.output_dir, "skipped_records.jsonl"),
                                check_images=args.check_images, max_records=args.max_samples,
                                num_workers=args.num_workers, cache_dir=args.cache_dir or None,
                                clear_cache=args.clear_cache, progress=progress)
    finally:
        progress.close()
    summary = lengths.summary.to_dict()
    log(f"counted {len(lengths)} records in {time.perf_counter() - t0:.1f}s "
        f"({'from cache' if lengths.from_cache else f'{args.num_workers} worker(s)'})")
    log(lengths.summary.log_line())

    stats = dataset_stats(lengths, summary)
    stats["inputs"] = {"train_jsonl": args.train_jsonl, "model_path": args.model_path, "template": args.template,
                       "max_pixels": args.max_pixels, "conversation": options.to_dict(),
                       "image_rule": counter.rule.to_dict(), "max_samples": args.max_samples}
    _write_json(os.path.join(args.output_dir, "dataset_stats.json"), stats)
    total = lengths.total_tokens
    sample_lines = (json.dumps({"line": int(l), "text_tokens": int(t), "image_tokens": int(i),
                                "total_tokens": int(t + i), "num_objects": int(o)}) + "\n"
                    for l, t, i, o in zip(lengths.line, lengths.text_tokens, lengths.image_tokens,
                                          lengths.num_objects))
    atomic_write_text(os.path.join(args.output_dir, "sample_stats.jsonl"), "".join(sample_lines))
    log(f"tokens per sample: total mean {stats['mean_total_tokens']}, median {stats['median_total_tokens']}, "
        f"p95 {stats['p95_total_tokens']}, p99 {stats['p99_total_tokens']}, max {stats['max_total_tokens']}; "
        f"image mean {stats['mean_image_tokens']}, text mean {stats['mean_text_tokens']}")

    if args.max_lengths == "auto":
        args.max_lengths = auto_max_lengths(total)
        log(f"max lengths (auto, around p99 {stats['p99_total_tokens']}): {args.max_lengths}")
    t0 = time.perf_counter()
    sims = simulate(total, args.max_lengths, args.strategies, seed=args.seed,
                    effective_batch_size=args.effective_batch_size, num_train_epochs=args.num_train_epochs,
                    packing_buffer=args.packing_buffer or None, min_fill_ratio=args.packing_min_fill_ratio,
                    drop_last=args.packing_drop_last)
    _write_json(os.path.join(args.output_dir, "packing_simulations.json"), sims)
    log(f"packing simulations ({len(sims)}) in {time.perf_counter() - t0:.1f}s:")
    log(f"  {'max_len':>8} {'strategy':>9} {'buffer':>6} {'packs':>7} {'smp/pack':>8} {'effic.':>8} "
        f"{'dropped':>7} {'steps/ep':>8}")
    for e in sims:
        log(f"  {e['global_max_length']:>8} {e['strategy']:>9} {str(e['buffer_size'] or '-'):>6} {e['num_packs']:>7} "
            f"{e['avg_samples_per_pack']:>8.2f} {e['efficiency']:>8.2%} {e['samples_dropped']:>7} "
            f"{e['steps_per_epoch']:>8}")

    shape = ModelShape.from_config(args.model_path)
    setup = MemorySetup(tuner=args.tuner, lora_rank=args.lora_rank, zero_stage=args.zero_stage,
                        gradient_checkpointing=args.gradient_checkpointing, world_size=args.world_size)
    mem_rows = {r["seq_len"]: r for r in memory_table(shape, args.max_lengths, setup)}
    rec = recommend(sims, stats, memory_rows=mem_rows, gpu_memory_gib=args.gpu_memory_gib,
                    memory_headroom=args.memory_headroom, max_drop_fraction=args.max_drop_fraction,
                    effective_batch_size=args.effective_batch_size, world_size=args.world_size,
                    per_device_train_batch_size=args.per_device_train_batch_size,
                    padding_batch_size=args.padding_batch_size, num_train_epochs=args.num_train_epochs)
    rec["memory"] = {"model_params": shape.total_params, "setup": setup_dict(setup), "gpu_memory_gib": args.gpu_memory_gib,
                     "per_length": [mem_rows[n] for n in args.max_lengths]}
    _write_json(os.path.join(args.output_dir, "recommendations.json"), rec)
    if rec.get("recommended"):
        r, why = rec["recommended"], rec["why"]
        log(f"recommended: global_max_length {r['global_max_length']} ({rec['reason']}): efficiency "
            f"{why['efficiency']:.2%}, {why['samples_dropped']} dropped, ~{why['estimated_memory_gib']} GiB/GPU, "
            f"{why['optimizer_steps_per_epoch']} optimizer steps/epoch at effective batch {r['effective_batch_size']}")
    log(f"outputs in {os.path.abspath(args.output_dir)} (total {time.perf_counter() - t_start:.1f}s)")
    atomic_write_text(log_path, "\n".join(log_lines) + "\n")
    return {"stats": stats, "simulations": sims, "recommendations": rec}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0
