"""Statistics, packing simulations and the recommended ``global_max_length``, from exact lengths (pure).

    lengths --describe--> mean / median / p95 / p99 / max of total, text and image tokens
            --simulate(max_lengths x strategies [+ buffered variant])--> one plan_packs entry each
            --recommend(memory estimate per length)--> the smallest length that fits memory and
              drops at most max_drop_fraction of the samples

Steps: ``steps_per_epoch = num_packs / effective_batch_size`` with one packed row per device batch
(7,091 packs / 128 = 55.4 on LVIS at 20,000 tokens); ``optimizer_steps_per_epoch`` rounds it up.
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from swift_plugins.packing.planner import DEFAULT_STRATEGY, plan_packs

__all__ = ["AUTO_MAX_LENGTH_FACTORS", "auto_max_lengths", "dataset_stats", "describe", "recommend", "simulate",
           "training_steps"]

AUTO_MAX_LENGTH_FACTORS = (1.5, 2.0, 2.5, 3.0)


def auto_max_lengths(total_tokens: np.ndarray, step: int = 1000) -> list[int]:
    """Lengths around the distribution: 1.5, 2, 2.5 and 3 x the p99 sample, rounded up to ``step``.

    >>> auto_max_lengths(np.array([7888.1]))  # LVIS rescale_32_768_poly_20's p99 -> 12k ... 24k
    [12000, 16000, 20000, 24000]
    """
    p99 = float(np.percentile(total_tokens, 99)) if len(total_tokens) else float(step)
    return sorted({max(step, math.ceil(p99 * f / step) * step) for f in AUTO_MAX_LENGTH_FACTORS})


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
             min_fill_ratio: float, drop_last: bool,
             split_samples: Optional[Mapping[int, tuple]] = None) -> list[dict]:
    """One entry per (max_length, strategy) plus the buffered variant of the default strategy, each
    with ``overlong: drop``; with ``split_samples`` the same again with ``overlong: split``.

    ``split_samples[L] = (sample lengths, records split, records unsplittable)``: the samples
    training makes at ``global_max_length`` L with ``packing_overlong: split``
    (:func:`swift_plugins.packing.samples.split_overlong`: the exact lengths of the pieces).
    ``records_lost`` counts what a plan trains nothing of: dropped samples (drop: the overlong
    records themselves) plus unsplittable records. Worked, lengths [30, 120] at L 100: drop ->
    1 pack, records_lost 1; split (120 -> pieces 60 + 60) -> samples [30, 60, 60], 2 packs,
    records_split 1, records_lost 0.
    """
    entries = []
    variants = [(s, None, 0.0, False) for s in strategies]
    if packing_buffer:
        variants.append((DEFAULT_STRATEGY, packing_buffer, min_fill_ratio, drop_last))
    inputs = []
    for max_length in max_lengths:
        inputs.append((max_length, "drop", np.asarray(total_tokens), 0, 0))
        if split_samples is not None:
            lengths, records_split, unsplittable = split_samples[max_length]
            inputs.append((max_length, "split", np.asarray(lengths), int(records_split), int(unsplittable)))
    for max_length, overlong, lengths, records_split, unsplittable in inputs:
        for strategy, buffer, fill, drop in variants:
            t0 = time.perf_counter()
            plan = plan_packs(lengths, max_length, strategy=strategy, seed=seed, buffer_size=buffer,
                              min_fill_ratio=fill, drop_last=drop)
            seconds = time.perf_counter() - t0
            st = plan.stats(lengths)
            entry = {
                "global_max_length": int(max_length), "strategy": strategy, "buffer_size": buffer,
                "min_fill_ratio": fill, "drop_last": drop, "overlong": overlong,
                "samples": int(len(lengths)), "records_split": records_split, "records_unsplittable": unsplittable,
                "num_packs": st["num_packs"], "l1_bound": st["l1_bound"],
                "avg_samples_per_pack": round(st["avg_samples_per_pack"], 3),
                "efficiency": round(st["efficiency"], 6),
                "min_fill": round(st["min_fill"], 4), "max_fill": round(st["max_fill"], 4),
                "samples_packed": st["num_packed"], "samples_dropped": st["samples_dropped"],
                "records_lost": st["samples_dropped"] + unsplittable,
                "packed_tokens": st["packed_tokens"], "tokens_dropped": st["tokens_dropped"],
                "dropped_by_reason": st["dropped_by_reason"],
                "samples_per_step": round(st["avg_samples_per_pack"] * effective_batch_size, 1),
                "plan_seconds": round(seconds, 4),
            }
            entry.update(training_steps(st["num_packs"], effective_batch_size, num_train_epochs))
            entries.append(entry)
    return entries


def recommend(simulations: list[dict], stats: dict, *, memory_rows: dict, gpu_memory_gib: float,
              memory_headroom: float, max_drop_fraction: float, effective_batch_size: int, world_size: int,
              per_device_train_batch_size: int, padding_batch_size: int, num_train_epochs: int,
              strategy: str = DEFAULT_STRATEGY, overlong: str = "drop") -> dict:
    """Pick global_max_length among the ``strategy`` / one-window / ``overlong`` simulations whose
    estimated memory fits ``gpu_memory_gib * (1 - memory_headroom)``, in this order:

    1. the smallest length that loses nothing (``records_lost`` 0: every record trained);
    2. else the smallest whose lost fraction is at most ``max_drop_fraction``;
    3. else the fitting length that loses the fewest; none fitting: the smallest estimate.

    The smallest qualifying length gives the most optimizer steps and needs the least memory.
    ``overlong="split"`` (detection data: dense scenes are cut, not dropped) is what the analysis
    passes when the data holds detection records."""
    n = max(1, stats["num_samples"])
    budget = gpu_memory_gib * (1 - memory_headroom)
    candidates = []
    for e in simulations:
        if e["strategy"] != strategy or e["buffer_size"] is not None or e["overlong"] != overlong:
            continue
        mem = memory_rows[e["global_max_length"]]["total_gib"]
        candidates.append({**e, "estimated_memory_gib": mem, "memory_headroom_gib": round(gpu_memory_gib - mem, 2),
                           "fits_memory": mem <= budget, "drop_fraction": e["records_lost"] / n})
    fits = (f"estimated memory ({{}} GiB) fits {budget:.1f} GiB ({gpu_memory_gib} GiB GPU, {memory_headroom:.0%} "
            f"headroom)")
    best, reason = _pick_length(candidates, fits, max_drop_fraction, overlong)
    if best is None:
        return {"recommended": None, "reason": "no simulations"}
    unit = world_size * per_device_train_batch_size
    return {
        "recommended": {
            "packing": True, "global_max_length": best["global_max_length"], "packing_strategy": strategy,
            "packing_overlong": overlong,
            "per_device_train_batch_size": per_device_train_batch_size, "effective_batch_size": effective_batch_size,
            "world_size": world_size,
            "gradient_accumulation_steps": effective_batch_size // unit if effective_batch_size % unit == 0 else None,
            "num_train_epochs": num_train_epochs,
        },
        "reason": reason,
        "why": _why(best, gpu_memory_gib),
        "padding_baseline": _padding_baseline(n, padding_batch_size, effective_batch_size, num_train_epochs),
        "match_padding_samples_per_step": _match_padding(best, effective_batch_size, unit),
        "candidates": [{k: c[k] for k in ("global_max_length", "overlong", "efficiency", "samples_dropped",
                                          "records_lost", "estimated_memory_gib", "fits_memory",
                                          "optimizer_steps_per_epoch")} for c in candidates],
    }


def _pick_length(candidates: list[dict], fits: str, max_drop_fraction: float,
                 overlong: str) -> tuple[Optional[dict], str]:
    """(the chosen candidate or None when there is none, the reason) by the order of :func:`recommend`;
    ``fits`` is the memory sentence with ``{}`` for the estimate."""
    fitting = [c for c in candidates if c["fits_memory"]]
    lossless = [c for c in fitting if c["records_lost"] == 0]
    good = [c for c in fitting if c["drop_fraction"] <= max_drop_fraction]
    if lossless:
        best = min(lossless, key=lambda c: c["global_max_length"])
        reason = (f"smallest global_max_length whose {fits.format(best['estimated_memory_gib'])} and that trains "
                  f"every record (overlong {overlong})")
    elif good:
        best = min(good, key=lambda c: c["global_max_length"])
        reason = (f"smallest global_max_length whose {fits.format(best['estimated_memory_gib'])} and that loses at "
                  f"most {max_drop_fraction:.2%} of the records (overlong {overlong})")
    elif fitting:
        best = min(fitting, key=lambda c: (c["records_lost"], c["global_max_length"]))
        reason = (f"no simulated length loses <= {max_drop_fraction:.2%} of the records within memory; this one loses "
                  f"the fewest ({best['records_lost']}, overlong {overlong})")
    else:
        best = min(candidates, key=lambda c: c["estimated_memory_gib"]) if candidates else None
        reason = "no simulated length fits the memory budget; this is the smallest estimate - lower the length"
    return best, reason


def _why(best: dict, gpu_memory_gib: float) -> dict:
    """The chosen simulation's numbers behind the recommendation."""
    return {
        "efficiency": best["efficiency"], "num_packs": best["num_packs"],
        "avg_samples_per_pack": best["avg_samples_per_pack"], "samples_dropped": best["samples_dropped"],
        "records_split": best["records_split"], "records_lost": best["records_lost"],
        "drop_fraction": round(best["drop_fraction"], 6), "tokens_dropped": best["tokens_dropped"],
        "estimated_memory_gib": best["estimated_memory_gib"], "gpu_memory_gib": gpu_memory_gib,
        "memory_headroom_gib": best["memory_headroom_gib"],
        "steps_per_epoch": best["steps_per_epoch"], "optimizer_steps_per_epoch": best["optimizer_steps_per_epoch"],
        "total_optimizer_steps": best["total_optimizer_steps"], "samples_per_step": best["samples_per_step"],
    }


