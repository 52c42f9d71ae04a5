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
                                    (rendered by swift_plugins.analysis.summary)

Nothing is re-simulated: packing numbers are entries of ``packing_simulations.json``; the
padding side is computed from ``sample_stats.jsonl`` and the training setup. The setup (world
size, effective batch, per-device batches, epochs, tuner, ZeRO stage, ...) comes from
``--config`` (resolved with ``swift_plugins.config``, ``extends`` followed) or, without it, from
the analysis' own CLI setup stored in ``recommendations.json``.

The definitions (padding overhead, steps) are in :mod:`swift_plugins.analysis.outputs`. The padding
vs packing numbers are computed once (:func:`comparison_numbers`, :func:`comparison_rows`) and
rendered twice: ``comparison_table.md`` and the summary's table.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from swift_plugins.analysis import memory as memory_module
from swift_plugins.analysis.figures import plot_packing_efficiency, plot_token_distribution
from swift_plugins.analysis.folder import record_derived
from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table
from swift_plugins.analysis.outputs import (Analysis, TrainingSetup, ceil_steps, find_simulation, fmt_int, fmt_num,
                                            fmt_pct, load_analysis, md_table, padding_overhead, padding_rows,
                                            setup_from_analysis, setup_from_config, setup_lines, total_steps,
                                            variant_text)
from swift_plugins.analysis.summary import COMPARISON_HEADER, summary_md
from swift_plugins.checks import model_dir_problem, number_problem, raise_problems, writable_dir_problem
from swift_plugins.errors import ArgumentParser, run_main
from swift_plugins.files import atomic_write_text, staged_files

__all__ = ["MEMORY_COLUMNS", "build_parser", "comparison_numbers", "comparison_rows", "comparison_table_md", "main",
           "memory_estimates", "memory_estimates_md", "write_report"]


