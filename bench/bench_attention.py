"""Packed attention: one packed row, forward + backward of a Qwen3-VL decoder, four ways in one run.

    .venv/bin/python bench/bench_attention.py                              # CPU fp32, both decoders
    .venv/bin/python bench/bench_attention.py --lengths 4096,8192 --models tiny
    .venv/bin/python bench/bench_attention.py --device cuda                # GPU bf16 (same rows)

Rows (same samples, same decoder weights, same run):
  swiftpack_varlen   the packed row with cu_seq_lens; no mask (swift_plugins.training.attention)
  sdpa_4d_mask       the packed row on sdpa: transformers builds a (1, 1, L, L) block-diagonal mask
                     from the restarting text positions (the packing template's path today)
  eager              the same on eager (additive L x L mask, L x L scores per head)
  one_by_one         each sample of the row alone on sdpa (no mask), gradients accumulated

Decoders: ``tiny`` = the tiny checkpoint's text model (swift_plugins.tiny_model: hidden 64, 2 layers,
4 q / 2 kv heads of 16); ``wide`` = a random Qwen3-VL text decoder, hidden 512, 4 layers, 8 q / 4 kv
heads of 64, intermediate 1,536. Input: random embeddings (no embedding lookup, no lm_head), 4-row
position ids restarting per sample; loss = mean of the squared last hidden state.

Samples: lognormal lengths, median 900, sigma 0.89 (mean 1,337, right-skewed like LVIS's 864 / 1,334),
at least 64 tokens, drawn in order (seed 0) until the pack is full; the last one is cut to fit.

Seconds: wall clock (and this process's CPU time), median of ``--reps`` after one warm-up, the rows of
a length interleaved in rotating order so that load from other work hits every row alike; on CPU with
``--threads`` 1 by default (on shared cores, two OpenMP threads waiting for a descheduled sibling made
repeated runs of one case vary 10x). Memory: CPU - one forward + backward of the case in a fresh
process, peak RSS (VmHWM, reset once the decoder and inputs are built) minus the RSS at that point
("above model"); CUDA - torch.cuda.max_memory_allocated during the warm-up pass minus
memory_allocated before it. A row whose estimate from its previous length (``skip_reason``: linear
cost x L / L_prev, the dense rows' extra x (L / L_prev)^2) exceeds ``--skip_over`` seconds per case
or GiB above model is skipped, and the table says so with the estimate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from child_memory import reset_peak, run_child, status_bytes  # noqa: E402

ROWS = ("swiftpack_varlen", "sdpa_4d_mask", "eager", "one_by_one")
DENSE_ROWS = ("sdpa_4d_mask", "eager")
IMPL = {"swiftpack_varlen": "swiftpack_varlen", "sdpa_4d_mask": "sdpa", "eager": "eager", "one_by_one": "sdpa"}
MIX = {"median": 900, "sigma": 0.89, "min": 64}
MIX_TEXT = "lognormal median 900, sigma 0.89 (mean 1,337), min 64, seed {seed}, last sample cut to fit"
WIDE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 64}
MIB = 1024 ** 2


def lvis_like_pack(pack_len: int, seed: int = 0) -> List[int]:
    """Sample lengths filling ``pack_len`` exactly: lvis_like_pack(4096) -> [764, 926, 1676, 730]."""
    rng = random.Random(seed)
    lengths, left = [], pack_len
    while left > 0:
        n = max(MIX["min"], round(rng.lognormvariate(math.log(MIX["median"]), MIX["sigma"])))
        lengths.append(min(n, left))
        left -= lengths[-1]
    return lengths


def wide_text_config(vocab_size: int = 1024):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig

    return Qwen3VLTextConfig(vocab_size=vocab_size, max_position_embeddings=262144, rms_norm_eps=1e-6,
                             rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                              "mrope_section": [16, 8, 8], "mrope_interleaved": True},
                             **WIDE)


def build_decoder(model: str, model_path: Optional[str], device: str, dtype):
    """The text decoder (Qwen3VLTextModel) of ``tiny`` (from model_path) or ``wide`` (random, seed 0)."""
    import torch
    from swift_plugins.training.attention import register

    register()
    if model == "tiny":
        from transformers import Qwen3VLForConditionalGeneration

        full = Qwen3VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa")
        decoder = full.model.language_model
        del full
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

        torch.manual_seed(0)
        config = wide_text_config()
        config._attn_implementation = "sdpa"
        decoder = Qwen3VLTextModel(config)
    decoder.embed_tokens = None  # inputs are embeddings: the 151,936-row table is not part of the step
    return decoder.to(device=device, dtype=dtype).train()


def row_inputs(lengths: List[int], hidden: int, device: str, dtype, packed: bool, seed: int = 0) -> Dict:
    """Model kwargs for one row: embeddings, 4-row positions restarting per sample, cu_seq_lens if packed."""
    import torch

    n = sum(lengths)
    text = torch.cat([torch.arange(m) for m in lengths])
    inputs = {"inputs_embeds": torch.randn(1, n, hidden, generator=torch.Generator().manual_seed(seed)).to(
        device=device, dtype=dtype), "position_ids": text.view(1, 1, n).expand(4, 1, n).to(device),
        "use_cache": False}
    if packed:
        cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32,
                          device=device)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    return inputs


def step(decoder, inputs: Dict) -> None:
    out = decoder(**inputs).last_hidden_state
    out.float().square().mean().backward()


def row_batches(decoder, row: str, lengths: List[int], device: str, dtype) -> List[Dict]:
    hidden = decoder.config.hidden_size
    if row == "one_by_one":
        return [row_inputs([m], hidden, device, dtype, packed=False, seed=i) for i, m in enumerate(lengths)]
    return [row_inputs(lengths, hidden, device, dtype, packed=True)]


def run_once(decoder, row: str, batches: List[Dict], device: str):
    """(wall seconds, CPU seconds of this process) of one forward + backward of every batch of ``row``."""
    import torch

    decoder.config._attn_implementation = IMPL[row]
    decoder.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for inputs in batches:
        step(decoder, inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    decoder.zero_grad(set_to_none=True)
    return wall, cpu


def time_rows(decoder, rows: List[str], lengths: List[int], reps: int, device: str, dtype) -> Dict[str, Dict]:
    """Median wall / CPU seconds per row; rows interleaved (rotating order) so load drift hits all alike.

    On CUDA each row's first (warm-up) pass also gives its peak memory above what was allocated before.
    """
    import torch

    if not rows:
        return {}
    batches = {row: row_batches(decoder, row, lengths, device, dtype) for row in rows}
    out = {row: {"walls": [], "cpus": []} for row in rows}
    for row in rows:  # warm-up
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        run_once(decoder, row, batches[row], device)
        if device == "cuda":
            out[row]["mem_above_model"] = torch.cuda.max_memory_allocated() - base
    for rep in range(reps):
        for row in rows[rep % len(rows):] + rows[:rep % len(rows)]:
            wall, cpu = run_once(decoder, row, batches[row], device)
            out[row]["walls"].append(wall)
            out[row]["cpus"].append(cpu)
    for row in rows:
        out[row]["seconds"] = statistics.median(out[row]["walls"])
        out[row]["cpu_seconds"] = statistics.median(out[row]["cpus"])
    return out


def memory_child(case: Dict) -> Dict:
    """In a fresh interpreter: peak RSS of one forward + backward of the case above the RSS before it.

    The kernel's high-water mark (VmHWM) is reset once the decoder and inputs exist (``5`` to
    /proc/self/clear_refs), so the loading transient of from_pretrained is not counted.
    """
    import torch

    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    decoder = build_decoder(case["model"], case.get("model_path"), "cpu", dtype)
    batches = row_batches(decoder, case["row"], case["lengths"], "cpu", dtype)
    base = reset_peak()
    run_once(decoder, case["row"], batches, "cpu")
    peak = status_bytes("VmHWM")
    return {"mem_above_model": peak - base, "rss_model": base, "rss_peak": peak}


def memory_in_child(case: Dict, timeout: float) -> Dict:
    return run_child(os.path.abspath(__file__), case, timeout)


def skip_reason(row: str, n: int, history: Dict[str, Dict[int, Dict]], reps: int, skip_s: float,
                skip_gib: float) -> Optional[str]:
    """Why ``row`` at ``n`` tokens is not run: its estimate from its last measured length is over the limits.

    ``history[row][L]``: measured cases. Estimate = swiftpack_varlen's cost at that same length x r + the
    row's extra over it x r^2 (r = n / L; the extra of sdpa_4d_mask / eager is the L x L mask and scores),
    in seconds per case (warm-up, reps, memory pass) and GiB above model.
    """
    measured = history.get(row, {})
    if not measured:
        return None
    mine = measured[max(measured)]
    ours = history.get("swiftpack_varlen", {}).get(mine["n"])
    base = ours if row in DENSE_ROWS and ours is not None else mine
    r = n / mine["n"]

    def grow(key):  # an extra below zero (a dense row faster at a short length) does not shrink with n
        linear = base.get(key) or 0
        return linear * r + max(0.0, (mine.get(key) or 0) - linear) * r * r

    est_s, est_gib = grow("seconds") * (reps + 2), grow("mem_above_model") / 1024 ** 3
    if est_s > skip_s or est_gib > skip_gib:
        return (f"skipped: estimated {est_s:.0f} s for the case, {est_gib:.1f} GiB above model (from the measured "
                f"{mine['n']}: linear part x {r:g}, the rest x {r * r:g}); --skip_over {skip_s:g},{skip_gib:g}")
    return None


def bench(models: List[str], lengths_by_model: Dict[str, List[int]], model_path: Optional[str], device: str,
          dtype: str, reps: int, skip_s: float, skip_gib: float, seed: int = 0, memory: Optional[bool] = None,
          threads: int = 1, rows=ROWS, log=print) -> Dict:
    """All cases; returns {"cases": [...], "targets": [...], ...} (what gpu_acceptance reports too).

    ``memory``: measure CPU peak RSS in fresh processes (default on CPU); CUDA memory is always measured.
    """
    import torch

    memory = (device == "cpu") if memory is None else memory
    cases = []
    for model in models:
        decoder = build_decoder(model, model_path, device, getattr(torch, dtype))
        history: Dict[str, Dict[int, Dict]] = {}
        for n in lengths_by_model[model]:
            lengths = lvis_like_pack(n, seed)
            row_cases = {}
            for row in rows:
                case = {"model": model, "row": row, "n": n, "lengths": lengths, "device": device, "dtype": dtype}
                reason = skip_reason(row, n, history, reps, skip_s, skip_gib)
                if reason:
                    case["skipped"] = reason
                elif device == "cpu" and memory:
                    case.update(memory_in_child({**case, "model_path": model_path, "threads": threads},
                                                timeout=max(600.0, skip_s)))
                elif device == "cpu":
                    case["mem_above_model"] = None
                row_cases[row] = case
            runnable = [r for r, c in row_cases.items() if "skipped" not in c and "error" not in c]
            try:
                timed = time_rows(decoder, runnable, lengths, reps, device, getattr(torch, dtype))
            except torch.cuda.OutOfMemoryError as e:  # a dense row out of GPU memory is a result, not a crash
                timed = {r: {"error": f"out of memory: {str(e)[:100]}"} for r in runnable}
                _free_cuda()
            for row, case in row_cases.items():
                case.update(timed.get(row, {}))
                cases.append(case)
                if "seconds" in case:
                    history.setdefault(row, {})[n] = case
                log(_case_line(case))
        del decoder
        _free_cuda()
    return {"cases": cases, "targets": targets(cases), "mix": MIX_TEXT.format(seed=seed), "device": device,
            "dtype": dtype, "reps": reps, "threads": threads if device == "cpu" else None}


def _free_cuda():
    import gc
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _case_line(case: Dict) -> str:
    head = f"{case['model']:>4} L={case['n']:>6} {case['row']:<17}"
    if "seconds" not in case:
        return f"{head} {case.get('skipped') or case.get('error')}"
    mem = "n/a" if case["mem_above_model"] is None else f"{case['mem_above_model'] / MIB:,.0f} MiB"
    return f"{head} {case['seconds']:.4f} s (CPU {case['cpu_seconds']:.3f} s)  {mem} above model"


def _get(cases, model, row, n, key="seconds"):
    for c in cases:
        if c["model"] == model and c["row"] == row and c["n"] == n and key in c and c[key] is not None:
            return c[key]
    return None


def targets(cases: List[Dict]) -> List[Dict]:
    """The issue's three targets, per decoder, from the measured cases (None where a case is missing)."""
    out = []
    for model in sorted({c["model"] for c in cases}):
        ns = sorted({c["n"] for c in cases if c["model"] == model})
        ratios = {n: _ratio(_get(cases, model, "swiftpack_varlen", n), _get(cases, model, "one_by_one", n))
                  for n in ns}
        worst = max((r for r in ratios.values() if r is not None), default=None)
        out.append({"model": model, "target": "time <= 1.25 x one_by_one at every length",
                    "value": {str(n): r for n, r in ratios.items()},
                    "met": None if worst is None or None in ratios.values() else worst <= 1.25})
        measured = [n for n in ns if _get(cases, model, "swiftpack_varlen", n, "mem_above_model")]
        growth, limit = None, None
        if len(measured) >= 2:  # the two largest lengths: 32k / 16k <= 2.2, in general 1.1 x the length ratio
            small, large = measured[-2:]
            growth = _ratio(_get(cases, model, "swiftpack_varlen", large, "mem_above_model"),
                            _get(cases, model, "swiftpack_varlen", small, "mem_above_model"))
            limit = 1.1 * large / small
        out.append({"model": model, "target": "memory above model linear in L: m(L) / m(L_prev) <= 1.1 L / L_prev"
                                              + ("" if limit is None else f" ({large}/{small}: <= {limit:.2f})"),
                    "value": growth, "met": None if growth is None else growth <= limit})
        speedup = _ratio(_get(cases, model, "sdpa_4d_mask", 16384), _get(cases, model, "swiftpack_varlen", 16384))
        out.append({"model": model, "target": ">= 5x faster than sdpa_4d_mask at 16k", "value": speedup,
                    "met": None if speedup is None else speedup >= 5})
    return out


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def markdown(result: Dict) -> str:
    """The tables docs/benchmarks.md records: one row per case, ratios per length, target verdicts."""
    cases = result["cases"]
    threads = f", {result['threads']} CPU thread(s)" if result.get("threads") else ""
    lines = [f"samples: {result['mix']}; device {result['device']} {result['dtype']}{threads}; seconds = median "
             f"of {result['reps']} after 1 warm-up", "",
             "| decoder | L | samples | row | seconds | CPU seconds | memory above model (MiB) | time / ours |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for c in cases:
        ours = _get(cases, c["model"], "swiftpack_varlen", c["n"])
        if "seconds" in c:
            mem = "n/a" if c["mem_above_model"] is None else f"{c['mem_above_model'] / MIB:,.0f}"
            ratio = _ratio(c["seconds"], ours)
            cells = [f"{c['seconds']:.4f}", f"{c['cpu_seconds']:.4f}", mem, "" if ratio is None else f"{ratio:.2f}"]
        else:
            cells = [c.get("skipped") or c.get("error"), "", "", ""]
        lines.append(f"| {c['model']} | {c['n']:,} | {len(c['lengths'])} | {c['row']} | " + " | ".join(cells) + " |")
    lines += ["", "| decoder | L | ours / one_by_one (time) | sdpa_4d_mask / ours (time) | eager / ours (time) |",
              "|---|---:|---:|---:|---:|"]
    for model, n in sorted({(c["model"], c["n"]) for c in cases}):
        ours = _get(cases, model, "swiftpack_varlen", n)
        cells = [_ratio(ours, _get(cases, model, "one_by_one", n)), _ratio(_get(cases, model, "sdpa_4d_mask", n), ours),
                 _ratio(_get(cases, model, "eager", n), ours)]
        lines.append(f"| {model} | {n:,} | " + " | ".join("-" if r is None else f"{r:.2f}" for r in cells) + " |")
    lines += ["", "| decoder | target | measured | verdict |", "|---|---|---|---|"]
    for t in result["targets"]:
        value = t["value"]
        shown = (", ".join(f"{k}: {v:.2f}" if v is not None else f"{k}: -" for k, v in value.items())
                 if isinstance(value, dict) else ("-" if value is None else f"{value:.2f}"))
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"| {t['model']} | {t['target']} | {shown} | {verdict} |")
    return "\n".join(lines)


