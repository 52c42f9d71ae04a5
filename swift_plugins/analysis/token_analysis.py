"""Exact token lengths, packing simulations and a recommended config (the command is
:mod:`swift_plugins.analyze`, which hands :func:`run` the adapter's template calibration).

    python scripts/analyze_token_lengths.py --model_path M --train_jsonl A.jsonl [B.jsonl ...] \\
        --output_dir docs/temp_packed_dataset --max_samples 0

writes into ``--output_dir``, together: the outputs go to a staging folder first and move into
place when the run is complete, ``analysis_manifest.json`` (each file's digest) last; the run
first removes the earlier analysis of the folder and the figures made from it
(:mod:`swift_plugins.analysis.folder`), so the folder holds one analysis or none:

    dataset_stats.json        num_samples, mean/median/max/p95/p99 of total, text and image tokens, skips,
                              and the same per file (``files``)
    sample_stats.jsonl        one line per record: file (index into inputs.train_jsonl), line, kind (lvis |
                              messages), text_tokens, image_tokens, total_tokens, num_objects, num_images
    packing_simulations.json  one entry per (global_max_length, strategy[, buffer], overlong drop | split)
    recommendations.json      recommended global_max_length + the numbers behind it
    skipped_records.jsonl     every record left out under --on_error skip, with its reason
    analysis_full.log         everything printed, plus timings
    analysis_manifest.json    run_id and the digest of each file above (readers check it)

Refused up front, one ``error:`` line each, exit 2, before a model or record is read: a model
folder without config.json, a missing, empty or twice-listed ``--train_jsonl``, an output or
cache folder that is a file or not writable, numbers out of range, a ``--max_lengths`` value above
the model's context, bad ``MAX_PIXELS``-style environment overrides. After counting: no record
left (all skipped). Records longer than the model's context are listed in
``recommendations.json`` (``beyond_context``); the auto lengths are capped at the context.

``text_tokens`` counts every non-image token of the training sequence (chat markers, prompt,
``<|vision_start|>``/``<|vision_end|>``, the answer); ``image_tokens`` the ``<|image_pad|>``
tokens; ``total_tokens`` = their sum = ``len(template.encode(row)["input_ids"])``.

The statistics, simulations and the recommendation are :mod:`swift_plugins.analysis.simulate`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from swift_plugins.analysis.counting import count_files, file_rows, split_files
from swift_plugins.analysis.folder import staged_analysis
from swift_plugins.analysis.simulate import auto_max_lengths, dataset_stats, recommend, simulate
from swift_plugins.data.conversation import EMIT_NORMS, OBJECT_ORDERINGS, ConversationOptions
from swift_plugins.data.reader import write_skip_report
from swift_plugins.data.records import ON_ERROR_CHOICES, RECORD_FORMATS
from swift_plugins.checks import (env_problems, jsonl_problems, model_context_length, model_dir_problem, number_problem,
                                  raise_problems, writable_dir_problem)
from swift_plugins.errors import ArgumentParser, UserError
from swift_plugins.families import counting_template, family_of_model
from swift_plugins.files import atomic_write_text
from swift_plugins.lengths.counter import LengthCounter
from swift_plugins.lengths.dataset import KIND_CODES
from swift_plugins.packing.planner import DEFAULT_STRATEGY, STRATEGIES

# Detection records are split, not dropped, when too long: every object of a dense scene is trained.
DETECTION_OVERLONG = "split"

__all__ = ["AnalysisOptions", "beyond_context", "build_parser", "check_options", "options_from_argv", "parse_bool",
           "run"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="analyze_token_lengths.py",
        description="Exact Qwen-VL token lengths (the model family from its config.json) of a detection JSONL (text + image tokens, the same numbers "
                    "ms-swift's template produces), packing simulations over max lengths and strategies, and a "
                    "recommended packing config. Image tokens come from each record's width/height through the "
                    "training path's resize rule; no image is decoded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_input_arguments(p.add_argument_group("inputs"))
    _add_conversation_arguments(p.add_argument_group("conversation and template (must match training)"))
    _add_simulation_arguments(p.add_argument_group("packing simulation"))
    _add_training_arguments(p.add_argument_group("training setup (steps, recommendation)"))
    return p


def _add_input_arguments(g) -> None:
    """Which files, which model, how bad records and images are handled, workers and cache."""
    g.add_argument("--model_path", required=True, help="local model folder (tokenizer + processor; weights unused)")
    g.add_argument("--train_jsonl", required=True, nargs="+",
                   help="one or more JSONL files: LVIS detection records and / or ms-swift messages rows "
                        "(see public_data/README.md)")
    g.add_argument("--record_format", choices=RECORD_FORMATS, default="auto",
                   help="kind of the records: lvis, messages, auto (each record by its keys)")
    g.add_argument("--output_dir", default="docs/temp_packed_dataset", help="where the outputs are written")
    g.add_argument("--max_samples", type=int, default=0, help="analyse only the first N records of each file (0 = all)")
    g.add_argument("--on_error", choices=ON_ERROR_CHOICES, default="raise",
                   help="bad record: raise = stop with path:line: field: reason; skip = leave it out and list it "
                        "in skipped_records.jsonl")
    g.add_argument("--check_images", type=parse_bool, default=True,
                   help="validate that each image file exists, its header size matches width/height and its "
                        "pixel data decodes (false for width/height-only sets)")
    g.add_argument("--check_image_data", type=parse_bool, default=True,
                   help="with --check_images: decode each image's pixel data once, so a corrupt file is a bad "
                        "record now and not an OSError in training (false: headers only, faster counting; "
                        "docs/benchmarks.md)")
    g.add_argument("--num_workers", type=int, default=1,
                   help="processes counting lengths (results identical for any value)")
    g.add_argument("--cache_dir", default=".cache/swiftpack",
                   help="length cache; keyed by data bytes, tokenizer, options and code")
    g.add_argument("--clear_cache", action="store_true",
                   help="ignore and rebuild the cache entry for these inputs")


def _add_conversation_arguments(g) -> None:
    """Model type, template and conversation options: they must be training's, or the counts differ."""
    g.add_argument("--model_type", default=None,
                   help="ms-swift model type (default: the family's, from the model's config.json model_type)")
    g.add_argument("--template", default=None,
                   help="ms-swift template type (default: the family's; its packing template counts the same)")
    g.add_argument("--max_pixels", type=int, default=None,
                   help="template max_pixels (ms-swift --max_pixels); images above it are scaled down first")
    g.add_argument("--prompt", default=None, help="user prompt (default: the data layer's DEFAULT_PROMPT)")
    g.add_argument("--object_ordering", default="sorted", choices=OBJECT_ORDERINGS,
                   help="object order in the answer (does not change lengths, kept for the cache key)")
    g.add_argument("--emit_norm", default="none", choices=EMIT_NORMS, help="coordinate format")
    g.add_argument("--seed", type=int, default=0, help="seed for object ordering and packing plans")


