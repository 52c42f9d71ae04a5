"""Hybrid decoder (Qwen3.5 pattern): one packed row, forward + backward, three ways in one run.

    .venv/bin/python bench/bench_linear_attention.py                       # CPU fp32, 4k and 16k
    .venv/bin/python bench/bench_linear_attention.py --lengths 4k --reps 1 --decoders tiny

Rows (same samples, same weights, same run; full-attention layers on swiftpack_varlen in every row,
so the rows differ only in the linear-attention layers):
  isolated      the packed row with cu_seq_lens; linear-attention layers per segment
                (swift_plugins.training.linear_attention.install): the conv window and recurrent
                state restart at each sample
  one_by_one    each sample of the row alone, gradients accumulated: the work itself
  leaking       the packed row through transformers' own linear-attention forward, which ignores
                cu_seqlens (conv window and state run across samples: wrong, shown for its cost)

Decoders: ``tiny`` = swift_plugins.dev.hybrid_decoder (hidden 64, layers linear x 3 + full, linear
heads 2 k / 4 v of 16); ``wide`` = the same pattern at hidden 512 (linear heads 4 k / 8 v of 64,
4 q / 2 kv attention heads of 64, intermediate 1,536). Input: random embeddings (no embedding
lookup, no lm_head), text positions restarting per sample; loss = mean of the squared last hidden state.
Samples: bench_attention's LVIS-like mix (lognormal median 900, sigma 0.89, min 64, seed 0).
Seconds: wall clock and this process's CPU time, medians of ``--reps`` after one warm-up, rows
interleaved in rotating order, one CPU thread by default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_attention import MIX_TEXT, lvis_like_pack, parse_lengths  # noqa: E402

ROWS = ("isolated", "one_by_one", "leaking")
WIDE = {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 64,
        "linear_value_head_dim": 64}


def build_decoder(name: str, device: str, dtype):
    """The text model (no embedding table) of the tiny or wide hybrid decoder, train mode, swiftpack_varlen."""
    import torch
    from swift_plugins.dev.hybrid_decoder import LAYER_TYPES, build
    from swift_plugins.training import attention

    attention.register()
    if name == "tiny":
        decoder = build(seed=0, attn_impl=attention.ATTN_IMPL).model
    else:
        from transformers import Qwen3_5TextConfig
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextModel

        config = Qwen3_5TextConfig(vocab_size=1024, num_hidden_layers=len(LAYER_TYPES),
                                   layer_types=list(LAYER_TYPES), use_cache=False, **WIDE)
        config._attn_implementation = attention.ATTN_IMPL
        torch.manual_seed(0)
        decoder = Qwen3_5TextModel(config)
    decoder.embed_tokens = None
    return decoder.to(device=device, dtype=dtype).train()


def row_inputs(lengths: List[int], hidden: int, device: str, dtype, seed: int = 0) -> Dict:
    import torch

    n = sum(lengths)
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32, device=device)
    return {"inputs_embeds": torch.randn(1, n, hidden, generator=torch.Generator().manual_seed(seed)).to(
        device=device, dtype=dtype), "position_ids": torch.cat([torch.arange(m) for m in lengths])[None].to(device),
        "use_cache": False, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths),
        "max_length_k": max(lengths)}


def run_once(decoder, row: str, batches: List[Dict], device: str):
    """(wall seconds, CPU seconds of this process) of one forward + backward of every batch of ``row``."""
    import torch
    from swift_plugins.training.linear_attention import install, uninstall

    if row == "isolated":
        install(decoder)
    decoder.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for inputs in batches:
        decoder(**inputs).last_hidden_state.float().square().mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    uninstall(decoder)
    decoder.zero_grad(set_to_none=True)
    return wall, cpu


def time_rows(decoder, lengths: List[int], reps: int, device: str, dtype) -> Dict[str, Dict[str, float]]:
    """{row: {"seconds": median wall, "cpu_seconds": median CPU}}; rows interleaved in rotating order."""
    hidden = decoder.config.hidden_size
    packed = [row_inputs(lengths, hidden, device, dtype)]
    batches = {"isolated": packed, "leaking": packed,
               "one_by_one": [row_inputs([m], hidden, device, dtype, seed=i) for i, m in enumerate(lengths)]}
    walls, cpus = {row: [] for row in ROWS}, {row: [] for row in ROWS}
    for row in ROWS:
        run_once(decoder, row, batches[row], device)  # warm-up
    for rep in range(reps):
        for row in ROWS[rep % len(ROWS):] + ROWS[:rep % len(ROWS)]:
            wall, cpu = run_once(decoder, row, batches[row], device)
            walls[row].append(wall)
            cpus[row].append(cpu)
    return {row: {"seconds": statistics.median(walls[row]), "cpu_seconds": statistics.median(cpus[row])}
            for row in ROWS}


def markdown(result: Dict) -> str:
    lines = [f"samples: {MIX_TEXT.format(seed=result['seed'])}; device {result['device']} {result['dtype']}, "
             f"{result['threads']} CPU thread(s); seconds = median of {result['reps']} after 1 warm-up", "",
             "| decoder | L | samples | row | seconds | CPU seconds | time / one_by_one | CPU time / one_by_one |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for c in result["cases"]:
        s, base = c["seconds"], c["seconds"]["one_by_one"]
        for row in ROWS:
            lines.append(f"| {c['decoder']} | {c['length']:,} | {c['samples']} | {row} | {s[row]['seconds']:.4f} | "
                         f"{s[row]['cpu_seconds']:.4f} | {s[row]['seconds'] / base['seconds']:.2f} | "
                         f"{s[row]['cpu_seconds'] / base['cpu_seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4k,16k", help="pack lengths (4k = 4096)")
    parser.add_argument("--decoders", default="tiny", help="tiny,wide")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    result = {"device": args.device, "dtype": str(dtype).replace("torch.", ""), "threads": args.threads,
              "reps": args.reps, "seed": args.seed, "cases": []}
    for name in args.decoders.split(","):
        decoder = build_decoder(name, args.device, dtype)
        for n in parse_lengths(args.lengths):
            lengths = lvis_like_pack(n, args.seed)
            seconds = time_rows(decoder, lengths, args.reps, args.device, dtype)
            result["cases"].append({"decoder": name, "length": n, "samples": len(lengths), "seconds": seconds})
            print(json.dumps(result["cases"][-1]), flush=True)
    print(markdown(result))
    if args.out:
        from swift_plugins.files import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
