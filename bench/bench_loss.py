"""The loss at long packs: full (L, vocab) logits vs the fused linear cross-entropy, in one run.

    flock /tmp/heavy.lock .venv/bin/python bench/bench_loss.py                  # CPU fp32, the table of docs
    .venv/bin/python bench/bench_loss.py --lengths 2048 --step_length 2048      # quick

Part 1, lm_head + loss, forward + backward: hidden states (L, ``--hidden``) and a trainable lm_head
(``--vocab`` x hidden, as the tiny model's tied one), labels with every 10th token -100.
  full    logits = hidden @ W.T, fp32 cross-entropy over them (transformers' path)
  fused   swift_plugins.training.linear_ce.linear_cross_entropy (chunks of LOSS_CHUNK_TOKENS tokens)
Part 2, one whole training step of the tiny model (forward, backward, AdamW over every parameter)
on one packed text row of ``--step_length`` tokens (bench_attention's LVIS-like sample lengths,
swiftpack_varlen attention; 2,000: the global_max_length ``make demo``'s analysis recommends), each path.
Part 3 (``--calibrate``), the memory estimate against measurements: the same step, the second one (the
first creates AdamW's moments), with gradient checkpointing, for the tiny model and a wide random Qwen3-VL (bench_attention's WIDE text decoder,
the real vocabulary) at three lengths each, both paths, next to ``fp32_estimate``.

Every case runs once in a fresh process (``--_child``): peak RSS (VmHWM, reset once the inputs or the
model exist) above the RSS at that point, and wall seconds of the case. A case whose estimate
(``estimate_bytes``) exceeds 90% of MemAvailable is not run; its row says so. Same loss both ways is
checked (printed relative difference). Targets: fused at 8,192 tokens <= 1/4 of full's memory; fused
no slower than full at any length.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from child_memory import available_bytes, reset_peak, run_child, status_bytes  # noqa: E402

PATHS = ("full", "fused")
GIB = 1024 ** 3


def estimate_bytes(path: str, n: int, vocab: int, hidden: int, chunk: int) -> int:
    """Peak above inputs: full keeps fp32 logits, their log-softmax and their gradient (12 B per cell);
    fused one chunk's logits and its softmax gradient (8 B per cell) plus grad_h and grad_W."""
    if path == "full":
        return 12 * n * vocab + 4 * vocab * hidden
    return 8 * min(n, chunk) * vocab + 4 * (n * hidden + 2 * vocab * hidden)


def loss_case(case: Dict) -> Dict:
    """Part 1 in this process: lm_head + loss forward + backward of one path."""
    import torch
    import torch.nn.functional as F

    from swift_plugins.training.linear_ce import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    n, v, h = case["n"], case["vocab"], case["hidden"]
    hidden = torch.randn(n, h, generator=g).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * 0.02).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::10] = -100
    items = int((targets != -100).sum())
    base = reset_peak()
    start = time.perf_counter()
    if case["path"] == "full":
        loss = F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100, reduction="sum") / items
    else:
        loss = linear_cross_entropy(hidden, weight, targets)[0] / items
    loss.backward()
    seconds = time.perf_counter() - start
    return {"loss": loss.item(), "seconds": seconds, "mem_above_inputs": status_bytes("VmHWM") - base}


