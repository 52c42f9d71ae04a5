"""`scripts/visualize_packing_results.py`: figures and tables from an analysis folder.

    python scripts/visualize_packing_results.py --input_dir docs/temp_packed_dataset \\
        --output_dir docs/temp_packed_dataset/figures [--config configs/dlora/sft_text_only_padding.yaml]

reads what ``scripts/analyze_token_lengths.py`` wrote (``dataset_stats.json``,
``sample_stats.jsonl``, ``packing_simulations.json``, ``recommendations.json``) and writes,
each atomically::

    OUTPUT/token_distribution.png   total-token histogram, text vs image scatter, CDF, box plots
    OUTPUT/packing_efficiency.png   efficiency, samples/pack, dropped, fill vs max_length per strategy
    OUTPUT/comparison_table.md      padding vs packing, every number computed (see below)
    OUTPUT/memory_estimates.md      GPU memory per max_length (swift_plugins.analysis.memory)
    INPUT/FULL_RESULTS_SUMMARY.md   executive summary, stats, simulations, recommended YAML, checklist

Nothing is re-simulated: packing numbers are entries of ``packing_simulations.json``; the
padding side is computed from ``sample_stats.jsonl`` and the training setup. The setup (world
size, effective batch, per-device batches, epochs, tuner, ZeRO stage, ...) comes from
``--config`` (resolved with ``swift_plugins.config``, ``extends`` followed) or, without it, from
the analysis' own CLI setup stored in ``recommendations.json``.

The definitions (padding overhead, steps) are in :mod:`swift_plugins.analysis.outputs`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from swift_plugins.analysis import memory as memory_module
from swift_plugins.analysis.figures import plot_packing_efficiency, plot_token_distribution
from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table
from swift_plugins.analysis.migrate import default_output
from swift_plugins.analysis.outputs import (Analysis, TrainingSetup, ceil_steps, find_simulation, fmt_int, fmt_num,
                                            fmt_pct, fmt_val, inputs_text, load_analysis, padding_overhead, padding_rows,
                                            setup_from_analysis, setup_from_config, total_steps, variant_text)
from swift_plugins.analysis.folder import record_derived
from swift_plugins.checks import model_dir_problem, number_problem, raise_problems, writable_dir_problem
from swift_plugins.errors import ArgumentParser, run_main
from swift_plugins.files import atomic_write_text, staged_files

__all__ = ["MEMORY_COLUMNS", "build_parser", "comparison_rows", "comparison_table_md", "main", "memory_estimates",
           "memory_estimates_md", "summary_md", "write_report"]


def _padding_side(analysis: Analysis, setup: TrainingSetup) -> dict:
    return padding_rows(analysis.total_tokens, setup.padding_max_length, setup.truncation_strategy)



def _ga(effective: int, per_device: int, world: int) -> str:
    unit = per_device * world
    if effective % unit:
        return f"not integral ({effective} / ({per_device} x {world}))"
    return fmt_int(effective // unit)


def comparison_rows(analysis: Analysis, setup: TrainingSetup) -> tuple[list[tuple[str, str, str, str]], dict]:
    """Rows ``(parameter, padding, packing, note)`` of the padding vs packing table, and the raw numbers."""
    entry, exact = find_simulation(analysis.simulations, setup.global_max_length, setup.packing_strategy,
                                   setup.packing_buffer, setup.min_fill_ratio, setup.drop_last, setup.packing_overlong)
    pad = _padding_side(analysis, setup)
    ov = padding_overhead(pad["lengths"], setup.padding_batch_size)
    ov_shuffled = padding_overhead(pad["lengths"], setup.padding_batch_size, seed=setup.shuffle_seed)
    E, eff, W = setup.num_train_epochs, setup.effective_batch_size, setup.world_size
    n = analysis.num_samples
    packs = int(entry["num_packs"])
    packed = int(entry["samples_packed"])
    # split pieces each repeat the prompt and the image: count the packed tokens the plan holds
    packed_tokens = int(entry.get("packed_tokens", int(analysis.stats["sum_total_tokens"]) - int(entry["tokens_dropped"])))
    capacity = packs * setup.global_max_length
    pad_steps, pack_steps = ceil_steps(pad["rows"], eff), ceil_steps(packs, eff)
    pad_total, pack_total = total_steps(pad_steps, E, setup.max_steps), total_steps(pack_steps, E, setup.max_steps)
    pack_sps = packed / packs * eff if packs else 0.0
    raw = {
        "entry": entry, "exact_variant": exact, "padding_rows": pad["rows"], "padding_dropped": pad["dropped"],
        "padding_truncated": pad["truncated"], "padding": ov, "padding_shuffled": ov_shuffled,
        "padding_steps_per_epoch": pad_steps, "packing_steps_per_epoch": pack_steps,
        "padding_total_steps": pad_total, "packing_total_steps": pack_total,
        "packing_samples_per_step": pack_sps, "packed_tokens": packed_tokens, "capacity": capacity,
    }
    longest = int(pad["lengths"].max()) if pad["rows"] else 0
    skipped = int(analysis.stats.get("records_skipped", 0))
    max_len_pad = (f"{fmt_int(setup.padding_max_length)} (template.max_length)" if setup.padding_max_length
                   else f"none: longest sample {fmt_int(longest)}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(entry["dropped_by_reason"].items())) or "none"
    steps_note = (f"training.max_steps {setup.max_steps} overrides epochs in both modes" if setup.max_steps
                  else "ceil(num_train_epochs x steps per epoch), as transformers counts")
    rows = [
        ("samples analysed", fmt_int(n), fmt_int(n), "dataset_stats.json num_samples"),
    ] + ([("records skipped as invalid", fmt_int(skipped), fmt_int(skipped),
           "skipped_records.jsonl (not in any count below)")] if skipped else []) + [
        ("max sequence length (tokens)", max_len_pad, fmt_int(setup.global_max_length),
         "packing: tokens per pack (text + image)"),
        ("packing plan", "-", variant_text(entry),
         "packing_simulations.json entry" + ("" if exact else " (this exact buffer / min-fill / drop-last variant "
                                                               "was not simulated: the one-window plan is shown)")),
        ("records lost (not trained)", fmt_int(pad["dropped"]), fmt_int(entry.get("records_lost",
                                                                                  entry["samples_dropped"])),
         f"packing: {reasons}" + (f", {entry['records_unsplittable']} unsplittable" if entry.get("records_unsplittable")
                                  else "") + (f"; padding truncates {pad['truncated']}" if pad["truncated"] else "")),
    ] + ([("records split into pieces", "-", fmt_int(entry["records_split"]),
           f"overlong split: a dense record becomes pieces of the same image ({fmt_int(entry['samples'])} samples "
           "in all)")] if entry.get("records_split") else []) + [
        ("samples trained per epoch", fmt_int(pad["rows"]), fmt_int(packed),
         "records in = trained + lost (a split record trains as its pieces)"),
        ("rows per epoch (samples or packs)", fmt_int(pad["rows"]), fmt_int(packs), "a packing row is one pack"),
        ("per_device_train_batch_size", fmt_int(setup.padding_batch_size), "1", "rows per device per micro-batch"),
        ("world_size", fmt_int(W), fmt_int(W), "GPUs"),
        ("effective_batch_size", fmt_int(eff), fmt_int(eff), "rows per optimizer step, all GPUs"),
        ("gradient_accumulation_steps", _ga(eff, setup.padding_batch_size, W), _ga(eff, 1, W),
         "effective_batch_size / (per_device_train_batch_size x world_size)"),
        ("steps_per_epoch", fmt_int(pad_steps), fmt_int(pack_steps), "ceil(rows per epoch / effective_batch_size)"),
        ("num_train_epochs", fmt_num(E, 1), fmt_num(E, 1), "same"),
        ("total_optimizer_steps", fmt_int(pad_total), fmt_int(pack_total), steps_note),
        ("samples_per_step", fmt_num(eff, 1), fmt_num(pack_sps, 1),
         "packing: samples packed / packs x effective_batch_size"),
        ("real tokens per epoch", fmt_int(ov["real_tokens"]), fmt_int(packed_tokens), "text + image tokens trained"),
        ("padded tokens per epoch", fmt_int(ov["padded_tokens"]), "0",
         f"padding: batches of {setup.padding_batch_size} in data order; packing: a device batch is one pack"),
        ("padding_overhead", fmt_pct(ov["overhead"]), fmt_pct(0.0), "padded tokens / real tokens, data order"),
        (f"padding_overhead, shuffled (seed {setup.shuffle_seed})", fmt_pct(ov_shuffled["overhead"]), fmt_pct(0.0),
         "same after numpy default_rng(seed).permutation"),
        ("efficiency", fmt_pct(ov["efficiency"]), fmt_pct(packed_tokens / capacity if capacity else 0.0),
         "padding: real / (real + padded) tokens; packing: real / (packs x global_max_length)"),
        ("unused pack capacity (tokens)", "-", fmt_int(capacity - packed_tokens),
         "packs x global_max_length - packed tokens"),
    ]
    return rows, raw


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x):
        return str(x).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _setup_lines(setup: TrainingSetup) -> list[str]:
    return [f"- Training setup from: {setup.source}",
            f"- world_size {setup.world_size}, effective_batch_size {setup.effective_batch_size}, padding "
            f"per-device batch {setup.padding_batch_size} ({setup.padding_batch_source}), packing per-device "
            f"batch 1, num_train_epochs "
            f"{setup.num_train_epochs:g}" + (f", max_steps {setup.max_steps}" if setup.max_steps else "")]


def comparison_table_md(analysis: Analysis, setup: TrainingSetup, *, command: str = "") -> str:
    rows, raw = comparison_rows(analysis, setup)
    pad, pack = raw["padding_steps_per_epoch"], raw["packing_steps_per_epoch"]
    ratio = f"{pad / pack:.2f}x fewer" if pack else "-"
    out = ["# Padding vs packing", "",
           f"Generated by `{command or 'scripts/visualize_packing_results.py'}` from `{analysis.input_dir}`; every "
           "number is computed from the analysis files and the training setup below.", ""]
    out += _setup_lines(setup)
    out += ["", _md_table(("parameter", "padding", "packing", "note"), rows), "",
            "## How the numbers are computed", "",
            f"- Optimizer steps per epoch: {pad} (padding) vs {pack} (packing), {ratio} with packing: "
            "`ceil(rows per epoch / effective_batch_size)`; a padding row is a sample, a packing row is a pack.",
            "- Padding overhead: the samples (`sample_stats.jsonl`, data order) are cut into per-device batches of "
            f"{setup.padding_batch_size} consecutive samples, each padded to its longest sample; overhead = padded "
            "tokens / real tokens. The shuffled row repeats this after one seeded permutation (training shuffles).",
            "- Packing efficiency = packed tokens / (packs x global_max_length) from the simulation entry; "
            "packed tokens = `sum_total_tokens` - `tokens_dropped`. With one pack per device batch nothing is "
            "padded; the unused capacity is what the packs could still hold.",
            "- Per-step attention cost differs: a packed row of L tokens costs the sum of its samples' squared "
            "lengths in attention, not L squared (samples are isolated)."]
    return "\n".join(out) + "\n"


def memory_estimates(analysis: Analysis, setup: TrainingSetup, *, model_path: Optional[str] = None) -> dict:
    """``memory_table`` rows for the simulated lengths (+ the setup's length) and where the model shape came from.

    Model shape: ``model_path`` > the setup's model (config ``model.model``) > the analysis' model, the
    first with a config.json. None found: the analysis' own rows (its setup) are returned.
    """
    lengths = sorted(set(analysis.max_lengths) | {setup.global_max_length})
    analysis_model = analysis.stats.get("inputs", {}).get("model_path")
    tried = []
    for candidate in (model_path, setup.model_path, analysis_model):
        if not candidate:
            continue
        if os.path.isfile(os.path.join(candidate, "config.json")):
            shape = ModelShape.from_config(candidate)
            return {"model_path": candidate, "shape": shape, "setup": setup.memory, "not_found": tried,
                    "rows": memory_table(shape, lengths, setup.memory), "from_analysis": False}
        tried.append(candidate)
    mem = analysis.recommendations["memory"]
    return {"model_path": analysis_model, "shape": None, "setup": MemorySetup(**mem["setup"]), "not_found": tried,
            "rows": mem["per_length"], "from_analysis": True}


MEMORY_COLUMNS = ("weights", "gradients", "optimizer", "activations", "logits", "overhead", "total")
BOTH_PATHS = ("logits_fused", "total_fused", "logits_full", "total_full")
LOSS_PATHS = {True: "fused linear cross-entropy, one chunk of logits", False: "full (L, vocab) logits"}


def memory_estimates_md(analysis: Analysis, setup: TrainingSetup, est: dict, *, command: str = "") -> str:
    gpu = float(analysis.recommendations["memory"]["gpu_memory_gib"])
    s = est["setup"]
    out = ["# GPU memory estimates per max_length", "",
           f"Generated by `{command or 'scripts/visualize_packing_results.py'}` with "
           "`swift_plugins.analysis.memory.memory_table` (an estimate, not a measurement).", ""]
    if est["not_found"]:
        out += [f"- **No config.json in {', '.join(f'`{m}`' for m in est['not_found'])}** (not on this machine): "
                + ("the rows below are the analysis' own estimates (`recommendations.json` memory.per_length) for "
                   "its setup." if est["from_analysis"] else
                   f"the shape below is another model's; pass `--model_path` with the training model's folder.")]
    if not est["from_analysis"]:
        shape = est["shape"]
        out += [f"- Model shape from `{est['model_path']}/config.json`: {fmt_int(shape.total_params)} parameters "
                f"({fmt_int(shape.llm_params)} language model, {fmt_int(shape.vision_params)} vision), hidden "
                f"{shape.hidden}, intermediate {shape.intermediate}, {shape.layers} layers, "
                f"vocab {fmt_int(shape.vocab)}"
                + (f"; MoE in {shape.moe_layers} layers: {shape.experts} experts resident, {shape.experts_per_token} "
                   f"per token (activations)" if shape.moe_layers else "")]
    out += [f"- Setup: tuner {s.tuner}" + (f" (rank {s.lora_rank})" if s.tuner != "full" else "") +
            f", ZeRO stage {s.zero_stage}, gradient checkpointing {str(s.gradient_checkpointing).lower()}, "
            f"world size {s.world_size}; one packed row of max_length tokens per device batch",
            f"- Loss: {LOSS_PATHS[s.fused_loss]} (`training.fused_loss {str(s.fused_loss).lower()}`): the columns "
            f"`logits` and `total` are this path's; the last four columns give both paths side by side",
            f"- GPU memory {gpu:g} GiB (analysis `--gpu_memory_gib`); `left` = GPU memory - total", ""]
    both = all("total_full_gib" in r for r in est["rows"])  # rows of an analysis made before both paths
    rows = [[fmt_int(r["seq_len"])] + [f"{r[c + '_gib']:.2f}" for c in MEMORY_COLUMNS] +
            [f"{gpu - r['total_gib']:.2f}"] + ([f"{r[c + '_gib']:.2f}" for c in BOTH_PATHS] if both else [])
            for r in est["rows"]]
    header = ["max_length"] + [f"{c} (GiB)" for c in MEMORY_COLUMNS] + ["left (GiB)"]
    out += [_md_table(header + ([f"{c} (GiB)" for c in BOTH_PATHS] if both else []), rows), "",
            "## Formula and assumptions", "",
            "Copied from the docstring of `swift_plugins/analysis/memory.py` when this file was generated:", "",
            "```text", memory_module.__doc__.strip("\n"), "```"]
    return "\n".join(out) + "\n"


def _stats_rows(stats: dict) -> list[list[str]]:
    cols = ("total_tokens", "text_tokens", "image_tokens", "num_objects")
    return [[k] + [fmt_val(stats[f"{k}_{col}"]) for col in cols]
            for k in ("mean", "median", "min", "p95", "p99", "max", "sum")]


FILE_HEADER = ("file", "records read", "skipped", "samples", "lvis", "messages", "mean tokens", "p95 tokens",
               "max tokens")


def _file_rows(files: Sequence[dict]) -> list[list[str]]:
    return [[f"`{f['jsonl']}`", fmt_int(f["records_read"]), fmt_int(f["records_skipped"]), fmt_int(f["num_samples"]),
             fmt_int(f["lvis"]), fmt_int(f["messages"]), fmt_val(f["mean_total_tokens"]),
             fmt_val(f["p95_total_tokens"]), fmt_int(f["max_total_tokens"])] for f in files]


def _simulation_rows(sims: Sequence[dict]) -> list[list[str]]:
    return [[fmt_int(e["global_max_length"]), e["strategy"],
             "-" if e["buffer_size"] is None else fmt_int(e["buffer_size"]),
             f"{e['min_fill_ratio']:g}", str(e["drop_last"]).lower(), e.get("overlong", "drop"),
             fmt_int(e.get("records_split", 0)), fmt_int(e["num_packs"]), fmt_int(e["l1_bound"]),
             f"{e['avg_samples_per_pack']:.2f}", fmt_pct(e["efficiency"]), f"{e['min_fill']:.4f}",
             f"{e['max_fill']:.4f}", fmt_int(e.get("records_lost", e["samples_dropped"])),
             f"{e['steps_per_epoch']:.2f}", fmt_int(e["optimizer_steps_per_epoch"])] for e in sims]


SIMULATION_HEADER = ("max_length", "strategy", "buffer", "min fill ratio", "drop_last", "overlong", "records split",
                     "packs", "L1 bound", "samples/pack", "efficiency", "min fill", "max fill", "records lost",
                     "steps/epoch", "optimizer steps/epoch")


def _max_pixels_text(inputs: dict) -> str:
    mp = inputs.get("max_pixels")
    return fmt_int(mp) if mp else "not set (the processor's limit)"


def summary_md(analysis: Analysis, setup: TrainingSetup, *, figures_rel: str, est: dict, command: str = "") -> str:
    st, rec = analysis.stats, analysis.recommendations
    r, why = rec.get("recommended"), rec.get("why", {})
    rows, raw = comparison_rows(analysis, setup)
    entry = raw["entry"]
    inputs = st.get("inputs", {})
    L = setup.global_max_length
    same_len = [e for e in analysis.simulations if e["global_max_length"] == L and e["buffer_size"] is None]
    best_other = max((e for e in same_len if e["strategy"] != entry["strategy"]), key=lambda e: e["efficiency"],
                     default=None)
    mem_row = next((m for m in est["rows"] if m["seq_len"] == L), None)
    pad_steps, pack_steps = raw["padding_steps_per_epoch"], raw["packing_steps_per_epoch"]
    eff = setup.effective_batch_size
    image_share = st["sum_image_tokens"] / st["sum_total_tokens"] if st["sum_total_tokens"] else 0.0
    out = ["# Packing migration analysis: full results", "",
           f"Generated by `{command or 'scripts/visualize_packing_results.py'}` from the files in this folder "
           f"(`dataset_stats.json`, `sample_stats.jsonl`, `packing_simulations.json`, `recommendations.json`); "
           "regenerate instead of editing.", "",
           f"- Dataset: {inputs_text(inputs)}, {fmt_int(st['num_samples'])} samples "
           f"({fmt_int(st['records_read'])} records read, {fmt_int(st['records_skipped'])} skipped)",
           f"- Tokenizer / template: `{inputs.get('model_path')}`, template `{inputs.get('template')}`, "
           f"max_pixels {_max_pixels_text(inputs)}"]
    out += _setup_lines(setup)
    out += ["", "## Executive summary", "",
            f"- Tokens per sample (text + image): mean {fmt_val(st['mean_total_tokens'])}, median "
            f"{fmt_val(st['median_total_tokens'])}, p95 {fmt_val(st['p95_total_tokens'])}, p99 "
            f"{fmt_val(st['p99_total_tokens'])}, max {fmt_int(st['max_total_tokens'])}; image tokens are "
            f"{fmt_pct(image_share)} of all tokens."]
    if r:
        out.append(f"- Recommended `global_max_length: {r['global_max_length']}` "
                   f"(strategy {r['packing_strategy']}): {rec['reason']}.")
    out += [f"- At {fmt_int(L)} tokens ({variant_text(entry)}): efficiency {fmt_pct(entry['efficiency'])}, "
            f"{entry['avg_samples_per_pack']:.2f} samples per pack, {fmt_int(entry['num_packs'])} packs "
            f"(L1 bound {fmt_int(entry['l1_bound'])}), {fmt_int(entry.get('records_lost', entry['samples_dropped']))} "
            f"records lost ({fmt_pct(entry.get('records_lost', entry['samples_dropped']) / max(1, st['num_samples']))})"
            + (f", {fmt_int(entry['records_split'])} records split" if entry.get("records_split") else "") + "."
            + (f" Best other strategy at this length: {best_other['strategy']} {fmt_pct(best_other['efficiency'])}."
               if best_other else ""),
            f"- Optimizer steps per epoch at effective batch {eff}: padding {fmt_int(pad_steps)}, packing "
            f"{fmt_int(pack_steps)}"
            + (f" ({pad_steps / pack_steps:.2f}x fewer)" if pack_steps else "")
            + f"; samples per optimizer step {eff} -> {raw['packing_samples_per_step']:.1f}.",
            f"- Padding overhead with per-device batches of {setup.padding_batch_size} (data order): "
            f"{fmt_pct(raw['padding']['overhead'])} extra (padded) tokens; packed rows are not padded."]
    if mem_row:
        out.append(f"- Estimated GPU memory at {fmt_int(L)} tokens: {mem_row['total_gib']:.2f} GiB per GPU "
                   f"(`{os.path.join(figures_rel, 'memory_estimates.md')}`).")
    out += ["", "## Dataset statistics (tokens per sample)", "",
            _md_table(("statistic", "total tokens", "text tokens", "image tokens", "objects"), _stats_rows(st)), "",
            "`text tokens` counts every non-image token of the training sequence (chat markers, prompt, "
            "vision start/end, answer); `image tokens` the `<|image_pad|>` tokens.", ""]
    if len(st.get("files", [])) > 1:
        out += ["### Per file", "", _md_table(FILE_HEADER, _file_rows(st["files"])), ""]
    out += [
            "## Packing simulations", "",
            f"Steps at the analysis' effective batch ({rec.get('padding_baseline', {}).get('effective_batch_size')}"
            "). Efficiency = packed tokens / (packs x max_length); L1 bound = ceil(packed tokens / max_length), "
            "the fewest packs possible.", "",
            _md_table(SIMULATION_HEADER, _simulation_rows(analysis.simulations)), ""]
    if rec.get("candidates"):
        out += ["### Recommendation candidates", "",
                _md_table(("max_length", "overlong", "efficiency", "records lost", "memory (GiB)", "fits memory",
                           "optimizer steps/epoch"),
                          [[fmt_int(c["global_max_length"]), c.get("overlong", "drop"), fmt_pct(c["efficiency"]),
                            fmt_int(c.get("records_lost", c["samples_dropped"])), f"{c['estimated_memory_gib']:.2f}",
                            str(c["fits_memory"]).lower(), fmt_int(c["optimizer_steps_per_epoch"])]
                           for c in rec["candidates"]]), ""]
    if r:
        ga = r.get("gradient_accumulation_steps")
        out += ["## Recommended configuration", "", "```yaml", "training:", "  packing: true",
                f"  global_max_length: {r['global_max_length']}",
                f"  packing_strategy: {r['packing_strategy']}",
                f"  packing_overlong: {r.get('packing_overlong', 'drop')}"
                + ("   # dense detection records become pieces: every object trained"
                   if r.get("packing_overlong") == "split" else ""),
                f"  per_device_train_batch_size: {r['per_device_train_batch_size']}   # one pack per device batch",
                f"  effective_batch_size: {r['effective_batch_size']}   # packs per optimizer step"
                + (f" -> gradient_accumulation_steps {ga} on {r['world_size']} GPUs" if ga else ""),
                f"  num_train_epochs: {r['num_train_epochs']}", "```", "",
                f"- Why {r['global_max_length']}: {rec['reason']}.",
                f"- Expected: efficiency {fmt_pct(why['efficiency'])}, {fmt_int(why.get('records_split', 0))} records "
                f"split, {fmt_int(why.get('records_lost', why['samples_dropped']))} records lost, "
                f"~{why['estimated_memory_gib']} GiB per GPU, {fmt_int(why['optimizer_steps_per_epoch'])} "
                f"optimizer steps per epoch ({fmt_int(why['total_optimizer_steps'])} in total), "
                f"{why['samples_per_step']} samples per step.",
                f"- Same samples per step as padding instead: effective_batch_size "
                f"{rec['match_padding_samples_per_step']['effective_batch_size']} "
                f"({rec['match_padding_samples_per_step']['samples_per_step']} samples per step, "
                f"{rec['match_padding_samples_per_step']['optimizer_steps_per_epoch']} steps per epoch): "
                "`--match_samples_per_step` of the migration script.",
                "- Step-based keys (eval_steps, save_steps, save_delay_steps, logging_steps) must shrink with the "
                "step count; `scripts/migrate_to_packing.py` rescales them.", ""]
    out += ["## Padding vs packing", "", _md_table(("parameter", "padding", "packing", "note"), rows), "",
            f"Details: `{os.path.join(figures_rel, 'comparison_table.md')}`.", "",
            "## Figures", "",
            f"![token distribution]({os.path.join(figures_rel, 'token_distribution.png')})", "",
            f"![packing efficiency]({os.path.join(figures_rel, 'packing_efficiency.png')})", "",
            "## Migration checklist", ""]
    W = setup.world_size
    padding_config = setup.padding_config or "configs/dlora/sft_text_only_padding.yaml"
    packed = default_output(padding_config)
    out += [("- [ ] Write the packing config" if setup.padding_config else
             "- [ ] Write the packing config (your padding config in place of the example)") +
            f": `python scripts/migrate_to_packing.py --padding_config {padding_config} "
            f"--analysis_dir {analysis.input_dir} --output {packed} --world_size {W}`",
            f"- [ ] Check it: `python -m swift_plugins.sft --config {packed} --print_config --world_size {W}`",
            "- [ ] Same tokenizer, template, max_pixels and data as this analysis (else re-run it): "
            f"{inputs_text(inputs)}, max_pixels {_max_pixels_text(inputs)}",
            f"- [ ] Short run: `torchrun --nproc_per_node={W} -m swift_plugins.sft --config {packed} "
            "--training.max_steps 20`; watch memory, loss, samples per step",
            f"- [ ] Full run: `torchrun --nproc_per_node={W} -m swift_plugins.sft --config {packed}`",
            "- [ ] Compare `eval_token_mean_loss` (token mean over the whole eval set, the same number packed or "
            "padded) against the padding run at equal samples seen (not equal steps); `eval_loss` is a mean of "
            "per-step means and differs between the two by batching alone"]
    return "\n".join(out) + "\n"


def write_report(input_dir: str, output_dir: Optional[str] = None, *, config: Optional[str] = None,
                 world_size: Optional[int] = None, global_max_length: Optional[int] = None,
                 model_path: Optional[str] = None, command: str = "", log=print) -> dict:
    """Write the figures, tables and summary; returns ``{name: path}``."""
    output_dir = output_dir or os.path.join(input_dir, "figures")
    log(f"[1/6] reading {input_dir}")
    analysis = load_analysis(input_dir)
    if config:
        setup = setup_from_config(analysis, config, world_size=world_size, global_max_length=global_max_length)
    else:
        setup = setup_from_analysis(analysis, world_size=world_size, global_max_length=global_max_length)
    log(f"      {analysis.num_samples} samples, {len(analysis.simulations)} simulations; setup from {setup.source}")
    paths = {name: os.path.join(output_dir, name) for name in
             ("token_distribution.png", "packing_efficiency.png", "comparison_table.md", "memory_estimates.md")}
    paths["FULL_RESULTS_SUMMARY.md"] = os.path.join(input_dir, "FULL_RESULTS_SUMMARY.md")
    rec_len = (analysis.recommended or {}).get("global_max_length")
    # Tables first: a setup the analysis cannot answer (length not simulated) fails before anything is written.
    comparison = comparison_table_md(analysis, setup, command=command)
    est = memory_estimates(analysis, setup, model_path=model_path)
    memory_text = memory_estimates_md(analysis, setup, est, command=command)
    summary = summary_md(analysis, setup, figures_rel=os.path.relpath(output_dir, input_dir), est=est,
                         command=command)
    with staged_files(output_dir, ".figures-staging-") as stage:  # the four arrive together (or none, on Ctrl-C)
        staged = {name: os.path.join(stage, name) for name in paths if name != "FULL_RESULTS_SUMMARY.md"}
        log(f"[2/6] {paths['token_distribution.png']}")
        plot_token_distribution(analysis, staged["token_distribution.png"], recommended=rec_len)
        log(f"[3/6] {paths['packing_efficiency.png']}")
        plot_packing_efficiency(analysis, staged["packing_efficiency.png"], recommended=rec_len)
        log(f"[4/6] {paths['comparison_table.md']}")
        atomic_write_text(staged["comparison_table.md"], comparison)
        log(f"[5/6] {paths['memory_estimates.md']}")
        atomic_write_text(staged["memory_estimates.md"], memory_text)
    log(f"[6/6] {paths['FULL_RESULTS_SUMMARY.md']}")
    atomic_write_text(paths["FULL_RESULTS_SUMMARY.md"], summary)
    record_derived(input_dir, paths.values())  # a re-analysis of input_dir removes them with it
    log("done: " + ", ".join(paths.values()))
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="visualize_packing_results.py",
        description="Figures (token_distribution.png, packing_efficiency.png), tables (comparison_table.md, "
                    "memory_estimates.md) and FULL_RESULTS_SUMMARY.md from the folder analyze_token_lengths.py "
                    "wrote. Every number is computed from its JSON files and the training setup.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_dir", default="docs/temp_packed_dataset", help="analysis folder (input)")
    p.add_argument("--output_dir", default=None, help="figures and tables (default: INPUT_DIR/figures)")
    p.add_argument("--config", default=None,
                   help="training YAML (padding or packing; extends followed) for the setup: world size, batches, "
                        "epochs, tuner, ZeRO stage, gradient checkpointing (default: the analysis' CLI setup)")
    p.add_argument("--world_size", type=int, default=None, help="GPUs (default: the analysis' --world_size)")
    p.add_argument("--global_max_length", type=int, default=None,
                   help="packing length to compare (default: a packing config's, else the recommended one)")
    p.add_argument("--model_path", default=None,
                   help="model folder whose config.json sizes the memory estimate (default: the config's "
                        "model.model, else the analysis model)")
    p.add_argument("--update_docs", nargs="+", default=None, metavar="FILE",
                   help="instead: rewrite the generated sections of these Markdown files (code docstrings, quoted "
                        "ms-swift / transformers lines) and exit")
    return p


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.update_docs:  # developer tooling: the generated sections of the docs
        from swift_plugins.dev.update_docs import update_files

        update_files(args.update_docs)
        return 0
    raise_problems([number_problem("--world_size", args.world_size, minimum=1),
                    number_problem("--global_max_length", args.global_max_length, minimum=1),
                    args.model_path and model_dir_problem("--model_path", args.model_path),
                    args.config and not os.path.isfile(args.config) and f"--config: {args.config}: no such file",
                    writable_dir_problem("--output_dir", args.output_dir or os.path.join(args.input_dir, "figures"),
                                         create=False)])
    command = "python scripts/visualize_packing_results.py " + " ".join(argv)
    write_report(args.input_dir, args.output_dir, config=args.config, world_size=args.world_size,
                 global_max_length=args.global_max_length, model_path=args.model_path, command=command.strip())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/visualize_packing_results.py``; user errors are ``error:`` lines and exit status 2."""
    return run_main(_main, argv)

