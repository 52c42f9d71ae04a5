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

Padding overhead, defined (:func:`padding_overhead`): the samples, in data order, are cut into
per-device batches of ``padding_batch_size`` consecutive samples (the last batch may be
smaller); each batch is padded to its longest sample::

    padded tokens    = sum over batches of (batch size x longest - sum of lengths)
    padding overhead = padded tokens / real tokens
    lengths [3, 5, 2, 2], batch 2 -> batches [3, 5] (pads 2), [2, 2] (pads 0) -> 2 / 12 = 16.67%

Training shuffles, so the table also gives the same number for one seeded shuffle
(``numpy.random.default_rng(seed).permutation``). A packed device batch is one pack: nothing is
padded; its unused capacity is ``num_packs x global_max_length - packed tokens``.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from swift_plugins.analysis import memory as memory_module
from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table
from swift_plugins.data import atomic_write_bytes, atomic_write_text

__all__ = [
    "Analysis", "TrainingSetup", "load_analysis", "setup_from_analysis", "setup_from_config", "zero_stage_of",
    "find_simulation", "variant_text", "padding_overhead", "padding_rows", "comparison_rows", "comparison_table_md",
    "memory_estimates", "memory_estimates_md", "summary_md", "plot_token_distribution", "plot_packing_efficiency",
    "write_report", "build_parser", "main", "ceil_steps", "total_steps", "generated_sections",
    "update_generated_docs", "parse_markdown_table", "fmt_int", "fmt_pct", "fmt_val", "MEMORY_COLUMNS",
]

REQUIRED_FILES = ("dataset_stats.json", "sample_stats.jsonl", "packing_simulations.json", "recommendations.json")
ANALYZE_HINT = "run scripts/analyze_token_lengths.py --output_dir DIR first"


# ------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Analysis:
    """The outputs of one ``analyze_token_lengths.py`` run, loaded."""
    input_dir: str
    stats: dict
    simulations: list
    recommendations: dict
    text_tokens: np.ndarray
    image_tokens: np.ndarray
    total_tokens: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.stats["num_samples"])

    @property
    def max_lengths(self) -> list[int]:
        return sorted({int(e["global_max_length"]) for e in self.simulations})

    @property
    def recommended(self) -> Optional[dict]:
        return self.recommendations.get("recommended")


SAMPLE_STATS_COLUMNS = ("text_tokens", "image_tokens", "total_tokens")


