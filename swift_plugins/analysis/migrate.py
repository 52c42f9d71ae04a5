"""`scripts/migrate_to_packing.py`: a padding training YAML + an analysis folder -> a packing YAML.

    python scripts/migrate_to_packing.py --padding_config configs/dlora/sft_text_only_padding.yaml \\
        --analysis_dir docs/temp_packed_dataset --output configs/dlora/sft_text_only_packed.yaml --world_size 4

The output ``extends:`` the padding config (path relative to the output's folder) and sets only
what packing changes::

    training.packing                     true
    training.global_max_length           recommendations.json (--global_max_length overrides)
    training.packing_strategy            recommendations.json (--packing_strategy overrides)
    training.packing_buffer / packing_min_fill_ratio / packing_drop_last
                                         the padding config's (resolved, inherited) values, or the flags
    training.packing_overlong            recommendations.json (split for detection data: dense scenes
                                         become pieces, no object is dropped); --packing_overlong overrides
    training.per_device_train_batch_size 1 (a device batch is one pack)
    training.per_device_eval_batch_size  1 (an eval batch is one pack)
    training.effective_batch_size        the padding config's (packs per optimizer step), or with
                                         --match_samples_per_step recommendations.json's
                                         match_padding_samples_per_step.effective_batch_size
    training.eval_steps, save_steps, save_delay_steps, logging_steps, max_steps
                                         rescaled by new / old optimizer steps per epoch
    training.output_dir / logging_dir / run_name
                                         'padded' -> 'packed', 'padding' -> 'packing' (last occurrence),
                                         else '_packed' appended, so the two runs never share a folder

Steps per epoch (world size from ``--world_size``, else the analysis')::

    old = ceil(padding samples / padding effective_batch_size)        padding samples = num_samples minus
                                                                      those over template.max_length (delete)
    new = ceil(num_packs / packing effective_batch_size)              num_packs of the packing_simulations.json
                                                                      entry for the chosen plan (see below)

The plan entry is the one simulated with exactly the chosen strategy, buffer, min fill ratio and
drop_last; if that variant was not simulated, the one-window entry of (length, strategy), which is
what the recommendation was computed on, and the header says so. Rescaling, worked (old 777, new 59)::

    scaled(x) = 0 if x == 0 else max(1, floor(x * new / old + 1/2))   (nearest integer, halves up, >= 1)
    save_steps 280 -> floor(280 * 59 / 777 + 0.5) = floor(21.76) = 21 ; logging_steps 5 -> 0.38 -> 1

The file is written next to the output under a temporary name, validated with
``swift_plugins.config.resolve_config`` (must pass) and only then renamed onto ``--output``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from swift_plugins.analysis.outputs import (ceil_steps, find_simulation, fmt_int, load_analysis, padding_rows,
                                            total_steps, variant_text)
from swift_plugins.analysis.token_analysis import parse_bool
from swift_plugins.checks import number_problem, raise_problems, writable_file_problem
from swift_plugins.errors import ArgumentParser, UserError, run_main
from swift_plugins.files import atomic_open
from swift_plugins.packing.planner import OVERLONG_CHOICES, STRATEGIES

__all__ = ["MigrationOptions", "MigrationResult", "STEP_KEYS", "build_parser", "default_output", "main", "migrate",
           "rename_run", "rescale_steps", "run_migration"]

STEP_KEYS = ("eval_steps", "save_steps", "save_delay_steps", "logging_steps", "max_steps")
RUN_NAME_KEYS = ("output_dir", "logging_dir", "run_name")


def rescale_steps(value: int, new_steps: int, old_steps: int) -> int:
    """``0`` stays 0; else the nearest integer to ``value * new / old`` (halves up), at least 1.

    Exact integer arithmetic (no float rounding):

    >>> rescale_steps(280, 59, 777), rescale_steps(5, 59, 777), rescale_steps(0, 1, 2), rescale_steps(5, 1, 2)
    (21, 1, 0, 3)
    """
    if value == 0:
        return 0
    return max(1, (2 * value * new_steps + old_steps) // (2 * old_steps))


def rename_run(value: str) -> str:
    """``./output/text_only_padded`` -> ``./output/text_only_packed``; ``output/tiny/padding`` ->
    ``output/tiny/packing``; ``run1`` -> ``run1_packed``."""
    for old, new in (("padded", "packed"), ("padding", "packing")):
        i = value.rfind(old)
        if i >= 0:
            return value[:i] + new + value[i + len(old):]
    return value.rstrip("/") + "_packed"


def default_output(padding_config: str) -> str:
    """``configs/dlora/sft_text_only_padding.yaml`` -> ``configs/dlora/sft_text_only_packed.yaml``;
    other names get ``_packed`` before the extension."""
    folder, base = os.path.split(padding_config)
    stem, ext = os.path.splitext(base)
    stem = stem[:-len("_padding")] if stem.endswith("_padding") else stem
    return os.path.join(folder, f"{stem}_packed{ext or '.yaml'}")


@dataclass(frozen=True)
class MigrationResult:
    output: str
    world_size: int
    entry: dict                  # the packing_simulations.json entry the new steps come from
    exact_variant: bool          # False: the chosen buffer/min-fill/drop-last variant was not simulated
    old_steps_per_epoch: int
    new_steps_per_epoch: int
    old_effective_batch_size: int
    new_effective_batch_size: int
    values: dict                 # training key -> value written
    before: dict                 # training key -> value in the padding config
    table: str                   # the before/after table printed
    text: str                    # the YAML written


def _yaml_value(v: Any) -> str:
    import yaml

    text = yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class MigrationOptions:
    """What the user chose (the CLI flags); ``None`` = take it from the analysis or the padding config."""
    padding_config: str
    analysis_dir: str
    output: Optional[str] = None
    world_size: Optional[int] = None
    global_max_length: Optional[int] = None
    packing_strategy: Optional[str] = None
    packing_buffer: Optional[int] = None
    packing_min_fill_ratio: Optional[float] = None
    packing_drop_last: Optional[bool] = None
    packing_overlong: Optional[str] = None
    match_samples_per_step: bool = False
    command: str = ""


@dataclass(frozen=True)
class _Plan:
    """The decided packing settings, the resolved padding config and the simulation entry they select."""
    analysis: Any
    resolved: Any
    W: int
    L: int
    strategy: str
    buffer: int
    min_fill: float
    drop_last: bool
    overlong: str
    entry: dict
    exact: bool


@dataclass(frozen=True)
class _Steps:
    """Optimizer steps per epoch before (padding) and after (packing), and the batch sizes they come from."""
    pad: dict
    old_eff: int
    old_steps: int
    new_eff: int
    new_steps: int
    eff_source: str


def _decide(o: MigrationOptions) -> _Plan:
    """Packing settings: flag, else recommendations.json, else the padding config; raises if the padding config
    already packs or no length is known."""
    from swift_plugins.config.resolve import resolve_config

    analysis = load_analysis(o.analysis_dir)
    rec = analysis.recommendations
    r = rec.get("recommended")
    W = int(o.world_size or (r or {}).get("world_size") or 1)
    resolved = resolve_config(o.padding_config, world_size=W, world_size_source="--world_size")
    t = resolved.config.training
    if t.packing:
        raise UserError(f"{o.padding_config}: training.packing is already true; give the padding config "
                        f"(packing false) to migrate")
    if o.global_max_length is None and r is None:
        raise UserError(f"{o.analysis_dir}/recommendations.json has no recommendation ({rec.get('reason')}); "
                        f"pass --global_max_length")
    L = int(o.global_max_length or r["global_max_length"])
    strategy = o.packing_strategy or (r or {}).get("packing_strategy") or t.packing_strategy
    buffer = t.packing_buffer if o.packing_buffer is None else int(o.packing_buffer)
    min_fill = t.packing_min_fill_ratio if o.packing_min_fill_ratio is None else float(o.packing_min_fill_ratio)
    drop_last = t.packing_drop_last if o.packing_drop_last is None else bool(o.packing_drop_last)
    overlong = o.packing_overlong or (r or {}).get("packing_overlong") or t.packing_overlong
    entry, exact = find_simulation(analysis.simulations, L, strategy, buffer, min_fill, drop_last, overlong)
    return _Plan(analysis, resolved, W, L, strategy, buffer, min_fill, drop_last, overlong, entry, exact)


def _steps(o: MigrationOptions, p: _Plan) -> _Steps:
    """Steps per epoch, worked in the module docstring; with ``match_samples_per_step`` the effective batch comes
    from recommendations.json, which must have been computed for this very run (else UserError with the fix)."""
    t, rec = p.resolved.config.training, p.analysis.recommendations
    old_eff = t.effective_batch_size or p.resolved.gradient_accumulation_steps * t.per_device_train_batch_size * p.W
    pad = padding_rows(p.analysis.total_tokens, p.resolved.config.template.max_length,
                       p.resolved.config.template.truncation_strategy)
    old_steps = ceil_steps(pad["rows"], old_eff)
    eff_source = f"kept from the padding config ({p.resolved.sources.get('training.effective_batch_size')})"
    new_eff = old_eff
    if o.match_samples_per_step:
        match, r = rec["match_padding_samples_per_step"], rec.get("recommended")
        basis = (rec["padding_baseline"]["effective_batch_size"], r["world_size"], r["global_max_length"],
                 r["packing_strategy"])
        if basis != (old_eff, p.W, p.L, p.strategy):
            raise UserError(
                f"{o.analysis_dir}/recommendations.json match_padding_samples_per_step was computed for effective "
                f"batch {basis[0]}, world size {basis[1]}, length {basis[2]}, strategy {basis[3]}; this migration "
                f"has {old_eff}, {p.W}, {p.L}, {p.strategy}: re-run scripts/analyze_token_lengths.py with "
                f"--effective_batch_size {old_eff} --world_size {p.W} (and a --max_lengths list holding {p.L}), or "
                f"drop --match_samples_per_step")
        new_eff = int(match["effective_batch_size"])
        eff_source = (f"recommendations.json match_padding_samples_per_step: {match['samples_per_step']} samples per "
                      f"step, near the padding run's {old_eff}")
    new_steps = ceil_steps(p.entry["num_packs"], new_eff)
    if old_steps < 1 or new_steps < 1:
        raise UserError(f"no optimizer steps (padding {old_steps}, packing {new_steps}): empty analysis?")
    return _Steps(pad, old_eff, old_steps, new_eff, new_steps, eff_source)


def _training_values(o: MigrationOptions, p: _Plan, s: _Steps) -> tuple[dict, dict, dict]:
    """(values to write, the comment saying where each comes from, the padding config's value of each key)."""
    rec, r, src = p.analysis.recommendations, p.analysis.recommendations.get("recommended"), p.resolved.sources
    values: dict = {"packing": True, "global_max_length": p.L, "packing_strategy": p.strategy,
                    "packing_buffer": p.buffer, "packing_min_fill_ratio": p.min_fill, "packing_drop_last": p.drop_last,
                    "packing_overlong": p.overlong, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                    "effective_batch_size": s.new_eff}
    rec_src = "recommendations.json" if r and p.L == r["global_max_length"] else "--global_max_length"
    W, new_eff = p.W, s.new_eff
    notes = {"packing": "swift_plugins planned packing (samples isolated)",
             "global_max_length": f"{rec_src}" + (f": {rec['reason']}" if rec_src == "recommendations.json" else ""),
             "packing_strategy": "--packing_strategy" if o.packing_strategy else "recommendations.json",
             "packing_buffer": "--packing_buffer" if o.packing_buffer is not None else
             f"as the padding config ({src['training.packing_buffer']})",
             "packing_min_fill_ratio": "--packing_min_fill_ratio" if o.packing_min_fill_ratio is not None else
             f"as the padding config ({src['training.packing_min_fill_ratio']})",
             "packing_drop_last": "--packing_drop_last" if o.packing_drop_last is not None else
             f"as the padding config ({src['training.packing_drop_last']})",
             "packing_overlong": "--packing_overlong" if o.packing_overlong else
             ("recommendations.json" + (": dense detection records become pieces, every object trained"
                                        if p.overlong == "split" else "")),
             "per_device_train_batch_size": "one pack per device batch",
             "per_device_eval_batch_size": "one pack per eval batch",
             "effective_batch_size": f"packs per optimizer step, {s.eff_source}; gradient_accumulation_steps "
                                     f"{new_eff} / (1 x {W}) = {new_eff // W if new_eff % W == 0 else 'n/a'}"}
    if p.resolved.config.training.gradient_accumulation_steps is not None:
        values["gradient_accumulation_steps"] = None
        notes["gradient_accumulation_steps"] = "effective_batch_size decides it"
    before = {k: p.resolved.value(f"training.{k}") for k in list(values) + list(STEP_KEYS) + list(RUN_NAME_KEYS)}
    for key in STEP_KEYS:
        v = before[key]
        if v is None:
            continue
        values[key] = rescale_steps(v, s.new_steps, s.old_steps)
        notes[key] = f"{v} x {s.new_steps}/{s.old_steps}"
    for key in RUN_NAME_KEYS:
        v = before[key]
        if v is not None:
            values[key] = rename_run(v)
            notes[key] = f"padding run: {v}"
    return values, notes, before


def _render_yaml(o: MigrationOptions, output: str, p: _Plan, s: _Steps, values: dict, notes: dict) -> str:
    """The packing YAML: a comment header (how to re-run and launch, where the numbers come from), ``extends:``
    the padding config relative to the output's folder, and one commented line per training key."""
    W, L, entry, pad = p.W, p.L, p.entry, s.pad
    extends = os.path.relpath(os.path.abspath(o.padding_config), os.path.dirname(os.path.abspath(output)))
    variant_note = ("" if p.exact else
                    f" (the chosen variant: {p.strategy}, buffer {p.buffer}, min fill {p.min_fill}, drop_last "
                    f"{str(p.drop_last).lower()} was not simulated; its pack count can differ slightly)")
    shown = os.path.relpath(output) if not os.path.isabs(output) else output
    header = [
        f"# Generated by scripts/migrate_to_packing.py from {o.padding_config} and {o.analysis_dir}; re-run it rather "
        "than editing the numbers by hand:",
        f"#   {o.command or 'python scripts/migrate_to_packing.py --padding_config ... --analysis_dir ...'}",
        f"# Launch ({W} GPU{'s' if W > 1 else ''}, from the repository root; paths are relative to it):",
        f"#   torchrun --nproc_per_node={W} -m swift_plugins.sft --config {shown}",
        f"# Check first (no GPU needed): python -m swift_plugins.sft --config {shown} --print_config "
        f"--world_size {W}",
        "#",
        "# Where the numbers come from:",
        f"#   padding: ceil({pad['rows']} samples / effective_batch_size {s.old_eff}) = {s.old_steps} optimizer steps "
        "per epoch" + (f" ({pad['dropped']} samples over template.max_length deleted)" if pad["dropped"] else ""),
        f"#   packing: ceil({entry['num_packs']} packs / effective_batch_size {s.new_eff}) = {s.new_steps} optimizer "
        f"steps per epoch; packs from packing_simulations.json ({variant_text(entry)}, global_max_length {L})"
        f"{variant_note}",
        f"#   {entry.get('records_lost', entry['samples_dropped'])} of {p.analysis.num_samples} records lost by this "
        f"plan ({', '.join(f'{k} {v}' for k, v in sorted(entry['dropped_by_reason'].items())) or 'none'}"
        + (f", {entry['records_unsplittable']} unsplittable" if entry.get("records_unsplittable") else "")
        + f"), {entry.get('records_split', 0)} split into pieces; reported at training time",
        f"#   step keys x {s.new_steps}/{s.old_steps}: nearest integer (halves up), at least 1; 0 stays 0",
    ]
    body = [f"extends: {extends}", "", "training:"]
    for key, v in values.items():
        body.append(f"  {key}: {_yaml_value(v)}   # {notes[key]}")
    return "\n".join(header + body) + "\n"


def _write_validated(output: str, text: str, world_size: int, values: dict):
    """Write ``text`` next to ``output`` under a temporary name, resolve it (every written key must come back
    unchanged, else UserError), then rename it onto ``output``; returns the resolved packing config."""
    from swift_plugins.config.resolve import resolve_config

    with atomic_open(output, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        packed = resolve_config(f.name, world_size=world_size, world_size_source="--world_size")
        for key, v in values.items():
            got = packed.value(f"training.{key}")
            if got != v:
                raise UserError(f"{output}: training.{key} resolves to {got!r}, expected {v!r} (is it overridden "
                                f"after extends?)")
    return packed


def _show(v) -> str:
    """``None`` -> ``-``, ``True`` -> ``true``, ``1234`` -> ``1,234``, else ``str``."""
    if v is None:
        return "-"
    return str(v).lower() if isinstance(v, bool) else f"{v:,}" if isinstance(v, int) else str(v)


def _render_table(p: _Plan, s: _Steps, values: dict, before: dict, packed) -> str:
    """The padding-vs-packing table printed at the end (rows per epoch, batch sizes, steps, step keys)."""
    t, entry, pad = p.resolved.config.training, p.entry, s.pad
    pack_sps = entry["samples_packed"] / entry["num_packs"] * s.new_eff if entry["num_packs"] else 0.0
    rows = [("", "padding", "packing"),
            ("rows per epoch (samples / packs)", fmt_int(pad["rows"]), fmt_int(entry["num_packs"])),
            ("samples dropped", fmt_int(pad["dropped"]), fmt_int(entry["samples_dropped"])),
            ("per_device_train_batch_size", _show(t.per_device_train_batch_size), "1"),
            ("effective_batch_size", fmt_int(s.old_eff), fmt_int(s.new_eff)),
            ("gradient_accumulation_steps", _show(p.resolved.gradient_accumulation_steps),
             _show(packed.gradient_accumulation_steps)),
            ("samples per step", f"{s.old_eff:,.1f}", f"{pack_sps:,.1f}"),
            ("steps per epoch", fmt_int(s.old_steps), fmt_int(s.new_steps)),
            ("total optimizer steps", fmt_int(total_steps(s.old_steps, t.num_train_epochs, t.max_steps)),
             fmt_int(total_steps(s.new_steps, t.num_train_epochs, values.get("max_steps"))))]
    rows += [(k, _show(before[k]) if before[k] is not None or k != "eval_steps" else "(= save_steps)",
              _show(values.get(k)) if k in values else "(= save_steps)" if k == "eval_steps" else "-")
             for k in STEP_KEYS]
    return _table(rows)


def migrate(padding_config: str, analysis_dir: str, output: Optional[str] = None, *, log=print,
            **choices) -> MigrationResult:
    """Write the packing config (see the module docstring); raises ValueError / ConfigError with the fix.

    ``choices`` are :class:`MigrationOptions` fields (``world_size=4``, ``packing_buffer=64``, ...); a padding
    config + an analysis whose recommendation is 8000 tokens, 59 packs per epoch -> ``output`` with
    ``training.global_max_length: 8000`` and the step keys rescaled; the returned MigrationResult holds
    the values, the steps per epoch before/after and the printed table.
    """
    return run_migration(MigrationOptions(padding_config, analysis_dir, output, **choices), log=log)


def run_migration(o: MigrationOptions, log=print) -> MigrationResult:
    """:func:`migrate` over a :class:`MigrationOptions`: decide, compute steps, render, write, report."""
    output = o.output or default_output(o.padding_config)
    log(f"[1/4] reading {o.analysis_dir} and {o.padding_config}")
    p = _decide(o)
    s = _steps(o, p)
    values, notes, before = _training_values(o, p, s)
    log(f"[2/4] steps per epoch: padding ceil({s.pad['rows']} / {s.old_eff}) = {s.old_steps}, packing "
        f"ceil({p.entry['num_packs']} packs / {s.new_eff}) = {s.new_steps} ({variant_text(p.entry)} at {p.L})")
    text = _render_yaml(o, output, p, s, values, notes)
    log(f"[3/4] validating and writing {output}")
    packed = _write_validated(output, text, p.W, values)
    table = _render_table(p, s, values, before, packed)
    log(f"[4/4] {output} (world_size {p.W}):\n{table}")
    return MigrationResult(output=output, world_size=p.W, entry=p.entry, exact_variant=p.exact,
                           old_steps_per_epoch=s.old_steps, new_steps_per_epoch=s.new_steps,
                           old_effective_batch_size=s.old_eff, new_effective_batch_size=s.new_eff, values=values,
                           before=before, table=table, text=text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="migrate_to_packing.py",
        description="Write a packing config that extends a padding config: packing keys from the analysis "
                    "(recommendations.json, packing_simulations.json), step-based keys rescaled to the new step "
                    "count, validated with swift_plugins.config before it is written.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--padding_config", required=True, help="the padding training YAML (extends followed)")
    p.add_argument("--analysis_dir", default="docs/temp_packed_dataset",
                   help="folder written by scripts/analyze_token_lengths.py")
    p.add_argument("--output", default=None,
                   help="packing YAML to write (default: the padding config's name with _padding -> _packed)")
    p.add_argument("--world_size", type=int, default=None, help="GPUs of the run (default: the analysis' --world_size)")
    p.add_argument("--global_max_length", type=int, default=None,
                   help="tokens per pack (default: recommendations.json); must be a simulated length")
    p.add_argument("--packing_strategy", choices=STRATEGIES, default=None,
                   help="default: recommendations.json's")
    p.add_argument("--packing_buffer", type=int, default=None, help="default: the padding config's value")
    p.add_argument("--packing_min_fill_ratio", type=float, default=None, help="default: the padding config's value")
    p.add_argument("--packing_drop_last", type=parse_bool, default=None, help="default: the padding config's value")
    p.add_argument("--packing_overlong", choices=OVERLONG_CHOICES, default=None,
                   help="default: recommendations.json's (split for detection data)")
    p.add_argument("--match_samples_per_step", action="store_true",
                   help="use recommendations.json's match_padding_samples_per_step effective_batch_size (about as "
                        "many samples per optimizer step as the padding run) instead of keeping effective_batch_size")
    return p


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    raise_problems([number_problem("--world_size", args.world_size, minimum=1),
                    number_problem("--global_max_length", args.global_max_length, minimum=1),
                    number_problem("--packing_buffer", args.packing_buffer, minimum=0),
                    number_problem("--packing_min_fill_ratio", args.packing_min_fill_ratio, minimum=0, maximum=1),
                    not os.path.isfile(args.padding_config) and f"--padding_config: {args.padding_config}: no such file",
                    writable_file_problem("--output", args.output or default_output(args.padding_config))])
    command = "python scripts/migrate_to_packing.py " + " ".join(argv)
    run_migration(MigrationOptions(
        args.padding_config, args.analysis_dir, args.output, world_size=args.world_size,
        global_max_length=args.global_max_length, packing_strategy=args.packing_strategy,
        packing_buffer=args.packing_buffer, packing_min_fill_ratio=args.packing_min_fill_ratio,
        packing_drop_last=args.packing_drop_last, packing_overlong=args.packing_overlong,
        match_samples_per_step=args.match_samples_per_step, command=command.strip()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/migrate_to_packing.py``; user errors are ``error:`` lines and exit status 2."""
    return run_main(_main, argv)