def parse_lengths(text: str) -> List[int]:
    return [int(float(x[:-1]) * 1024) if x.endswith("k") else int(x) for x in text.split(",") if x]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4k,8k,16k,32k", help="pack lengths of the tiny decoder (4k = 4096)")
    parser.add_argument("--wide_lengths", default="4k,16k", help="pack lengths of the wide decoder")
    parser.add_argument("--models", default="tiny,wide", help="tiny,wide")
    parser.add_argument("--model_path", default=None, help="tiny checkpoint (default: build one in a temp dir)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip_over", default=None,
                        help="SECONDS,GIB: skip a case estimated over either (default 600,16 CPU; 300,100 CUDA)")
    parser.add_argument("--rows", default=",".join(ROWS), help="subset of " + ",".join(ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on shared cores, OpenMP threads waiting for a descheduled "
                             "sibling made repeated runs vary 10x)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(memory_child(json.loads(args._child))))
        return 0
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device")
    import torch
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    skip_s, skip_gib = map(float, (args.skip_over or ("600,16" if args.device == "cpu" else "300,100")).split(","))
    models = [m for m in args.models.split(",") if m]
    model_path = args.model_path
    if "tiny" in models and model_path is None:
        from swift_plugins.dev.tiny_model import build
        model_path = str(build(pathlib_tmp() / "tiny-qwen3-vl"))
    result = bench(models, {"tiny": parse_lengths(args.lengths), "wide": parse_lengths(args.wide_lengths)},
                   model_path, args.device, "float32" if args.device == "cpu" else "bfloat16", args.reps,
                   skip_s, skip_gib, args.seed, threads=args.threads,
                   rows=[r for r in args.rows.split(",") if r])
    print()
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def pathlib_tmp():
    import pathlib
    return pathlib.Path(tempfile.mkdtemp(prefix="bench_attention_"))


if __name__ == "__main__":
    sys.exit(main())