def build_model(case: Dict):
    """The tiny checkpoint, or ``wide``: its config with bench_attention's wide text decoder (hidden 512,
    4 layers, intermediate 1,536) and the real vocabulary, random weights (seed 0); swiftpack_varlen attention."""
    import torch
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    from swift_plugins.training.attention import register

    register()
    torch.manual_seed(0)
    if case.get("arch", "tiny") == "tiny":
        model = Qwen3VLForConditionalGeneration.from_pretrained(case["model"], dtype=torch.float32,
                                                                attn_implementation="swiftpack_varlen")
    else:
        import bench_attention

        config = AutoConfig.from_pretrained(case["model"])
        for key, value in bench_attention.WIDE.items():
            setattr(config.text_config, key, value)
        config._attn_implementation = "swiftpack_varlen"
        config.text_config._attn_implementation = "swiftpack_varlen"
        model = Qwen3VLForConditionalGeneration(config).float()
    if case.get("gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def packed_row(n: int, vocab_text: int = 4000) -> Dict:
    """One packed text row of ``n`` tokens (bench_attention's LVIS-like sample lengths): ids, 4-row
    positions restarting per sample, cu_seq_lens, labels with each sample's first token -100."""
    import torch

    import bench_attention

    lengths = bench_attention.lvis_like_pack(n)
    ids = torch.randint(0, vocab_text, (1, n), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    labels[0, starts] = -100
    text = torch.cat([torch.arange(m) for m in lengths])
    cu = torch.tensor(starts + [n], dtype=torch.int32)
    return {"input_ids": ids, "labels": labels, "position_ids": text.view(1, 1, n).expand(4, 1, n),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
            "use_cache": False}


def model_loss(model, inputs: Dict, labels, path: str):
    """One forward and the loss of a packed row: ``full`` transformers' own (labels passed to the model);
    ``fused`` the last hidden states (no logits) and linear_cross_entropy, as the training loss does."""
    import torch

    from swift_plugins.training.linear_ce import linear_cross_entropy, shift_targets

    if path == "full":
        return model(**inputs, labels=labels).loss
    n = labels.shape[-1]
    out = model(**inputs, logits_to_keep=torch.zeros(n, dtype=torch.bool, device=labels.device),
                output_hidden_states=[model.config.text_config.num_hidden_layers - 1])
    targets = shift_targets(labels).view(-1)
    hidden = out.hidden_states[-1].view(-1, out.hidden_states[-1].shape[-1])
    return linear_cross_entropy(hidden, model.lm_head.weight, targets)[0] / (targets != -100).sum()


def step_case(case: Dict) -> Dict:
    """Parts 2 and 3 in this process: one AdamW step (every parameter) on one packed row of ``n`` tokens."""
    import torch

    model = build_model(case)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    inputs = packed_row(case["n"])
    labels = inputs.pop("labels")
    if case.get("warm"):  # steady state: AdamW's moments exist through the measured step, as from step 2 on
        model_loss(model, inputs, labels, case["path"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    base = reset_peak()
    start = time.perf_counter()
    loss = model_loss(model, inputs, labels, case["path"])
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    return {"loss": loss.item(), "seconds": seconds, "mem_above_inputs": status_bytes("VmHWM") - base,
            "rss_before_step": base, "params": sum(p.numel() for p in model.parameters())}


def in_child(case: Dict, timeout: float = 3600) -> Dict:
    return run_child(os.path.abspath(__file__), case, timeout)


def run_cases(kind: str, lengths: List[int], base: Dict, estimate) -> List[Dict]:
    rows = []
    for n in lengths:
        for path in PATHS:
            need = estimate(path, n)
            row = {"kind": kind, "path": path, "n": n, "estimate_gib": round(need / GIB, 2)}
            if need > 0.9 * available_bytes():
                row["skipped"] = f"estimate {need / GIB:.1f} GiB > 90% of {available_bytes() / GIB:.1f} GiB available"
            else:
                row.update(in_child({**base, "kind": kind, "path": path, "n": n}))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _cell(rows, kind, path, n, key):
    row = next(r for r in rows if (r["kind"], r["path"], r["n"]) == (kind, path, n))
    return row.get(key)


def markdown(rows: List[Dict]) -> str:
    out = ["| part | tokens | full: MiB above inputs | full: s | fused: MiB above inputs | fused: s | memory fused/full "
           "| time fused/full | loss rel. diff |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, n in sorted({(r["kind"], r["n"]) for r in rows}, key=lambda k: (k[0] != "loss", k[1])):
        cells = {p: next(r for r in rows if (r["kind"], r["path"], r["n"]) == (kind, p, n)) for p in PATHS}
        full, fused = cells["full"], cells["fused"]

        def mem(r):
            return f"{r['mem_above_inputs'] / 2 ** 20:,.0f}" if "mem_above_inputs" in r else \
                r.get("skipped") or r.get("error")

        ok = all("loss" in r for r in (full, fused))
        out.append(f"| {kind} | {n:,} | {mem(full)} | {full.get('seconds', 0):.2f} | {mem(fused)} | "
                   f"{fused.get('seconds', 0):.2f} | "
                   + (f"{fused['mem_above_inputs'] / full['mem_above_inputs']:.3f} | "
                      f"{fused['seconds'] / full['seconds']:.2f} | "
                      f"{abs(fused['loss'] - full['loss']) / abs(full['loss']):.1e} |" if ok else "- | - | - |"))
    return "\n".join(out)


def fp32_estimate(shape, n: int, gc: bool, fused: bool) -> Dict[str, float]:
    """swift_plugins.analysis.memory's terms for full tuning on one device, turned into fp32 CPU bytes:
    weights, gradients x 2 (fp32, not bf16), optimizer x 8 / 12 (AdamW's two fp32 moments, no fp32 master
    copy), activations x 2; logits with fp32 weights (no bf16 copy): fused one chunk x vocab x 4 + the
    hidden-state gradient (n x hidden x 4) + the lm_head gradient (vocab x hidden x 4); full n x vocab x 12
    (fp32 logits, their log-softmax, their gradient)."""
    from swift_plugins.analysis.memory import LOSS_CHUNK_TOKENS, MemorySetup, estimate_step_memory

    est = estimate_step_memory(shape, n, MemorySetup(tuner="full", zero_stage=0, gradient_checkpointing=gc,
                                                     world_size=1, fused_loss=fused))
    logits = (min(n, LOSS_CHUNK_TOKENS) * shape.vocab * 4 + n * shape.hidden * 4 + shape.vocab * shape.hidden * 4
              if fused else n * shape.vocab * 12)
    return {"weights": est["weights"] * 2, "grads": est["gradients"] * 2, "adam": est["optimizer"] * 8 / 12,
            "activations": est["activations"] * 2, "logits": float(logits)}


def calibrate(model_dir: str, lengths: Dict[str, List[int]], tmp: str) -> List[Dict]:
    """Part 3: one packed training step (fused loss, gradient checkpointing) per model and length, and
    the full path where it fits, next to the fp32 estimate."""
    from transformers import AutoConfig

    import bench_attention
    from swift_plugins.analysis.memory import ModelShape

    config = AutoConfig.from_pretrained(model_dir)
    for key, value in bench_attention.WIDE.items():
        setattr(config.text_config, key, value)
    wide_dir = os.path.join(tmp, "wide")
    config.save_pretrained(wide_dir)
    shapes = {"tiny": ModelShape.from_config(model_dir), "wide": ModelShape.from_config(wide_dir)}
    rows = []
    for arch, ns in lengths.items():
        for n in ns:
            for path in PATHS:
                est = fp32_estimate(shapes[arch], n, True, path == "fused")
                row = {"kind": f"calibrate {arch}", "path": path, "n": n, "estimate": est, "warm": True}
                need = sum(est.values())
                if need > 0.9 * available_bytes():
                    row["skipped"] = f"estimate {need / GIB:.1f} GiB > 90% of {available_bytes() / GIB:.1f} GiB"
                else:
                    row.update(in_child({"kind": "step", "arch": arch, "model": model_dir, "gc": True, "path": path,
                                         "n": n, "warm": True}))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def calibration_markdown(rows: List[Dict]) -> str:
    """Measured step peak above the loaded model vs the estimate's terms. A steady-state (``warm``) step
    starts with AdamW's moments allocated (in the baseline), so they are not part of its estimate."""
    out = ["| model | tokens | loss | measured step peak above the loaded model (MiB) | est. grads (+ AdamW moments, "
           "first step) | est. activations | est. logits | est. sum | measured / est. | within 15% |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        est = r["estimate"]
        state = est["grads"] + (0 if r.get("warm") else est["adam"])
        total = state + est["activations"] + est["logits"]
        cells = [f"{v / 2 ** 20:,.0f}" for v in (state, est["activations"], est["logits"])]
        if "mem_above_inputs" not in r:
            out.append(f"| {r['kind'].split()[1]} | {r['n']:,} | {r['path']} | not run: {r.get('skipped') or r.get('error')} "
                       "| " + " | ".join(cells) + f" | {total / 2 ** 20:,.0f} | - | - |")
            continue
        ratio = r["mem_above_inputs"] / total
        out.append(f"| {r['kind'].split()[1]} | {r['n']:,} | {r['path']} | {r['mem_above_inputs'] / 2 ** 20:,.0f} | "
                   + " | ".join(cells) + f" | {total / 2 ** 20:,.0f} | {ratio:.2f} | "
                   f"{'yes' if abs(ratio - 1) <= 0.15 else 'no'} |")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,8192,16384")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--step_length", type=int, default=2000,
                        help="tokens of the training-step row (2,000: the global_max_length make demo recommends); 0: skip")
    parser.add_argument("--model", default=None, help="tiny checkpoint (default: built in a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--calibrate", default="tiny:2048,4096,8192;wide:1024,2048,4096",
                        help="part 3: model:lengths;... of the memory-estimate calibration; empty: skip")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        case = json.loads(args._child)
        import torch

        torch.set_num_threads(case.get("threads", 1))
        print(json.dumps((loss_case if case["kind"] == "loss" else step_case)(case)))
        return 0
    from swift_plugins.analysis.memory import LOSS_CHUNK_TOKENS

    lengths = [int(x) for x in args.lengths.split(",") if x]
    rows = run_cases("loss", lengths, {"vocab": args.vocab, "hidden": args.hidden},
                     lambda p, n: estimate_bytes(p, n, args.vocab, args.hidden, LOSS_CHUNK_TOKENS))
    calibration = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None and (args.step_length or args.calibrate):
            from swift_plugins.dev.tiny_model import build

            model = str(build(os.path.join(tmp, "tiny")))
        if args.step_length:
            rows += run_cases("train step", [args.step_length], {"model": model},
                              lambda p, n: estimate_bytes(p, n, args.vocab, 64, LOSS_CHUNK_TOKENS) + GIB)
        if args.calibrate:
            per_model = {arch: [int(x) for x in ns.split(",")] for arch, ns in
                         (part.split(":") for part in args.calibrate.split(";"))}
            calibration = calibrate(model, per_model, tmp)
    print(markdown(rows))
    if calibration:
        print(calibration_markdown(calibration))
    rows += calibration
    for n in lengths:
        full, fused = (_cell(rows, "loss", p, n, "mem_above_inputs") for p in PATHS)
        ts = [_cell(rows, "loss", p, n, "seconds") for p in PATHS]
        if full and fused:
            print(f"{n}: memory fused/full {fused / full:.3f} (target at 8192: <= 0.25); time fused/full "
                  f"{ts[1] / ts[0]:.2f} (target <= 1)")
    if args.out:
        from swift_plugins.files import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
