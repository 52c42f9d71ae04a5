"""`scripts/analyze_token_lengths.py`: exact token lengths, packing simulations and a recommended config.

    python scripts/analyze_token_lengths.py --model_path M --train_jsonl A.jsonl [B.jsonl ...] \\
        --output_dir docs/temp_packed_dataset --max_samples 0

writes into ``--output_dir`` (each atomically):

    dataset_stats.json        num_samples, mean/median/max/p95/p99 of total, text and image tokens, skips,
                              and the same per file (``files``)
    sample_stats.jsonl        one line per record: file (index into inputs.train_jsonl), line, kind (lvis |
                              messages), text_tokens, image_tokens, total_tokens, num_objects, num_images
    packing_simulations.json  one entry per (global_max_length, strategy[, buffer], overlong drop | split)
    recommendations.json      recommended global_max_length + the numbers behind it
    skipped_records.jsonl     every record left out under --on_error skip, with its reason
    analysis_full.log         everything printed, plus timings

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
from typing import Optional, Sequence, Union

from swift_plugins.analysis.counting import count_files, file_rows, split_files
from swift_plugins.analysis.simulate import auto_max_lengths, dataset_stats, recommend, simulate
from swift_plugins.data.conversation import EMIT_NORMS, OBJECT_ORDERINGS, ConversationOptions
from swift_plugins.data.reader import write_skip_report
from swift_plugins.data.records import ON_ERROR_CHOICES, RECORD_FORMATS
from swift_plugins.errors import UserError, run_main
from swift_plugins.families import counting_template, family_of_model
from swift_plugins.files import atomic_write_text
from swift_plugins.lengths.dataset import KIND_CODES
from swift_plugins.packing.planner import DEFAULT_STRATEGY, STRATEGIES

# Detection records are split, not dropped, when too long: every object of a dense scene is trained.
DETECTION_OVERLONG = "split"

__all__ = ["AnalysisOptions", "build_parser", "main", "options_from_argv", "parse_bool", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyze_token_lengths.py",
        description="Exact Qwen-VL token lengths (the model family from its config.json) of a detection JSONL (text + image tokens, the same numbers "
                    "ms-swift's template produces), packing simulations over max lengths and strategies, and a "
                    "recommended packing config. Image tokens come from each record's width/height through the "
                    "training path's resize rule; no image is decoded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("inputs")
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
                   help="validate that each image file exists and its header size matches width/height "
                        "(false for width/height-only sets)")
    g.add_argument("--num_workers", type=int, default=1,
                   help="processes counting lengths (results identical for any value)")
    g.add_argument("--cache_dir", default=".cache/swiftpack",
                   help="length cache; keyed by data bytes, tokenizer, options and code")
    g.add_argument("--clear_cache", action="store_true",
                   help="ignore and rebuild the cache entry for these inputs")
    g = p.add_argument_group("conversation and template (must match training)")
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
    g = p.add_argument_group("packing simulation")
    g.add_argument("--max_lengths", type=_int_list, default="auto",
                   help="comma-separated global_max_length values to simulate; auto: 1.5, 2, 2.5 and 3 x the "
                        "p99 sample length rounded up to 1,000 (12k/16k/20k/24k for LVIS rescale_32_768_poly_20)")
    g.add_argument("--strategies", type=_str_list, default=list(STRATEGIES), help=f"subset of {list(STRATEGIES)}")
    g.add_argument("--packing_buffer", type=int, default=256,
                   help=f"also simulate {DEFAULT_STRATEGY} planned in windows of this many samples (0 = skip)")
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


def _check_inputs(args: AnalysisOptions) -> None:
    if not os.path.isdir(args.model_path):
        raise UserError(f"--model_path: {args.model_path}: no such directory (give a local model folder with "
                        f"tokenizer.json and preprocessor_config.json)")
    for path in args.train_jsonl:
        if not os.path.isfile(path):
            raise UserError(f"--train_jsonl: {path}: no such file (paths are relative to the working "
                            f"directory {os.getcwd()})")


def run(args: AnalysisOptions) -> dict:
    """Count, simulate, recommend and write every output (see the module docstring)."""
    from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table, setup_dict
    from swift_plugins.training.calibration import load_counter

    _check_inputs(args)
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "analysis_full.log")
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    t_start = time.perf_counter()
    options = ConversationOptions(prompt=args.prompt, object_ordering=args.object_ordering, emit_norm=args.emit_norm,
                                  seed=args.seed)
    family = family_of_model(args.model_path)
    template = counting_template(family, args.template, "--template")
    log(f"analyze_token_lengths: {', '.join(args.train_jsonl)} with {args.model_path} ({family.title}, template "
        f"{template}, max_pixels {args.max_pixels})")
    t0 = time.perf_counter()
    counter = load_counter(args.model_path, model_type=args.model_type or family.swift_model_type, template_type=template,
                           max_pixels=args.max_pixels, user_texts=("<image>" + options.resolved_prompt,),
                           cache_dir=args.cache_dir or None, clear_cache=args.clear_cache)
    log(f"template calibrated in {time.perf_counter() - t0:.1f}s; image rule {counter.rule.to_dict()}")

    t0 = time.perf_counter()
    progress = _Progress(args.train_jsonl, args.max_samples)
    try:
        lengths = count_files(args.train_jsonl, counter, options, progress=progress, on_error=args.on_error,
                              check_images=args.check_images, max_records=args.max_samples,
                              num_workers=args.num_workers, cache_dir=args.cache_dir or None,
                              clear_cache=args.clear_cache, record_format=args.record_format)
    finally:
        progress.close()
    write_skip_report(os.path.join(args.output_dir, "skipped_records.jsonl"), lengths.skipped)
    summary = lengths.summary()
    log(f"counted {len(lengths)} records in {time.perf_counter() - t0:.1f}s "
        f"({'from cache' if lengths.from_cache else f'{args.num_workers} worker(s)'})")
    for d in lengths.per_file:
        log(d.summary.log_line())

    stats = dataset_stats(lengths, summary)
    stats["files"] = file_rows(lengths)
    stats["inputs"] = {"train_jsonl": list(args.train_jsonl), "model_path": args.model_path,
                       "family": family.model_type, "template": template, "max_pixels": args.max_pixels, "record_format": args.record_format,
                       "conversation": options.to_dict(), "image_rule": counter.rule.to_dict(),
                       "max_samples": args.max_samples}
    _write_json(os.path.join(args.output_dir, "dataset_stats.json"), stats)
    total = lengths.total_tokens
    kind_names = {code: name for name, code in KIND_CODES.items()}
    sample_lines = (json.dumps({"file": int(f), "line": int(l), "kind": kind_names[int(k)], "text_tokens": int(t),
                                "image_tokens": int(i), "total_tokens": int(t + i), "num_objects": int(o),
                                "num_images": int(m)}) + "\n"
                    for f, l, k, t, i, o, m in zip(lengths.file, lengths.line, lengths.kind, lengths.text_tokens,
                                                   lengths.image_tokens, lengths.num_objects, lengths.num_images))
    atomic_write_text(os.path.join(args.output_dir, "sample_stats.jsonl"), "".join(sample_lines))
    log(f"tokens per sample: total mean {stats['mean_total_tokens']}, median {stats['median_total_tokens']}, "
        f"p95 {stats['p95_total_tokens']}, p99 {stats['p99_total_tokens']}, max {stats['max_total_tokens']}; "
        f"image mean {stats['mean_image_tokens']}, text mean {stats['mean_text_tokens']}")

    if args.max_lengths == "auto":
        args = dataclasses.replace(args, max_lengths=auto_max_lengths(total))
        log(f"max lengths (auto, around p99 {stats['p99_total_tokens']}): {args.max_lengths}")
    t0 = time.perf_counter()
    # overlong=split: the pieces training would make, measured exactly (detection records; one
    # with an object too long alone is unsplittable and counted as lost)
    split_samples = {L: split_files(lengths, counter, options, L) for L in args.max_lengths}
    sims = simulate(total, args.max_lengths, args.strategies, seed=args.seed,
                    effective_batch_size=args.effective_batch_size, num_train_epochs=args.num_train_epochs,
                    packing_buffer=args.packing_buffer or None, min_fill_ratio=args.packing_min_fill_ratio,
                    drop_last=args.packing_drop_last, split_samples=split_samples)
    _write_json(os.path.join(args.output_dir, "packing_simulations.json"), sims)
    log(f"packing simulations ({len(sims)}) in {time.perf_counter() - t0:.1f}s (overlong split: "
        + ", ".join(f"{L}: {v[1]} records split, {v[2]} unsplittable" for L, v in split_samples.items()) + "):")
    log(f"  {'max_len':>8} {'strategy':>9} {'buffer':>6} {'overlong':>8} {'packs':>7} {'smp/pack':>8} "
        f"{'effic.':>8} {'lost':>7} {'steps/ep':>8}")
    for e in sims:
        log(f"  {e['global_max_length']:>8} {e['strategy']:>9} {str(e['buffer_size'] or '-'):>6} {e['overlong']:>8} "
            f"{e['num_packs']:>7} {e['avg_samples_per_pack']:>8.2f} {e['efficiency']:>8.2%} {e['records_lost']:>7} "
            f"{e['steps_per_epoch']:>8}")

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
    rec["memory"] = {"model_params": shape.total_params, "setup": setup_dict(setup), "gpu_memory_gib": args.gpu_memory_gib,
                     "per_length": [mem_rows[n] for n in args.max_lengths]}
    _write_json(os.path.join(args.output_dir, "recommendations.json"), rec)
    if rec.get("recommended"):
        r, why = rec["recommended"], rec["why"]
        log(f"recommended: global_max_length {r['global_max_length']} ({rec['reason']}): efficiency "
            f"{why['efficiency']:.2%}, {why['records_split']} records split, {why['records_lost']} lost, "
            f"~{why['estimated_memory_gib']} GiB/GPU, "
            f"{why['optimizer_steps_per_epoch']} optimizer steps/epoch at effective batch {r['effective_batch_size']}")
    log(f"outputs in {os.path.abspath(args.output_dir)} (total {time.perf_counter() - t_start:.1f}s)")
    atomic_write_text(log_path, "\n".join(log_lines) + "\n")
    return {"stats": stats, "simulations": sims, "recommendations": rec}


def _main(argv: Optional[Sequence[str]] = None) -> int:
    run(options_from_argv(argv))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/analyze_token_lengths.py``; user errors are ``error:`` lines and exit status 2."""
    return run_main(_main, argv)