def _add_simulation_arguments(g) -> None:
    """The lengths and strategies simulated, and the buffered variant."""
    g.add_argument("--max_lengths", type=_int_list, default="auto",
                   help="comma-separated global_max_length values to simulate; auto: 1.5, 2, 2.5 and 3 x the "
                        "p99 sample length rounded up to 1,000 (12k/16k/20k/24k for LVIS rescale_32_768_poly_20)")
    g.add_argument("--strategies", type=_str_list, default=list(STRATEGIES), help=f"subset of {list(STRATEGIES)}")
    g.add_argument("--packing_buffer", type=int, default=256,
                   help=f"also simulate {DEFAULT_STRATEGY} planned in windows of this many samples (0 = skip)")
    g.add_argument("--packing_min_fill_ratio", type=float, default=0.7, help="min fill for the buffered variant")
    g.add_argument("--packing_drop_last", type=parse_bool, default=True, help="drop_last for the buffered variant")


def _add_training_arguments(g) -> None:
    """The training setup the steps and the recommendation (memory estimate) are computed for."""
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

    def __init__(self, paths, max_records: int):
        from tqdm import tqdm

        total = sum(max_records or _count_lines(path) for path in paths)
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


@dataclass(frozen=True)
class AnalysisOptions:
    """Everything one analysis run uses; the parser (:func:`build_parser`) holds the defaults and help."""
    model_path: str
    train_jsonl: list
    output_dir: str
    record_format: str
    max_samples: int
    on_error: str
    check_images: bool
    check_image_data: bool
    num_workers: int
    cache_dir: Optional[str]
    clear_cache: bool
    model_type: Optional[str]
    template: Optional[str]
    max_pixels: Optional[int]
    prompt: Optional[str]
    object_ordering: str
    emit_norm: str
    seed: int
    max_lengths: Union[str, list]
    strategies: list
    packing_buffer: int
    packing_min_fill_ratio: float
    packing_drop_last: bool
    effective_batch_size: int
    world_size: int
    per_device_train_batch_size: int
    padding_batch_size: int
    num_train_epochs: int
    gpu_memory_gib: float
    memory_headroom: float
    tuner: str
    lora_rank: int
    zero_stage: int
    gradient_checkpointing: bool
    max_drop_fraction: float