def _padding_baseline(n: int, padding_batch_size: int, effective_batch_size: int, num_train_epochs: int) -> dict:
    """The padding run's steps: ``n`` samples, ``effective_batch_size`` per step (100, 8 -> 13 per epoch)."""
    padding_steps = math.ceil(n / effective_batch_size)
    return {"per_device_train_batch_size": padding_batch_size, "effective_batch_size": effective_batch_size,
            "samples_per_step": effective_batch_size, "optimizer_steps_per_epoch": padding_steps,
            "total_optimizer_steps": padding_steps * num_train_epochs}


def _match_padding(best: dict, effective_batch_size: int, unit: int) -> dict:
    """Packs per step that keep samples per optimizer step near the padding run's effective batch, rounded to
    a multiple of ``unit`` = world_size x per-device batch (so gradient accumulation is integral): 128 samples
    per step, 4.0 samples per pack, unit 8 -> 32 packs per step."""
    samples_per_pack = best["avg_samples_per_pack"] or 1.0
    matching = max(unit, int(round(effective_batch_size / samples_per_pack / unit)) * unit)
    return {
        "effective_batch_size": matching,
        "samples_per_step": round(matching * samples_per_pack, 1),
        "optimizer_steps_per_epoch": math.ceil(best["num_packs"] / matching),
        "note": "packs per optimizer step that keep samples per step near the padding baseline "
                f"({effective_batch_size}); a multiple of world_size x per-device batch ({unit})",
    }


