"""An analysis folder, loaded, and the step arithmetic the report and the migration share.

``scripts/analyze_token_lengths.py`` writes ``dataset_stats.json``, ``sample_stats.jsonl``,
``packing_simulations.json`` and ``recommendations.json``; :func:`load_analysis` reads them back
(strictly: a bad line is an error naming file:line and the fix) and nothing here re-simulates.

Padding overhead, defined (:func:`padding_overhead`): the samples, in data order, are cut into
per-device batches of ``padding_batch_size`` consecutive samples (the last batch may be
smaller); each batch is padded to its longest sample::

    padded tokens    = sum over batches of (batch size x longest - sum of lengths)
    padding overhead = padded tokens / real tokens
    lengths [3, 5, 2, 2], batch 2 -> batches [3, 5] (pads 2), [2, 2] (pads 0) -> 2 / 12 = 16.67%

Training shuffles, so the report also gives the same number for one seeded shuffle
(``numpy.random.default_rng(seed).permutation``). A packed device batch is one pack: nothing is
padded; its unused capacity is ``num_packs x global_max_length - packed tokens``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from swift_plugins.analysis.folder import check_analysis
from swift_plugins.analysis.memory import MemorySetup
from swift_plugins.errors import UserError

__all__ = [
    "ANALYZE_HINT", "Analysis", "REQUIRED_FILES", "SAMPLE_STATS_COLUMNS", "TrainingSetup", "ceil_steps",
    "find_simulation", "fmt_int", "fmt_num", "fmt_pct", "fmt_val", "load_analysis", "md_table", "padding_overhead",
    "padding_rows", "read_sample_stats", "setup_from_analysis", "setup_from_config", "setup_lines", "total_steps",
    "variant_text", "zero_stage_of",
]

REQUIRED_FILES = ("dataset_stats.json", "sample_stats.jsonl", "packing_simulations.json", "recommendations.json")
ANALYZE_HINT = "run scripts/analyze_token_lengths.py --output_dir DIR first"


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
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); {ANALYZE_HINT}") from None
            row = [record.get(name) if isinstance(record, dict) else None for name in SAMPLE_STATS_COLUMNS]
            for name, v in zip(SAMPLE_STATS_COLUMNS, row):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise UserError(f"{path}:{lineno}: field {name!r} must be a non-negative integer, got {v!r}; "
                                     f"{ANALYZE_HINT}")
            rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(SAMPLE_STATS_COLUMNS))


def load_analysis(input_dir: str) -> Analysis:
    """Read an analysis folder: a missing file, a folder whose files are not one analysis
    (:func:`~swift_plugins.analysis.folder.check_analysis`) or a bad line is a UserError naming the file and the fix."""
    missing = [n for n in REQUIRED_FILES if not os.path.isfile(os.path.join(input_dir, n))]
    if missing:
        raise UserError(f"{input_dir}: missing {', '.join(missing)}; {ANALYZE_HINT}")
    check_analysis(input_dir)  # the files are one complete analysis, not an old one mixed with a new one

    def load(name):
        path = os.path.join(input_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}; {ANALYZE_HINT}") from None

    stats, sims, rec = load("dataset_stats.json"), load("packing_simulations.json"), load("recommendations.json")
    path = os.path.join(input_dir, "sample_stats.jsonl")
    arr = read_sample_stats(path)
    if len(arr) != stats["num_samples"]:
        raise UserError(f"{path}: {len(arr)} rows but dataset_stats.json says num_samples {stats['num_samples']}; "
                         f"the folder mixes two analyses: {ANALYZE_HINT}")
    if not sims:
        raise UserError(f"{os.path.join(input_dir, 'packing_simulations.json')}: no simulations; {ANALYZE_HINT}")
    return Analysis(input_dir=input_dir, stats=stats, simulations=sims, recommendations=rec,
                    text_tokens=arr[:, 0], image_tokens=arr[:, 1], total_tokens=arr[:, 2])


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
    packing_overlong: str
    memory: MemorySetup
    model_path: Optional[str]
    shuffle_seed: int
    source: str
    padding_config: Optional[str] = None  # the --config file when it is a padding config
    padding_batch_source: str = "recommendations.json padding_baseline"


def setup_from_analysis(analysis: Analysis, *, world_size: Optional[int] = None,
                        global_max_length: Optional[int] = None) -> TrainingSetup:
    """The analysis CLI's own setup (recommendations.json); packing = the recommendation's plan (its strategy, one window)."""
    rec = analysis.recommendations
    r = analysis.recommended
    if r is None:
        raise UserError(f"{analysis.input_dir}/recommendations.json: no recommendation "
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
        packing_overlong=r.get("packing_overlong", "drop"),
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
        raise UserError(f"deepspeed.config: {deepspeed_config}: no such file (paths are relative to the "
                                f"working directory {os.getcwd()})") from None


def setup_from_config(analysis: Analysis, config_path: str, *, world_size: Optional[int] = None,
                      global_max_length: Optional[int] = None) -> TrainingSetup:
    """The setup of a training YAML (padding or packing), resolved with ``swift_plugins.config``.

    Padding config: its per-device batch is the padding batch; the packing side is what
    ``scripts/migrate_to_packing.py`` writes by default: the recommended length, strategy and overlong policy
    with the config's (resolved) packing_buffer / min_fill_ratio / drop_last. Packing config: its own
    packing keys; the padding batch is the analysis' padding baseline. World size: ``world_size``
    or the analysis'.
    """
    from swift_plugins.config.resolve import resolve_config

    w = int(world_size or analysis.recommendations["recommended"]["world_size"])
    resolved = resolve_config(config_path, world_size=w, world_size_source="--world_size")
    t = resolved.config.training
    per_device = t.per_device_train_batch_size
    effective = t.effective_batch_size or resolved.gradient_accumulation_steps * per_device * w
    if t.packing:
        padding_batch = int(analysis.recommendations["padding_baseline"]["per_device_train_batch_size"])
        length = global_max_length or t.global_max_length
        strategy = t.packing_strategy
        overlong = t.packing_overlong
    else:  # as scripts/migrate_to_packing.py would switch it: the recommended length and strategy
        padding_batch = per_device
        length = global_max_length or (analysis.recommended or {}).get("global_max_length")
        strategy = (analysis.recommended or {}).get("packing_strategy") or t.packing_strategy
        overlong = (analysis.recommended or {}).get("packing_overlong") or t.packing_overlong
        if length is None:
            raise UserError(f"{config_path}: padding config and no recommended length in the analysis; "
                             f"pass --global_max_length")
    tuner = resolved.config.tuner
    mem = MemorySetup(tuner="full" if tuner.tuner_type == "full" else "dora" if tuner.use_dora else "lora",
                      lora_rank=tuner.lora_rank, zero_stage=zero_stage_of(resolved.config.deepspeed.config),
                      gradient_checkpointing=t.gradient_checkpointing, world_size=w, fused_loss=t.fused_loss)
    return TrainingSetup(
        world_size=w, effective_batch_size=int(effective), padding_batch_size=int(padding_batch),
        num_train_epochs=float(t.num_train_epochs), max_steps=t.max_steps,
        padding_max_length=resolved.config.template.max_length,
        truncation_strategy=resolved.config.template.truncation_strategy, global_max_length=int(length),
        packing_strategy=strategy, packing_buffer=t.packing_buffer, min_fill_ratio=t.packing_min_fill_ratio,
        drop_last=t.packing_drop_last, packing_overlong=overlong, memory=mem, model_path=resolved.config.model.model,
        shuffle_seed=t.data_seed, source=" <- ".join(f"`{f}`" for f in reversed(resolved.files)),
        padding_config=None if t.packing else config_path,
        padding_batch_source=("recommendations.json padding_baseline: the config packs" if t.packing
                              else "the config's per_device_train_batch_size"))


def ceil_steps(rows: int, effective_batch_size: int) -> int:
    """Optimizer steps per epoch: ceil(rows / effective_batch_size) (the last step may be partial)."""
    return -(-int(rows) // int(effective_batch_size))


def total_steps(per_epoch: int, num_train_epochs: float, max_steps: Optional[int] = None) -> int:
    """transformers: max_steps when set, else ceil(num_train_epochs x steps per epoch)."""
    return int(max_steps) if max_steps else math.ceil(num_train_epochs * per_epoch)


def find_simulation(simulations: Sequence[dict], global_max_length: int, strategy: str,
                    buffer_size: Optional[int] = None, min_fill_ratio: float = 0.0,
                    drop_last: bool = False, overlong: str = "drop") -> tuple[dict, bool]:
    """The entry for exactly this plan variant, else the unbuffered entry of (length, strategy, overlong).

    Returns ``(entry, exact)``. Raises UserError naming the simulated lengths when the length /
    strategy / overlong policy was not simulated at all. Entries of analyses from before the split
    simulation have no ``overlong`` key: they are ``drop``.
    """
    def same(e, buf, fill, drop):
        return (e["global_max_length"] == global_max_length and e["strategy"] == strategy
                and e.get("overlong", "drop") == overlong and e["buffer_size"] == buf
                and float(e["min_fill_ratio"]) == float(fill) and bool(e["drop_last"]) == bool(drop))

    for e in simulations:
        if same(e, buffer_size, min_fill_ratio, drop_last):
            return e, True
    for e in simulations:
        if same(e, None, 0.0, False):
            return e, False
    lengths = sorted({e["global_max_length"] for e in simulations})
    strategies = sorted({e["strategy"] for e in simulations})
    policies = sorted({e.get("overlong", "drop") for e in simulations})
    raise UserError(f"global_max_length {global_max_length} with strategy {strategy!r} and overlong {overlong!r} was "
                    f"not simulated (lengths {lengths}, strategies {strategies}, overlong {policies}); re-run "
                    f"scripts/analyze_token_lengths.py with "
                    f"--max_lengths {','.join(map(str, sorted(set(lengths) | {global_max_length})))}")


def inputs_text(inputs: dict) -> str:
    """The analysed files as one line: ``a.jsonl`` or ``a.jsonl + b.jsonl`` (older analyses: one str)."""
    paths = inputs.get("train_jsonl") or []
    return " + ".join(f"`{p}`" for p in ([paths] if isinstance(paths, str) else paths))


def variant_text(entry: dict) -> str:
    """``ffd, one window`` / ``ffd, buffer 256, min fill 0.7, drop_last true`` / ``..., overlong split``."""
    text = _variant_core(entry)
    return text + ", overlong split" if entry.get("overlong", "drop") == "split" else text


def _variant_core(entry: dict) -> str:
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



def fmt_int(x) -> str:
    return f"{int(x):,}"


def fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def fmt_num(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def fmt_val(x: float) -> str:
    """Integers without decimals (``1,037``), other values with two (``1,537.84``)."""
    return fmt_int(x) if float(x).is_integer() else fmt_num(x)




def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; ``|`` inside a cell is escaped.

    >>> print(md_table(("a", "b"), [[1, "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    def cell(x):
        return str(x).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def setup_lines(setup: TrainingSetup) -> list[str]:
    """The two Markdown bullets naming a report's training setup (where from; world, batches, epochs)."""
    return [f"- Training setup from: {setup.source}",
            f"- world_size {setup.world_size}, effective_batch_size {setup.effective_batch_size}, padding "
            f"per-device batch {setup.padding_batch_size} ({setup.padding_batch_source}), packing per-device "
            f"batch 1, num_train_epochs "
            f"{setup.num_train_epochs:g}" + (f", max_steps {setup.max_steps}" if setup.max_steps else "")]