def options_from_argv(argv: Optional[Sequence[str]] = None) -> AnalysisOptions:
    """The command line (defaults from :func:`build_parser`) as :class:`AnalysisOptions`."""
    return AnalysisOptions(**vars(build_parser().parse_args(argv)))


def check_options(args: AnalysisOptions, environ=os.environ) -> Optional[int]:
    """Every up-front refusal (paths, numbers, environment), all at once, before a model or record is read;
    returns the model's context length (``max_position_embeddings``, None when config.json has none)."""
    problems = [model_dir_problem("--model_path", args.model_path)]
    problems += jsonl_problems("--train_jsonl", args.train_jsonl)
    positive = ("num_workers", "effective_batch_size", "world_size", "per_device_train_batch_size",
                "padding_batch_size", "num_train_epochs", "lora_rank", "max_pixels")
    problems += [number_problem(f"--{name}", getattr(args, name), minimum=1) for name in positive]
    problems += [number_problem(f"--{name}", getattr(args, name), minimum=0)
                 for name in ("max_samples", "seed", "packing_buffer")]
    problems += [number_problem(f"--{name}", getattr(args, name), minimum=0, maximum=1)
                 for name in ("packing_min_fill_ratio", "max_drop_fraction")]
    problems += [number_problem("--memory_headroom", args.memory_headroom, minimum=0, below=1),
                 number_problem("--gpu_memory_gib", args.gpu_memory_gib, above=0)]
    problems += env_problems(environ)
    context = None if problems[0] else model_context_length(args.model_path)
    if context and args.max_lengths != "auto" and max(args.max_lengths) > context:
        problems.append(f"--max_lengths: {max(args.max_lengths)} is above the model's context "
                        f"(max_position_embeddings {context} in {args.model_path}/config.json); give lengths up to "
                        f"{context}")
    raise_problems(problems)
    raise_problems([writable_dir_problem("--output_dir", args.output_dir)]
                   + ([writable_dir_problem("--cache_dir", args.cache_dir)] if args.cache_dir else []))
    return context


def _refuse_nothing_counted(lengths) -> None:
    """No record left after the skips: a recommendation over nothing would be a number without meaning."""
    if len(lengths):
        return
    skipped = lengths.skipped
    first = f" (first: {skipped[0].path}:{skipped[0].line}: {skipped[0].field}: {skipped[0].reason})" if skipped else ""
    raise UserError(f"--train_jsonl: nothing to analyse: all {len(skipped)} record(s) were skipped{first}; fix the "
                    f"records (--on_error raise stops at the first with its fix)")


def beyond_context(lengths, context: Optional[int]) -> dict:
    """Records longer than the model's context (``max_position_embeddings``): never trained whole.

    ``{"max_position_embeddings": 4096, "records": [{"jsonl": "a.jsonl", "line": 7, "total_tokens": 5000,
    "reason": ...}]}``; a detection record among them is split into pieces under ``packing_overlong:
    split``, a messages row is dropped (every simulated length is at most the context).
    """
    rows = []
    if context:
        for r in np.flatnonzero(lengths.total_tokens > context):
            rows.append({"jsonl": lengths.paths[int(lengths.file[r])], "line": int(lengths.line[r]),
                         "total_tokens": int(lengths.total_tokens[r]),
                         "reason": f"longer than the model's context (max_position_embeddings {context})"})
    return {"max_position_embeddings": context, "records": rows}


def run(args: AnalysisOptions, load_counter: Callable[..., LengthCounter]) -> dict:
    """Check everything up front, then count, simulate, recommend and write every output into a staging
    folder moved into ``output_dir`` whole (:mod:`swift_plugins.analysis.folder`; module docstring).

    ``load_counter``: the template calibration, ``swift_plugins.training.calibration.load_counter``
    (it needs ms-swift, so this package takes it as an argument instead of importing the adapter)."""
    context = check_options(args)
    with staged_analysis(args.output_dir) as stage:
        return _analyse(args, stage, context, load_counter)