def read_sample_stats(path: str) -> np.ndarray:
    """``SAMPLE_STATS_COLUMNS`` of every line of a sample_stats.jsonl as an (n, 3) int64 array.

    ``{"line": 1, "text_tokens": 40, "image_tokens": 64, "total_tokens": 104, ...}`` -> ``[[40, 64, 104]]``.
    A bad line is a ValueError naming file:line, the field and the fix.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); {ANALYZE_HINT}") from None
            row = [record.get(name) if isinstance(record, dict) else None for name in SAMPLE_STATS_COLUMNS]
            for name, v in zip(SAMPLE_STATS_COLUMNS, row):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"{path}:{lineno}: field {name!r} must be a non-negative integer, got {v!r}; "
                                     f"{ANALYZE_HINT}")
            rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(SAMPLE_STATS_COLUMNS))


def load_analysis(input_dir: str) -> Analysis:
    """Read an analysis folder: a missing file is a FileNotFoundError, an inconsistent one a ValueError,
    each naming the file and the fix."""
    missing = [n for n in REQUIRED_FILES if not os.path.isfile(os.path.join(input_dir, n))]
    if missing:
        raise FileNotFoundError(f"{input_dir}: missing {', '.join(missing)}; {ANALYZE_HINT}")

    def load(name):
        path = os.path.join(input_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}; {ANALYZE_HINT}") from None

    stats, sims, rec = load("dataset_stats.json"), load("packing_simulations.json"), load("recommendations.json")
    path = os.path.join(input_dir, "sample_stats.jsonl")
    arr = read_sample_stats(path)
    if len(arr) != stats["num_samples"]:
        raise ValueError(f"{path}: {len(arr)} rows but dataset_stats.json says num_samples {stats['num_samples']}; "
                         f"the folder mixes two analyses: {ANALYZE_HINT}")
    if not sims:
        raise ValueError(f"{os.path.join(input_dir, 'packing_simulations.json')}: no simulations; {ANALYZE_HINT}")
    return Analysis(input_dir=input_dir, stats=stats, simulations=sims, recommendations=rec,
                    text_tokens=arr[:, 0], image_tokens=arr[:, 1], total_tokens=arr[:, 2])


# ------------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class TrainingSetup:
    """What the comparison and the memory estimate assume; ``source`` says where it came from."""
    world_size: int
    effective_batch_size: int
    padding_batch_size: int
    num_train_epochs: float
    max_steps: Optional[int]
    padding_max_length: Optional[int]
    truncation_strategy: str
    global_max_length: int
    packing_strategy: str
    packing_buffer: Optional[int]
    min_fill_ratio: float
    drop_last: bool
    memory: MemorySetup
    model_path: Optional[str]
    shuffle_seed: int
    source: str
    padding_config: Optional[str] = None  # the --config file when it is a padding config
    padding_batch_source: str = "recommendations.json padding_baseline"


def setup_from_analysis(analysis: Analysis, *, world_size: Optional[int] = None,
                        global_max_length: Optional[int] = None) -> TrainingSetup:
    """The analysis CLI's own setup (recommendations.json); packing = the recommendation's plan (bfd, one window)."""
    rec = analysis.recommendations
    r = analysis.recommended
    if r is None:
        raise ValueError(f"{analysis.input_dir}/recommendations.json: no recommendation "
                         f"({rec.get('reason')}); pass --global_max_length")
    mem = dict(rec["memory"]["setup"])
    w = int(world_size or r["world_size"])
    mem["world_size"] = w
    return TrainingSetup(
        world_size=w, effective_batch_size=int(r["effective_batch_size"]),
        padding_batch_size=int(rec["padding_baseline"]["per_device_train_batch_size"]),
        num_train_epochs=float(r["num_train_epochs"]), max_steps=None, padding_max_length=None,
        truncation_strategy="delete", global_max_length=int(global_max_length or r["global_max_length"]),
        packing_strategy=r["packing_strategy"], packing_buffer=None, min_fill_ratio=0.0, drop_last=False,
        memory=MemorySetup(**mem), model_path=analysis.stats.get("inputs", {}).get("model_path"),
        shuffle_seed=int(analysis.stats.get("inputs", {}).get("conversation", {}).get("seed", 0)),
        source=f"`{os.path.join(analysis.input_dir, 'recommendations.json')}` (the analysis' CLI setup)")


def zero_stage_of(deepspeed_config: Optional[str]) -> int:
    """0 without DeepSpeed; ``zero2``/``zero3_offload`` presets -> 2/3; a JSON file -> its zero_optimization.stage."""
    if deepspeed_config is None:
        return 0
    base = os.path.basename(deepspeed_config)
    if not deepspeed_config.endswith(".json") and base.startswith("zero") and base[4:5].isdigit():
        return int(base[4])
    try:
        with open(deepspeed_config, encoding="utf-8") as f:
            return int(json.load(f).get("zero_optimization", {}).get("stage", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"deepspeed.config: {deepspeed_config}: no such file (paths are relative to the "
                                f"working directory {os.getcwd()})") from None


def setup_from_config(analysis: Analysis, config_path: str, *, world_size: Optional[int] = None,
                      global_max_length: Optional[int] = None) -> TrainingSetup:
    """The setup of a training YAML (padding or packing), resolved with ``swift_plugins.config``.

    Padding config: its per-device batch is the padding batch; the packing side is what
    ``scripts/migrate_to_packing.py`` writes by default: the recommended length and strategy with the
    config's (resolved) packing_buffer / min_fill_ratio / drop_last. Packing config: its own
    packing keys; the padding batch is the analysis' padding baseline. World size: ``world_size``
    or the analysis'.
    """
    from swift_plugins.config import resolve_config

    w = int(world_size or analysis.recommendations["recommended"]["world_size"])
    resolved = resolve_config(config_path, world_size=w, world_size_source="--world_size")
    t = resolved.config.training
    per_device = t.per_device_train_batch_size
    effective = t.effective_batch_size or resolved.gradient_accumulation_steps * per_device * w
    if t.packing:
        padding_batch = int(analysis.recommendations["padding_baseline"]["per_device_train_batch_size"])
        length = global_max_length or t.global_max_length
        strategy = t.packing_strategy
    else:  # as scripts/migrate_to_packing.py would switch it: the recommended length and strategy
        padding_batch = per_device
        length = global_max_length or (analysis.recommended or {}).get("global_max_length")
        strategy = (analysis.recommended or {}).get("packing_strategy") or t.packing_strategy
        if length is None:
            raise ValueError(f"{config_path}: padding config and no recommended length in the analysis; "
                             f"pass --global_max_length")
    tuner = resolved.config.tuner
    mem = MemorySetup(tuner="full" if tuner.tuner_type == "full" else "dora" if tuner.use_dora else "lora",
                      lora_rank=tuner.lora_rank, zero_stage=zero_stage_of(resolved.config.deepspeed.config),
                      gradient_checkpointing=t.gradient_checkpointing, world_size=w)
    return TrainingSetup(
        world_size=w, effective_batch_size=int(effective), padding_batch_size=int(padding_batch),
        num_train_epochs=float(t.num_train_epochs), max_steps=t.max_steps,
        padding_max_length=resolved.config.template.max_length,
        truncation_strategy=resolved.config.template.truncation_strategy, global_max_length=int(length),
        packing_strategy=strategy, packing_buffer=t.packing_buffer, min_fill_ratio=t.packing_min_fill_ratio,
        drop_last=t.packing_drop_last, memory=mem, model_path=resolved.config.model.model,
        shuffle_seed=t.data_seed, source=" <- ".join(f"`{f}`" for f in reversed(resolved.files)),
        padding_config=None if t.packing else config_path,
        padding_batch_source=("recommendations.json padding_baseline: the config packs" if t.packing
                              else "the config's per_device_train_batch_size"))


# ------------------------------------------------------------------------------- numbers
def ceil_steps(rows: int, effective_batch_size: int) -> int:
    """Optimizer steps per epoch: ceil(rows / effective_batch_size) (the last step may be partial)."""
    return -(-int(rows) // int(effective_batch_size))


def total_steps(per_epoch: int, num_train_epochs: float, max_steps: Optional[int] = None) -> int:
    """transformers: max_steps when set, else ceil(num_train_epochs x steps per epoch)."""
    return int(max_steps) if max_steps else math.ceil(num_train_epochs * per_epoch)


def find_simulation(simulations: Sequence[dict], global_max_length: int, strategy: str,
                    buffer_size: Optional[int] = None, min_fill_ratio: float = 0.0,
                    drop_last: bool = False) -> tuple[dict, bool]:
    """The entry for exactly this plan variant, else the unbuffered entry of (length, strategy).

    Returns ``(entry, exact)``. Raises ValueError naming the simulated lengths when the length /
    strategy was not simulated at all.
    """
    def same(e, buf, fill, drop):
        return (e["global_max_length"] == global_max_length and e["strategy"] == strategy
                and e["buffer_size"] == buf and float(e["min_fill_ratio"]) == float(fill)
                and bool(e["drop_last"]) == bool(drop))

    for e in simulations:
        if same(e, buffer_size, min_fill_ratio, drop_last):
            return e, True
    for e in simulations:
        if same(e, None, 0.0, False):
            return e, False
    lengths = sorted({e["global_max_length"] for e in simulations})
    strategies = sorted({e["strategy"] for e in simulations})
    raise ValueError(f"global_max_length {global_max_length} with strategy {strategy!r} was not simulated "
                     f"(lengths {lengths}, strategies {strategies}); re-run scripts/analyze_token_lengths.py with "
                     f"--max_lengths {','.join(map(str, sorted(set(lengths) | {global_max_length})))}")


def variant_text(entry: dict) -> str:
    window = "one window" if entry["buffer_size"] is None else f"buffer {entry['buffer_size']}"
    if not entry["min_fill_ratio"] and not entry["drop_last"]:
        return f"{entry['strategy']}, {window}"
    return (f"{entry['strategy']}, {window}, min fill {entry['min_fill_ratio']}, "
            f"drop_last {str(entry['drop_last']).lower()}")


def padding_overhead(lengths, batch_size: int, *, seed: Optional[int] = None) -> dict:
    """Padded tokens of per-device batches of ``batch_size`` consecutive samples (see module docstring).

    ``seed`` given: the samples are first permuted with ``numpy.random.default_rng(seed)``.

    >>> padding_overhead([3, 5, 2, 2], 2)["overhead"]
    0.16666666666666666
    """
    lens = np.asarray(lengths, dtype=np.int64)
    if seed is not None:
        lens = lens[np.random.default_rng(seed).permutation(len(lens))]
    n = len(lens)
    if n == 0:
        return {"real_tokens": 0, "padded_tokens": 0, "overhead": 0.0, "efficiency": 0.0, "batches": 0}
    b = int(batch_size)
    full = n // b * b
    padded = int((lens[:full].reshape(-1, b).max(axis=1) * b).sum() - lens[:full].sum()) if full else 0
    if full < n:
        tail = lens[full:]
        padded += int(tail.max() * len(tail) - tail.sum())
    real = int(lens.sum())
    return {"real_tokens": real, "padded_tokens": padded, "overhead": padded / real,
            "efficiency": real / (real + padded), "batches": -(-n // b)}


def padding_rows(total_tokens, max_length: Optional[int] = None, truncation_strategy: str = "delete") -> dict:
    """Sample lengths of the padding run: over ``max_length`` (template.max_length) a sample is
    deleted (truncation_strategy delete, ms-swift's default) or cut to it (left / right).

    >>> r = padding_rows([5, 12, 7], 10); (r["lengths"].tolist(), r["rows"], r["dropped"])
    ([5, 7], 2, 1)
    """
    total = np.asarray(total_tokens, dtype=np.int64)
    dropped = truncated = 0
    if max_length:
        over = total > max_length
        if truncation_strategy == "delete":
            dropped = int(over.sum())
            total = total[~over]
        else:
            truncated = int(over.sum())
            total = np.minimum(total, max_length)
    return {"lengths": total, "rows": len(total), "dropped": dropped, "truncated": truncated}


def _padding_side(analysis: Analysis, setup: TrainingSetup) -> dict:
    return padding_rows(analysis.total_tokens, setup.padding_max_length, setup.truncation_strategy)


def fmt_int(x) -> str:
    return f"{int(x):,}"


def fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def fmt_num(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def fmt_val(x: float) -> str:
    """Integers without decimals (``1,037``), other values with two (``1,537.84``)."""
    return fmt_int(x) if float(x).is_integer() else fmt_num(x)


def _ga(effective: int, per_device: int, world: int) -> str:
    unit = per_device * world
    if effective % unit:
        return f"not integral ({effective} / ({per_device} x {world}))"
    return fmt_int(effective // unit)


def comparison_rows(analysis: Analysis, setup: TrainingSetup) -> tuple[list[tuple[str, str, str, str]], dict]:
    """Rows ``(parameter, padding, packing, note)`` of the padding vs packing table, and the raw numbers."""
    entry, exact = find_simulation(analysis.simulations, setup.global_max_length, setup.packing_strategy,
                                   setup.packing_buffer, setup.min_fill_ratio, setup.drop_last)
    pad = _padding_side(analysis, setup)
    ov = padding_overhead(pad["lengths"], setup.padding_batch_size)
    ov_shuffled = padding_overhead(pad["lengths"], setup.padding_batch_size, seed=setup.shuffle_seed)
    E, eff, W = setup.num_train_epochs, setup.effective_batch_size, setup.world_size
    n = analysis.num_samples
    packs = int(entry["num_packs"])
    packed = int(entry["samples_packed"])
    packed_tokens = int(analysis.stats["sum_total_tokens"]) - int(entry["tokens_dropped"])
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
        ("samples dropped", fmt_int(pad["dropped"]), fmt_int(entry["samples_dropped"]),
         f"packing: {reasons}" + (f"; padding truncates {pad['truncated']}" if pad["truncated"] else "")),
        ("samples trained per epoch", fmt_int(pad["rows"]), fmt_int(packed), "samples in = trained + dropped"),
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


def parse_markdown_table(text: str, first_header: str) -> list[dict]:
    """The first Markdown table whose first header cell is ``first_header``, as dicts (cells stripped)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            header, out = cells, []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                out.append(dict(zip(header, [c.strip() for c in row.strip().strip("|").split(" | ")])))
            return out
    raise ValueError(f"no table starting with column {first_header!r}")


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


# ------------------------------------------------------------------------------- memory
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
                f"vocab {fmt_int(shape.vocab)}"]
    out += [f"- Setup: tuner {s.tuner}" + (f" (rank {s.lora_rank})" if s.tuner != "full" else "") +
            f", ZeRO stage {s.zero_stage}, gradient checkpointing {str(s.gradient_checkpointing).lower()}, "
            f"world size {s.world_size}; one packed row of max_length tokens per device batch",
            f"- GPU memory {gpu:g} GiB (analysis `--gpu_memory_gib`); `left` = GPU memory - total", ""]
    rows = [[fmt_int(r["seq_len"])] + [f"{r[c + '_gib']:.2f}" for c in MEMORY_COLUMNS] +
            [f"{gpu - r['total_gib']:.2f}"] for r in est["rows"]]
    out += [_md_table(["max_length"] + [f"{c} (GiB)" for c in MEMORY_COLUMNS] + ["left (GiB)"], rows), "",
            "## Formula and assumptions", "",
            "Copied from the docstring of `swift_plugins/analysis/memory.py` when this file was generated:", "",
            "```text", memory_module.__doc__.strip("\n"), "```"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- summary
def _stats_rows(stats: dict) -> list[list[str]]:
    cols = ("total_tokens", "text_tokens", "image_tokens", "num_objects")
    return [[k] + [fmt_val(stats[f"{k}_{col}"]) for col in cols]
            for k in ("mean", "median", "min", "p95", "p99", "max", "sum")]


def _simulation_rows(sims: Sequence[dict]) -> list[list[str]]:
    return [[fmt_int(e["global_max_length"]), e["strategy"],
             "-" if e["buffer_size"] is None else fmt_int(e["buffer_size"]),
             f"{e['min_fill_ratio']:g}", str(e["drop_last"]).lower(), fmt_int(e["num_packs"]), fmt_int(e["l1_bound"]),
             f"{e['avg_samples_per_pack']:.2f}", fmt_pct(e["efficiency"]), f"{e['min_fill']:.4f}",
             f"{e['max_fill']:.4f}", fmt_int(e["samples_dropped"]), f"{e['steps_per_epoch']:.2f}",
             fmt_int(e["optimizer_steps_per_epoch"])] for e in sims]


SIMULATION_HEADER = ("max_length", "strategy", "buffer", "min fill ratio", "drop_last", "packs", "L1 bound",
                     "samples/pack", "efficiency", "min fill", "max fill", "dropped", "steps/epoch",
                     "optimizer steps/epoch")


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
           f"- Dataset: `{inputs.get('train_jsonl')}`, {fmt_int(st['num_samples'])} samples "
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
            f"(L1 bound {fmt_int(entry['l1_bound'])}), {fmt_int(entry['samples_dropped'])} samples dropped "
            f"({fmt_pct(entry['samples_dropped'] / max(1, st['num_samples']))})."
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
            "vision start/end, answer); `image tokens` the `<|image_pad|>` tokens.", "",
            "## Packing simulations", "",
            f"Steps at the analysis' effective batch ({rec.get('padding_baseline', {}).get('effective_batch_size')}"
            "). Efficiency = packed tokens / (packs x max_length); L1 bound = ceil(packed tokens / max_length), "
            "the fewest packs possible.", "",
            _md_table(SIMULATION_HEADER, _simulation_rows(analysis.simulations)), ""]
    if rec.get("candidates"):
        out += ["### Recommendation candidates", "",
                _md_table(("max_length", "efficiency", "dropped", "memory (GiB)", "fits memory",
                           "optimizer steps/epoch"),
                          [[fmt_int(c["global_max_length"]), fmt_pct(c["efficiency"]), fmt_int(c["samples_dropped"]),
                            f"{c['estimated_memory_gib']:.2f}", str(c["fits_memory"]).lower(),
                            fmt_int(c["optimizer_steps_per_epoch"])] for c in rec["candidates"]]), ""]
    if r:
        ga = r.get("gradient_accumulation_steps")
        out += ["## Recommended configuration", "", "```yaml", "training:", "  packing: true",
                f"  global_max_length: {r['global_max_length']}",
                f"  packing_strategy: {r['packing_strategy']}",
                f"  per_device_train_batch_size: {r['per_device_train_batch_size']}   # one pack per device batch",
                f"  effective_batch_size: {r['effective_batch_size']}   # packs per optimizer step"
                + (f" -> gradient_accumulation_steps {ga} on {r['world_size']} GPUs" if ga else ""),
                f"  num_train_epochs: {r['num_train_epochs']}", "```", "",
                f"- Why {r['global_max_length']}: {rec['reason']}.",
                f"- Expected: efficiency {fmt_pct(why['efficiency'])}, {fmt_int(why['samples_dropped'])} samples "
                f"dropped, ~{why['estimated_memory_gib']} GiB per GPU, {fmt_int(why['optimizer_steps_per_epoch'])} "
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
    from swift_plugins.analysis.migrate import default_output

    padding_config = setup.padding_config or "configs/dlora/sft_text_only_padding.yaml"
    packed = default_output(padding_config)
    out += [("- [ ] Write the packing config" if setup.padding_config else
             "- [ ] Write the packing config (your padding config in place of the example)") +
            f": `python scripts/migrate_to_packing.py --padding_config {padding_config} "
            f"--analysis_dir {analysis.input_dir} --output {packed} --world_size {W}`",
            f"- [ ] Check it: `python -m swift_plugins.sft --config {packed} --print_config --world_size {W}`",
            "- [ ] Same tokenizer, template, max_pixels and data as this analysis (else re-run it): "
            f"`{inputs.get('train_jsonl')}`, max_pixels {_max_pixels_text(inputs)}",
            f"- [ ] Short run: `torchrun --nproc_per_node={W} -m swift_plugins.sft --config {packed} "
            "--training.max_steps 20`; watch memory, loss, samples per step",
            f"- [ ] Full run: `torchrun --nproc_per_node={W} -m swift_plugins.sft --config {packed}`",
            "- [ ] Compare eval loss against the padding run at equal samples seen (not equal steps)"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- figures
SCATTER_MAX_POINTS = 5000
LENGTH_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "tab:red")
STRATEGY_STYLE = {"bfd": ("tab:blue", "o"), "greedy": ("tab:orange", "s"), "next_fit": ("tab:green", "^"),
                  "random": ("tab:red", "v")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_token_distribution(analysis: Analysis, path: str, *, recommended: Optional[int] = None) -> None:
    """2x2: total-token histogram, text vs image scatter, CDF with the simulated lengths, box plots."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    total, text, image = analysis.total_tokens, analysis.text_tokens, analysis.image_tokens
    st = analysis.stats
    thousands = FuncFormatter(lambda x, _: f"{x:,.0f}")
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle(f"Tokens per sample: {fmt_int(len(total))} samples of {st.get('inputs', {}).get('train_jsonl', '')}",
                 fontsize=14)

    ax = axes[0, 0]
    hi = max(1, int(total.max()))
    bins = np.logspace(np.log10(max(1, int(total.min()))), np.log10(hi), 60)
    ax.hist(total, bins=bins, color="tab:blue", alpha=0.8, edgecolor="white", linewidth=0.3)
    ax.set_xscale("log")
    for key, color, label in (("median_total_tokens", "black", "median"), ("p95_total_tokens", "tab:orange", "p95"),
                              ("p99_total_tokens", "tab:red", "p99")):
        ax.axvline(st[key], color=color, linestyle="--", linewidth=1.2, label=f"{label} {st[key]:,.0f}")
    if recommended:
        ax.axvline(recommended, color="tab:purple", linewidth=1.8, label=f"recommended max_length {recommended:,}")
    ax.xaxis.set_major_formatter(thousands)
    ax.set_title("Total tokens per sample (log-spaced bins)")
    ax.set_xlabel("total tokens per sample (text + image, log scale)")
    ax.set_ylabel("samples per bin")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)

    ax = axes[0, 1]
    if len(total) <= SCATTER_MAX_POINTS:
        ax.scatter(image, text, s=6, alpha=0.6, color="tab:blue", label=f"one sample ({fmt_int(len(total))} in all)")
        ax.legend(fontsize=9, loc="upper right")
    else:  # 100k points overplot into stripes: show density instead
        hb = ax.hexbin(image, np.maximum(text, 1), yscale="log", gridsize=60, bins="log", cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="samples per cell (log scale)")
    ax.set_yscale("log")
    ax.set_title("Text vs image tokens per sample")
    ax.set_xlabel("image tokens per sample")
    ax.set_ylabel("text tokens per sample (log scale)")
    ax.yaxis.set_major_formatter(thousands)
    ax.xaxis.set_major_formatter(thousands)
    ax.grid(alpha=0.3)

    ax = axes[1, 0]
    srt = np.sort(total)
    ax.plot(srt, np.arange(1, len(srt) + 1) / len(srt), color="tab:blue", linewidth=2, label="samples <= x")
    ax.set_xscale("log")
    for i, L in enumerate(analysis.max_lengths):
        frac = float((total <= L).mean())
        rec = L == recommended
        ax.axvline(L, color="tab:purple" if rec else LENGTH_COLORS[i % len(LENGTH_COLORS)],
                   linestyle="-" if rec else "--", linewidth=1.8 if rec else 1.3,
                   label=f"max_length {L:,}{' (recommended)' if rec else ''}: {fmt_pct(frac)} of samples fit")
    ax.xaxis.set_major_formatter(thousands)
    ax.set_ylim(0, 1.02)
    ax.set_title("Cumulative distribution of total tokens")
    ax.set_xlabel("total tokens per sample (log scale)")
    ax.set_ylabel("fraction of samples")
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(alpha=0.3)

    ax = axes[1, 1]
    data = [np.maximum(x, 1) for x in (text, image, total)]
    bp = ax.boxplot(data, whis=(1, 99), showfliers=True, patch_artist=True,
                    flierprops={"marker": ".", "markersize": 2, "alpha": 0.3})
    ax.set_xticks([1, 2, 3], ["text", "image", "total"])
    for patch, color in zip(bp["boxes"], ("tab:green", "tab:orange", "tab:blue")):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(thousands)
    ax.set_title("Tokens per sample by kind (box: quartiles, whiskers: p1-p99)")
    ax.set_ylabel("tokens per sample (log scale)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


def plot_packing_efficiency(analysis: Analysis, path: str, *, recommended: Optional[int] = None) -> None:
    """2x2 over max_length, one line per strategy (+ each buffered variant): efficiency, samples per
    pack, dropped samples, fill ratio (min / mean / max over packs)."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    variants: dict[tuple, list] = {}
    for e in analysis.simulations:
        key = (e["strategy"], e["buffer_size"], e["min_fill_ratio"], e["drop_last"])
        variants.setdefault(key, []).append(e)
    lengths = analysis.max_lengths
    n = max(1, analysis.num_samples)
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle(f"Packing simulations: {fmt_int(analysis.num_samples)} samples, "
                 f"max_length {', '.join(f'{L:,}' for L in lengths)}", fontsize=14)
    width = float(np.diff(lengths).min()) if len(lengths) > 1 else lengths[0] * 0.2  # closest pair: no overlap
    offsets = np.linspace(-0.2, 0.2, len(variants)) * width
    for k, (key, entries) in enumerate(variants.items()):
        strategy, buf, fill, drop = key
        entries = sorted(entries, key=lambda e: e["global_max_length"])
        color, marker = STRATEGY_STYLE.get(strategy, ("gray", "x"))
        buffered = buf is not None
        label = variant_text(entries[0])
        style = {"color": "tab:purple" if buffered else color, "marker": "D" if buffered else marker,
                 "linestyle": "--" if buffered else "-", "linewidth": 1.8, "markersize": 6, "label": label}
        x = np.array([e["global_max_length"] for e in entries], dtype=float)
        axes[0, 0].plot(x, [100 * e["efficiency"] for e in entries], **style)
        axes[0, 1].plot(x, [e["avg_samples_per_pack"] for e in entries], **style)
        axes[1, 0].plot(x, [e["samples_dropped"] for e in entries], **style)
        mean = np.array([e["efficiency"] for e in entries])
        lo = np.array([e["min_fill"] for e in entries])
        hi = np.array([e["max_fill"] for e in entries])
        axes[1, 1].errorbar(x + offsets[k], 100 * mean, yerr=[100 * (mean - lo), 100 * (hi - mean)], capsize=4,
                            color=style["color"], marker=style["marker"], linestyle="none")
    l1 = sorted((e for e in analysis.simulations if e["strategy"] == "bfd" and e["buffer_size"] is None),
                key=lambda e: e["global_max_length"])
    if l1:
        axes[0, 0].plot([e["global_max_length"] for e in l1],
                        [100 * e["efficiency"] * e["num_packs"] / e["l1_bound"] for e in l1],
                        color="black", linestyle=":", linewidth=1.2, label="L1 bound (fewest packs possible)")
    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}")
    titles = (("Packing efficiency", "efficiency (% of pack capacity used)"),
              ("Samples per pack", "mean samples per pack"),
              ("Samples dropped", "samples dropped (overlong + drop_last)"),
              ("Fill ratio per pack (marker: mean, bar: min to max)", "pack fill (% of max_length)"))
    for ax, (title, ylabel) in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("global_max_length (tokens per pack)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(lengths)
        ax.xaxis.set_major_formatter(thousands)
        ax.grid(alpha=0.3)
        if recommended:
            ax.axvline(recommended, color="gray", linestyle="-.", linewidth=1, label=f"recommended {recommended:,}")
    sec = axes[1, 0].secondary_yaxis("right", functions=(lambda v: 100 * v / n, lambda p: p * n / 100))
    sec.set_ylabel("% of samples")
    axes[1, 0].yaxis.set_major_locator(MaxNLocator(integer=True))
    if len({tuple(e["samples_dropped"] for e in sorted(v, key=lambda e: e["global_max_length"]))
            for k, v in variants.items() if k[1] is None}) == 1:
        axes[1, 0].text(0.98, 0.97, "one-window strategies drop the same\noverlong samples: their lines coincide",
                        transform=axes[1, 0].transAxes, ha="right", va="top", fontsize=9,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(4, len(labels)), fontsize=10,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    _save(fig, path)


# ------------------------------------------------------------------------------- generated docs
GENERATED_BEGIN = "<!-- generated:{name} begin: python scripts/visualize_packing_results.py --update_docs FILE -->"
GENERATED_END = "<!-- generated:{name} end -->"

# (module, text that must occur in it, what the line shows): quoted with file:line by --update_docs.
# A needle that no longer occurs makes the update fail: the doc's claim must then be re-checked.
LIBRARY_LINES = (
    ("swift.template.base", "encoded['labels'][0] = -100",
     "ms-swift encode: the first label of every sample is ignored"),
    ("swift.template.base", "outputs.loss * ((labels[:, 1:] != -100).sum() / num_items_in_batch)",
     "ms-swift loss: micro-batch mean x its label count / label count of the whole optimizer step"),
    ("swift.trainers.seq2seq_trainer", "loss *= self.accelerator.num_processes",
     "ms-swift: undo DDP's gradient mean over ranks (the count is already global)"),
    ("transformers.trainer", "num_items_in_batch = sum(labels.ne(-100).sum() for labels in labels_for_count)",
     "transformers: label tokens of all micro-batches of the optimizer step"),
    ("transformers.trainer", "num_items_in_batch = self.accelerator.gather(num_items_in_batch.to(device)).sum()",
     "transformers: summed over ranks (average_tokens_across_devices)"),
    ("transformers.trainer", "len_dataloader // args.gradient_accumulation_steps",
     "transformers: optimizer steps per epoch = ceil(micro-batches / gradient_accumulation_steps)"),
)


def _library_line(module_name: str, needle: str) -> str:
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    path = inspect.getsourcefile(module)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines, 1):
        if needle in line:
            top = module_name.split(".")[0]
            rel = path[path.rindex(os.sep + top + os.sep) + 1:]
            owner = _enclosing_def(lines, i - 1)
            return f"{rel}:{i} (in {owner}): {line.strip()}"
    raise RuntimeError(f"{module_name} ({path}) no longer contains {needle!r}: re-check the claim in the docs "
                       f"before regenerating them")


def _enclosing_def(lines: Sequence[str], index: int) -> str:
    """Name of the function whose body holds ``lines[index]`` (nearest less-indented ``def`` above)."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    for j in range(index - 1, -1, -1):
        stripped = lines[j].lstrip()
        if stripped.startswith("def ") and len(lines[j]) - len(stripped) < indent:
            return stripped[4:].split("(")[0]
    return "module"


def _fenced(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.strip(chr(10))}\n```"


def generated_sections() -> dict:
    """Doc sections generated from code: docstrings of swift_plugins modules and quoted lines of the
    installed ms-swift / transformers (so a version change shows up as a diff, not as a stale doc)."""
    import inspect

    import transformers
    from swift.template.base import Template
    from swift.template.templates.qwen import Qwen3VLTemplate
    from swift.version import __version__ as swift_version

    from swift_plugins import lengths, packing

    quoted = [f"# {why}\n{_library_line(mod, needle)}" for mod, needle, why in LIBRARY_LINES]
    return {
        "image-tokens": "From the docstring of `swift_plugins/lengths.py`:\n\n" + _fenced(lengths.__doc__),
        "packing-algorithm": "From the docstring of `swift_plugins/packing.py`:\n\n" + _fenced(packing.__doc__),
        "library-lines": (f"Installed ms-swift {swift_version}, transformers {transformers.__version__}:\n\n"
                          + _fenced("\n\n".join(quoted))),
        "packing-row": ("ms-swift's Qwen3-VL packing of a row (`Qwen3VLTemplate.packing_row`, defined on "
                        f"`{Qwen3VLTemplate.packing_row.__qualname__}`): position ids per sample, then "
                        "concatenated by `Template.packing_row`:\n\n"
                        + _fenced(textwrap.dedent(inspect.getsource(Qwen3VLTemplate.packing_row)), "python")
                        + "\n\n" + _fenced(textwrap.dedent(inspect.getsource(Template.packing_row)), "python")),
    }


def update_generated_docs(text: str, sections: Optional[dict] = None) -> str:
    """``text`` with every ``<!-- generated:NAME begin ... -->`` region replaced by section NAME."""
    sections = generated_sections() if sections is None else sections
    for name, body in sections.items():
        begin, end = GENERATED_BEGIN.format(name=name), GENERATED_END.format(name=name)
        if begin not in text:
            continue
        a, b = text.index(begin) + len(begin), text.index(end)
        text = text[:a] + "\n" + body.strip("\n") + "\n" + text[b:]
    return text


# ------------------------------------------------------------------------------- driver
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
    log(f"[2/6] {paths['token_distribution.png']}")
    plot_token_distribution(analysis, paths["token_distribution.png"], recommended=rec_len)
    log(f"[3/6] {paths['packing_efficiency.png']}")
    plot_packing_efficiency(analysis, paths["packing_efficiency.png"], recommended=rec_len)
    log(f"[4/6] {paths['comparison_table.md']}")
    atomic_write_text(paths["comparison_table.md"], comparison)
    log(f"[5/6] {paths['memory_estimates.md']}")
    atomic_write_text(paths["memory_estimates.md"], memory_text)
    log(f"[6/6] {paths['FULL_RESULTS_SUMMARY.md']}")
    atomic_write_text(paths["FULL_RESULTS_SUMMARY.md"], summary)
    log("done: " + ", ".join(paths.values()))
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from swift_plugins.config import ConfigError

    if args.update_docs:
        sections = generated_sections()
        for path in args.update_docs:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            new = update_generated_docs(text, sections)
            atomic_write_text(path, new)
            print(f"{path}: {'updated' if new != text else 'up to date'}")
        return 0
    command = "python scripts/visualize_packing_results.py " + " ".join(argv)
    try:
        write_report(args.input_dir, args.output_dir, config=args.config, world_size=args.world_size,
                     global_max_length=args.global_max_length, model_path=args.model_path, command=command.strip())
    except (FileNotFoundError, ValueError, ConfigError) as e:
        print(f"visualize_packing_results.py: {e}", file=sys.stderr)
        return 2
    return 0