def _ga(effective: int, per_device: int, world: int) -> str:
    """``effective / (per_device x world)`` as the table shows it: ``_ga(8, 2, 2)`` -> ``'2'``,
    ``_ga(8, 3, 2)`` -> ``'not integral (8 / (3 x 2))'``."""
    unit = per_device * world
    if effective % unit:
        return f"not integral ({effective} / ({per_device} x {world}))"
    return fmt_int(effective // unit)


def comparison_numbers(analysis: Analysis, setup: TrainingSetup) -> tuple[dict, dict]:
    """The padding vs packing numbers: ``(raw, padding side)``; ``raw`` is what :func:`comparison_rows`
    returns, the padding side is :func:`padding_rows` of the samples (its ``lengths`` give the longest)."""
    entry, exact = find_simulation(analysis.simulations, setup.global_max_length, setup.packing_strategy,
                                   setup.packing_buffer, setup.min_fill_ratio, setup.drop_last, setup.packing_overlong)
    pad = padding_rows(analysis.total_tokens, setup.padding_max_length, setup.truncation_strategy)
    E, eff = setup.num_train_epochs, setup.effective_batch_size
    packs, packed = int(entry["num_packs"]), int(entry["samples_packed"])
    # split pieces each repeat the prompt and the image: count the packed tokens the plan holds
    packed_tokens = int(entry.get("packed_tokens", int(analysis.stats["sum_total_tokens"]) - int(entry["tokens_dropped"])))
    pad_steps, pack_steps = ceil_steps(pad["rows"], eff), ceil_steps(packs, eff)
    raw = {
        "entry": entry, "exact_variant": exact, "padding_rows": pad["rows"], "padding_dropped": pad["dropped"],
        "padding_truncated": pad["truncated"], "padding": padding_overhead(pad["lengths"], setup.padding_batch_size),
        "padding_shuffled": padding_overhead(pad["lengths"], setup.padding_batch_size, seed=setup.shuffle_seed),
        "padding_steps_per_epoch": pad_steps, "packing_steps_per_epoch": pack_steps,
        "padding_total_steps": total_steps(pad_steps, E, setup.max_steps),
        "packing_total_steps": total_steps(pack_steps, E, setup.max_steps),
        "packing_samples_per_step": packed / packs * eff if packs else 0.0, "packed_tokens": packed_tokens,
        "capacity": packs * setup.global_max_length,
    }
    return raw, pad


def comparison_rows(analysis: Analysis, setup: TrainingSetup) -> tuple[list[tuple[str, str, str, str]], dict]:
    """Rows ``(parameter, padding, packing, note)`` of the padding vs packing table, and the raw numbers."""
    raw, pad = comparison_numbers(analysis, setup)
    rows = (_sample_rows(analysis, setup, raw, pad) + _batch_rows(setup, raw)
            + _token_rows(setup, raw))
    return rows, raw


def _sample_rows(analysis: Analysis, setup: TrainingSetup, raw: dict, pad: dict) -> list[tuple[str, str, str, str]]:
    """The table's rows on samples: analysed, skipped, length, plan, lost, split, trained."""
    entry, n = raw["entry"], analysis.num_samples
    longest = int(pad["lengths"].max()) if pad["rows"] else 0
    skipped = int(analysis.stats.get("records_skipped", 0))
    max_len_pad = (f"{fmt_int(setup.padding_max_length)} (template.max_length)" if setup.padding_max_length
                   else f"none: longest sample {fmt_int(longest)}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(entry["dropped_by_reason"].items())) or "none"
    return [
        ("samples analysed", fmt_int(n), fmt_int(n), "dataset_stats.json num_samples"),
    ] + ([("records skipped as invalid", fmt_int(skipped), fmt_int(skipped),
           "skipped_records.jsonl (not in any count below)")] if skipped else []) + [
        ("max sequence length (tokens)", max_len_pad, fmt_int(setup.global_max_length),
         "packing: tokens per pack (text + image)"),
        ("packing plan", "-", variant_text(entry),
         "packing_simulations.json entry" + ("" if raw["exact_variant"] else
                                             " (this exact buffer / min-fill / drop-last variant "
                                             "was not simulated: the one-window plan is shown)")),
        ("records lost (not trained)", fmt_int(pad["dropped"]), fmt_int(entry.get("records_lost",
                                                                                  entry["samples_dropped"])),
         f"packing: {reasons}" + (f", {entry['records_unsplittable']} unsplittable" if entry.get("records_unsplittable")
                                  else "") + (f"; padding truncates {pad['truncated']}" if pad["truncated"] else "")),
    ] + ([("records split into pieces", "-", fmt_int(entry["records_split"]),
           f"overlong split: a dense record becomes pieces of the same image ({fmt_int(entry['samples'])} samples "
           "in all)")] if entry.get("records_split") else []) + [
        ("samples trained per epoch", fmt_int(pad["rows"]), fmt_int(int(entry["samples_packed"])),
         "records in = trained + lost (a split record trains as its pieces)"),
    ]


def _batch_rows(setup: TrainingSetup, raw: dict) -> list[tuple[str, str, str, str]]:
    """The table's rows on rows, batches and optimizer steps."""
    E, eff, W = setup.num_train_epochs, setup.effective_batch_size, setup.world_size
    steps_note = (f"training.max_steps {setup.max_steps} overrides epochs in both modes" if setup.max_steps
                  else "ceil(num_train_epochs x steps per epoch), as transformers counts")
    return [
        ("rows per epoch (samples or packs)", fmt_int(raw["padding_rows"]), fmt_int(int(raw["entry"]["num_packs"])),
         "a packing row is one pack"),
        ("per_device_train_batch_size", fmt_int(setup.padding_batch_size), "1", "rows per device per micro-batch"),
        ("world_size", fmt_int(W), fmt_int(W), "GPUs"),
        ("effective_batch_size", fmt_int(eff), fmt_int(eff), "rows per optimizer step, all GPUs"),
        ("gradient_accumulation_steps", _ga(eff, setup.padding_batch_size, W), _ga(eff, 1, W),
         "effective_batch_size / (per_device_train_batch_size x world_size)"),
        ("steps_per_epoch", fmt_int(raw["padding_steps_per_epoch"]), fmt_int(raw["packing_steps_per_epoch"]),
         "ceil(rows per epoch / effective_batch_size)"),
        ("num_train_epochs", fmt_num(E, 1), fmt_num(E, 1), "same"),
        ("total_optimizer_steps", fmt_int(raw["padding_total_steps"]), fmt_int(raw["packing_total_steps"]),
         steps_note),
        ("samples_per_step", fmt_num(eff, 1), fmt_num(raw["packing_samples_per_step"], 1),
         "packing: samples packed / packs x effective_batch_size"),
    ]


def _token_rows(setup: TrainingSetup, raw: dict) -> list[tuple[str, str, str, str]]:
    """The table's rows on tokens: real, padded, overhead, efficiency, unused capacity."""
    ov, ov_shuffled = raw["padding"], raw["padding_shuffled"]
    packed_tokens, capacity = raw["packed_tokens"], raw["capacity"]
    return [
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


def comparison_table_md(analysis: Analysis, setup: TrainingSetup, comparison: tuple[list, dict], *,
                        command: str = "") -> str:
    """``comparison_table.md``; ``comparison`` is ``comparison_rows(analysis, setup)``."""
    rows, raw = comparison
    pad, pack = raw["padding_steps_per_epoch"], raw["packing_steps_per_epoch"]
    ratio = f"{pad / pack:.2f}x fewer" if pack else "-"
    out = ["# Padding vs packing", "",
           f"Generated by `{command or 'scripts/visualize_packing_results.py'}` from `{analysis.input_dir}`; every "
           "number is computed from the analysis files and the training setup below.", ""]
    out += setup_lines(setup)
    out += ["", md_table(COMPARISON_HEADER, rows), "",
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
    out += [md_table(header + ([f"{c} (GiB)" for c in BOTH_PATHS] if both else []), rows), "",
            "## Formula and assumptions", "",
            "Copied from the docstring of `swift_plugins/analysis/memory.py` when this file was generated:", "",
            "```text", memory_module.__doc__.strip("\n"), "```"]
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
    numbers = comparison_rows(analysis, setup)  # computed once: the comparison table and the summary quote it
    comparison = comparison_table_md(analysis, setup, numbers, command=command)
    est = memory_estimates(analysis, setup, model_path=model_path)
    memory_text = memory_estimates_md(analysis, setup, est, command=command)
    summary = summary_md(analysis, setup, numbers, figures_rel=os.path.relpath(output_dir, input_dir), est=est,
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