class _Log:
    """``log(msg)`` prints a line at once and keeps it for ``analysis_full.log``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        self.lines.append(msg)


def _analyse(args: AnalysisOptions, stage: str, context: Optional[int], load_counter) -> dict:
    """Count -> statistics -> simulations -> recommendation, each written into ``stage`` as it is made; the
    log last. ``max_lengths`` auto becomes the lengths around the p99 sample, capped at ``context``."""
    log = _Log()
    t_start = time.perf_counter()
    options = ConversationOptions(prompt=args.prompt, object_ordering=args.object_ordering, emit_norm=args.emit_norm,
                                  seed=args.seed)
    family = family_of_model(args.model_path)
    template = counting_template(family, args.template, "--template")
    log(f"analyze_token_lengths: {', '.join(args.train_jsonl)} with {args.model_path} ({family.title}, template "
        f"{template}, max_pixels {args.max_pixels})")
    counter = _calibrated_counter(args, family, template, options, log, load_counter)
    lengths = _count_lengths(args, stage, counter, options, log)
    stats = dataset_stats(lengths, lengths.summary())
    stats["files"] = file_rows(lengths)
    stats["inputs"] = {"train_jsonl": list(args.train_jsonl), "model_path": args.model_path,
                       "family": family.model_type, "template": template, "max_pixels": args.max_pixels,
                       "record_format": args.record_format, "conversation": options.to_dict(),
                       "image_rule": counter.rule.to_dict(), "max_samples": args.max_samples}
    _write_json(os.path.join(stage, "dataset_stats.json"), stats)
    _write_sample_stats(os.path.join(stage, "sample_stats.jsonl"), lengths)
    log(f"tokens per sample: total mean {stats['mean_total_tokens']}, median {stats['median_total_tokens']}, "
        f"p95 {stats['p95_total_tokens']}, p99 {stats['p99_total_tokens']}, max {stats['max_total_tokens']}; "
        f"image mean {stats['mean_image_tokens']}, text mean {stats['mean_text_tokens']}")
    if args.max_lengths == "auto":
        lengths_auto = auto_max_lengths(lengths.total_tokens)
        args = dataclasses.replace(args, max_lengths=sorted({min(L, context or L) for L in lengths_auto}))
        log(f"max lengths (auto, around p99 {stats['p99_total_tokens']}): {args.max_lengths}"
            + (f" (capped at the model's context {context})" if args.max_lengths != lengths_auto else ""))
    sims = _simulations(args, stage, lengths, counter, options, log)
    rec = _recommendation(args, stage, lengths, sims, stats, context, log)
    log(f"outputs in {os.path.abspath(args.output_dir)} (total {time.perf_counter() - t_start:.1f}s)")
    atomic_write_text(os.path.join(stage, "analysis_full.log"), "\n".join(log.lines) + "\n")
    return {"stats": stats, "simulations": sims, "recommendations": rec}


def _calibrated_counter(args: AnalysisOptions, family, template: str, options: ConversationOptions, log,
                        load_counter):
    """The family's LengthCounter for ``template``, calibrated for the prompt (cached under ``cache_dir``)."""
    t0 = time.perf_counter()
    counter = load_counter(args.model_path, model_type=args.model_type or family.swift_model_type, template_type=template,
                           max_pixels=args.max_pixels, user_texts=("<image>" + options.resolved_prompt,),
                           cache_dir=args.cache_dir or None, clear_cache=args.clear_cache)
    log(f"template calibrated in {time.perf_counter() - t0:.1f}s; image rule {counter.rule.to_dict()}")
    return counter


def _count_lengths(args: AnalysisOptions, stage: str, counter, options: ConversationOptions, log):
    """Exact lengths of every input file (UserError when no record is left); writes the skip report."""
    t0 = time.perf_counter()
    progress = _Progress(args.train_jsonl, args.max_samples)
    try:
        lengths = count_files(args.train_jsonl, counter, options, progress=progress, on_error=args.on_error,
                              check_images=args.check_images, check_image_data=args.check_image_data,
                              max_records=args.max_samples,
                              num_workers=args.num_workers, cache_dir=args.cache_dir or None,
                              clear_cache=args.clear_cache, record_format=args.record_format)
    finally:
        progress.close()
    _refuse_nothing_counted(lengths)
    write_skip_report(os.path.join(stage, "skipped_records.jsonl"), lengths.skipped)
    log(f"counted {len(lengths)} records in {time.perf_counter() - t0:.1f}s "
        f"({'from cache' if lengths.from_cache else f'{args.num_workers} worker(s)'})")
    for d in lengths.per_file:
        log(d.summary.log_line())
    return lengths


def _write_sample_stats(path: str, lengths) -> None:
    """One JSON line per counted record, e.g. ``{"file": 0, "line": 3, "kind": "lvis", "text_tokens": 41,
    "image_tokens": 64, "total_tokens": 105, "num_objects": 2, "num_images": 1}``."""
    kind_names = {code: name for name, code in KIND_CODES.items()}
    sample_lines = (json.dumps({"file": int(f), "line": int(l), "kind": kind_names[int(k)], "text_tokens": int(t),
                                "image_tokens": int(i), "total_tokens": int(t + i), "num_objects": int(o),
                                "num_images": int(m)}) + "\n"
                    for f, l, k, t, i, o, m in zip(lengths.file, lengths.line, lengths.kind, lengths.text_tokens,
                                                   lengths.image_tokens, lengths.num_objects, lengths.num_images))
    atomic_write_text(path, "".join(sample_lines))


def _simulations(args: AnalysisOptions, stage: str, lengths, counter, options: ConversationOptions, log) -> list:
    """Every (length, strategy[, buffer], overlong drop | split) plan, written and logged as a table."""
    t0 = time.perf_counter()
    # overlong=split: the pieces training would make, measured exactly (detection records; one
    # with an object too long alone is unsplittable and counted as lost)
    split_samples = {L: split_files(lengths, counter, options, L) for L in args.max_lengths}
    sims = simulate(lengths.total_tokens, args.max_lengths, args.strategies, seed=args.seed,
                    effective_batch_size=args.effective_batch_size, num_train_epochs=args.num_train_epochs,
                    packing_buffer=args.packing_buffer or None, min_fill_ratio=args.packing_min_fill_ratio,
                    drop_last=args.packing_drop_last, split_samples=split_samples)
    _write_json(os.path.join(stage, "packing_simulations.json"), sims)
    log(f"packing simulations ({len(sims)}) in {time.perf_counter() - t0:.1f}s (overlong split: "
        + ", ".join(f"{L}: {v[1]} records split, {v[2]} unsplittable" for L, v in split_samples.items()) + "):")
    log(f"  {'max_len':>8} {'strategy':>9} {'buffer':>6} {'overlong':>8} {'packs':>7} {'smp/pack':>8} "
        f"{'effic.':>8} {'lost':>7} {'steps/ep':>8}")
    for e in sims:
        log(f"  {e['global_max_length']:>8} {e['strategy']:>9} {str(e['buffer_size'] or '-'):>6} {e['overlong']:>8} "
            f"{e['num_packs']:>7} {e['avg_samples_per_pack']:>8.2f} {e['efficiency']:>8.2%} {e['records_lost']:>7} "
            f"{e['steps_per_epoch']:>8}")
    return sims


def _recommendation(args: AnalysisOptions, stage: str, lengths, sims: list, stats: dict, context: Optional[int],
                    log) -> dict:
    """recommendations.json: the recommended length (memory estimated per length), the records beyond the
    model's context and the memory table; logged in one line."""
    from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table, setup_dict

    shape = ModelShape.from_config(args.model_path)
    setup = MemorySetup(tuner=args.tuner, lora_rank=args.lora_rank, zero_stage=args.zero_stage,
                        gradient_checkpointing=args.gradient_checkpointing, world_size=args.world_size)
    mem_rows = {r["seq_len"]: r for r in memory_table(shape, args.max_lengths, setup)}
    rec = recommend(sims, stats, memory_rows=mem_rows, gpu_memory_gib=args.gpu_memory_gib,
                    memory_headroom=args.memory_headroom, max_drop_fraction=args.max_drop_fraction,
                    effective_batch_size=args.effective_batch_size, world_size=args.world_size,
                    per_device_train_batch_size=args.per_device_train_batch_size,
                    padding_batch_size=args.padding_batch_size, num_train_epochs=args.num_train_epochs,
                    overlong=DETECTION_OVERLONG if lengths.has_detection_records() else "drop")
    rec["beyond_context"] = beyond_context(lengths, context)
    if rec["beyond_context"]["records"]:
        log(f"{len(rec['beyond_context']['records'])} record(s) longer than the model's context {context} "
            f"(max_position_embeddings): never trained whole (split if detection records, else dropped); "
            f"listed in recommendations.json beyond_context")
    rec["memory"] = {"model_params": shape.total_params, "setup": setup_dict(setup), "gpu_memory_gib": args.gpu_memory_gib,
                     "per_length": [mem_rows[n] for n in args.max_lengths]}
    _write_json(os.path.join(stage, "recommendations.json"), rec)
    if rec.get("recommended"):
        r, why = rec["recommended"], rec["why"]
        log(f"recommended: global_max_length {r['global_max_length']} ({rec['reason']}): efficiency "
            f"{why['efficiency']:.2%}, {why['records_split']} records split, {why['records_lost']} lost, "
            f"~{why['estimated_memory_gib']} GiB/GPU, "
            f"{why['optimizer_steps_per_epoch']} optimizer steps/epoch at effective batch {r['effective_batch_size']}")
    return rec
