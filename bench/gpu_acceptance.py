"""Every GPU check of the project in one command (sized for < 8 minutes on one H200), plus a CPU dry run.

    python bench/gpu_acceptance.py --out_dir gpu_acceptance        # GPU: bf16, real kernels
    python bench/gpu_acceptance.py --dry_run --out_dir /tmp/ga     # CPU fp32, tiny sizes, < 1 minute

Needs torch, transformers, tokenizers and safetensors only: no ms-swift (not installed there), no
PIL, no processor; flash-attn is checked when importable. Inputs are built here (token ids with
image placeholders, random patches, per-sample positions taken from the model itself).

  check        what it runs                                                   pass
  isolation    tiny Qwen3-VL, 4 samples with different image grids (DeepStack  max |packed - alone| logit
               on), packed on swiftpack_varlen vs each alone on sdpa; the      <= 5e-2 (bf16) / 1e-4 (fp32),
               ops that ran (varlen_attn on CUDA, sdpa per segment on CPU)     the expected kernel ran
  flash        the same with flash_attention_2 (only if flash_attn imports)    same tolerance
  attention    bench/bench_attention.py's cases and targets on this device     targets reported, not gated
  training     wide Qwen3-VL (text 512 x 4 layers, vocab 151,936), full        both sides train the same
               tuning, AdamW, gradient checkpointing: packed rows              samples, losses finite
               (swiftpack_varlen) vs padded batches (sdpa + 2-D mask), same
               samples: steps/s, samples/s, real tokens/s
  memory       one training step per pack length and loss path (full logits,   reported, not gated
               fused linear cross-entropy): peak allocated vs
               swift_plugins.analysis.memory's estimate of that path (full, ZeRO 0, GC, 1 GPU)
  zero3        tiny Qwen3-VL, full tuning, 2 packed steps (swiftpack_varlen,   per-step loss equals the
               4-row positions, images) under DeepSpeed ZeRO-3 vs plain torch  plain run (step 1 exactly
               (skipped when deepspeed is not installed; CPU accelerator in    within tolerance; step 2
               the dry run)                                                    reported, bf16 masters differ)

Writes ``summary.json`` and ``summary.md`` to ``--out_dir``; exit code 1 if a gated check failed or
any check raised (the traceback is in the summary).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import time
import traceback
from typing import Dict, List, Optional

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_attention  # noqa: E402  (no ms-swift: transformers + swift_plugins.training.attention)
import bench_loss  # noqa: E402  (no ms-swift: the loss paths, swift_plugins.training.linear_ce)

SIZES = [(64, 96), (128, 64), (96, 96), (32, 160)]  # image (w, h): four grids
PLANS = {
    "gpu": {"device": "cuda", "dtype": "bfloat16", "tol": 5e-2, "tiny_lengths": [4096, 8192, 16384, 32768],
            "wide_lengths": [4096, 16384], "reps": 3, "skip_over": (120.0, 100.0), "train_samples": 96,
            "pack_len": 16384, "padded_batch": 4, "length_scale": 1, "memory_lengths": [8192, 16384, 32768],
            "wide_text": True},
    "dry_run": {"device": "cpu", "dtype": "float32", "tol": 1e-4, "tiny_lengths": [128, 256], "wide_lengths": [128],
                "reps": 1, "skip_over": (60.0, 4.0), "train_samples": 8, "pack_len": 128, "padded_batch": 4,
                "length_scale": 32, "memory_lengths": [64, 128], "wide_text": False},
}


def _special(token: str) -> int:
    from swift_plugins.dev.tiny_model import FIRST_SPECIAL_ID, SPECIAL_TOKENS
    return FIRST_SPECIAL_ID + SPECIAL_TOKENS.index(token)


def _set_impl(model, name: str) -> None:
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = name


class OpNames:
    """Names of the ops that ran (a TorchDispatchMode), to tell which attention kernel did the work."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        names = self.names = set()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                names.add(str(func))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def image_samples(device, dtype, seed: int = 0) -> List[Dict]:
    """Four chat-shaped samples, one image each: ids, patches (random), grid, image-token mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (w, h) in enumerate(SIZES):
        grid = [1, h // 16, w // 16]
        prompt = torch.randint(100, 3000, (5 + i,), generator=g).tolist()
        answer = torch.randint(100, 3000, (6 + 3 * i,), generator=g).tolist()
        ids = ([_special("<|im_start|>")] + prompt + [_special("<|vision_start|>")]
               + [_special("<|image_pad|>")] * (grid[1] * grid[2] // 4) + [_special("<|vision_end|>")] + answer
               + [_special("<|im_end|>")])
        ids = torch.tensor([ids], device=device)
        out.append({"input_ids": ids, "image_grid_thw": torch.tensor([grid], device=device),
                    "pixel_values": torch.randn(grid[1] * grid[2], 1536, generator=g).to(device, dtype),
                    "mm_token_type_ids": (ids == _special("<|image_pad|>")).int()})
    return out


def _packed_row(samples, positions) -> Dict:
    """One packed row of encoded ``samples`` with their mrope ``positions`` (3 rows each): 4-row
    position ids (the text row restarts per sample) and ``cu_seq_lens`` marking the samples."""
    import torch

    lengths = [s["input_ids"].shape[1] for s in samples]
    text = torch.cat([torch.arange(n) for n in lengths]).to(positions[0])
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32,
                      device=text.device)
    return {"input_ids": torch.cat([s["input_ids"] for s in samples], 1),
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
            "position_ids": torch.cat([text.view(1, 1, -1), torch.cat(positions, -1)]), "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths), "use_cache": False}


def _forward_kwargs(model, sample: Dict) -> Dict:
    import inspect

    wanted = set(inspect.signature(model.model.forward).parameters)
    return {k: v for k, v in sample.items() if k in wanted or k in ("input_ids", "pixel_values", "image_grid_thw")}


def packed_vs_alone(model, samples: List[Dict], packed_impl: str, boundaries: str = "cu_seq_lens") -> Dict:
    """Logits of the packed row minus each sample alone on sdpa; positions per sample are the model's own.

    ``boundaries``: cu_seq_lens (what ms-swift's collator passes) or position_ids (restarting text row only).
    """
    import torch

    alone, positions = [], []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: positions.append(kw["position_ids"][-3:]), with_kwargs=True)
    _set_impl(model, "sdpa")
    try:
        with torch.no_grad():
            for s in samples:
                alone.append(model(**_forward_kwargs(model, s), use_cache=False).logits[0].float())
    finally:
        hook.remove()
    lengths = [s["input_ids"].shape[1] for s in samples]
    packed_inputs = _packed_row(samples, positions)
    if boundaries != "cu_seq_lens":
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            del packed_inputs[key]
    _set_impl(model, packed_impl)
    with torch.no_grad(), OpNames() as ops:
        packed = model(**packed_inputs).logits[0].float()
    diffs, offset = [], 0
    for n, single in zip(lengths, alone):
        diffs.append((packed[offset:offset + n] - single).abs().max().item())
        offset += n
    return {"lengths": lengths, "grids": [s["image_grid_thw"][0].tolist() for s in samples], "max_abs_diff": diffs,
            "ops": sorted(ops.names)}


def check_isolation(model_dir, plan) -> Dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from swift_plugins.training.attention import ATTN_IMPL, register

    register()
    dtype = getattr(torch, plan["dtype"])
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation=ATTN_IMPL)
    model = model.to(plan["device"]).eval()
    assert model.model.visual.deepstack_visual_indexes, "the tiny model must exercise DeepStack"
    samples = image_samples(plan["device"], dtype)
    result = {"tolerance": plan["tol"], "expected_kernel": "varlen_attn" if plan["device"] == "cuda" else "sdpa"}
    for boundaries in ("cu_seq_lens", "position_ids"):
        r = packed_vs_alone(model, samples, ATTN_IMPL, boundaries)
        r["varlen_kernel_ran"] = any("_varlen_attn" in op for op in r["ops"])
        r["sdpa_ran"] = any("scaled_dot_product" in op for op in r["ops"])
        r["ops"] = [op for op in r["ops"] if "attn" in op or "attention" in op]
        r["passed"] = (max(r["max_abs_diff"]) <= plan["tol"] and r["sdpa_ran"] != r["varlen_kernel_ran"]
                       and r["varlen_kernel_ran"] == (plan["device"] == "cuda"))
        result[boundaries] = r
    result["passed"] = result["cu_seq_lens"]["passed"] and result["position_ids"]["passed"]
    return result


def check_flash(model_dir, plan) -> Dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    if plan["device"] != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return {"skipped": "flash_attn is not importable" if plan["device"] == "cuda" else "CPU run"}
    dtype = getattr(torch, plan["dtype"])
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype,
                                                            attn_implementation="flash_attention_2").cuda().eval()
    samples = image_samples("cuda", dtype)
    result = {"tolerance": plan["tol"]}
    for boundaries in ("cu_seq_lens", "position_ids"):
        try:  # an exception (e.g. the text row's cu_seq_lens reaching the vision tower) is a failed check
            r = packed_vs_alone(model, samples, "flash_attention_2", boundaries)
            r["ops"] = [op for op in r["ops"] if "flash" in op]
            r["passed"] = max(r["max_abs_diff"]) <= plan["tol"]
        except Exception as e:
            r = {"passed": False, "exception": f"{type(e).__name__}: {e}"[:500]}
        result[boundaries] = r
    result["passed"] = result["cu_seq_lens"]["passed"] and result["position_ids"]["passed"]
    return result


def check_attention(model_dir, plan) -> Dict:
    result = bench_attention.bench(["tiny", "wide"], {"tiny": plan["tiny_lengths"], "wide": plan["wide_lengths"]},
                                   str(model_dir), plan["device"], plan["dtype"], plan["reps"], *plan["skip_over"],
                                   memory=False, log=lambda line: print("  " + line, flush=True))
    result["markdown"] = bench_attention.markdown(result)
    return result


# ----------------------------------------------------------------------------- training on the wide model
def wide_model_dir(work: pathlib.Path, plan) -> pathlib.Path:
    """config.json of a Qwen3-VL whose text model is bench_attention.WIDE (GPU) or the tiny one (dry run).

    Vocab 151,936 either way (the logits term of the estimate), tiny vision tower (text-only steps).
    """
    from swift_plugins.dev.tiny_model import model_config

    cfg = model_config()
    if plan["wide_text"]:
        cfg["text_config"].update(bench_attention.WIDE)
        cfg["text_config"]["rope_parameters"]["mrope_section"] = [16, 8, 8]  # head 64 = 2 x 32 rotary pairs
    folder = work / ("wide-qwen3-vl" if plan["wide_text"] else "tiny-text-qwen3-vl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    return folder


def build_wide(folder, plan):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from swift_plugins.training.attention import register

    register()
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig.from_pretrained(folder))
    model = model.to(device=plan["device"], dtype=getattr(torch, plan["dtype"]))
    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    return model.train()


def sample_lengths(count: int, scale: int, cap: int, seed: int = 0) -> List[int]:
    """``count`` lengths from bench_attention's LVIS-like mix, divided by ``scale``, at most ``cap``."""
    import math
    import random

    rng = random.Random(seed)
    mix = bench_attention.MIX
    return [min(cap, max(8, round(max(mix["min"], rng.lognormvariate(math.log(mix["median"]), mix["sigma"]))
                                  / scale))) for _ in range(count)]


def packed_rows(lengths: List[int], pack_len: int, device) -> List[Dict]:
    """Next-fit rows of whole samples; labels drop each sample's first token (no cross-sample target)."""
    import torch

    g = torch.Generator().manual_seed(1)
    rows, current = [], []
    for n in lengths:
        if current and sum(current) + n > pack_len:
            rows.append(current)
            current = []
        current.append(n)
    rows.append(current)
    batches = []
    for row in rows:
        ids = torch.randint(100, 3000, (1, sum(row)), generator=g)
        labels = ids.clone()
        starts = [sum(row[:i]) for i in range(len(row))]
        labels[0, starts] = -100
        text = torch.cat([torch.arange(n) for n in row])
        cu = torch.tensor(starts + [sum(row)], dtype=torch.int32)
        batches.append({"input_ids": ids, "labels": labels, "position_ids": text.view(1, 1, -1).expand(4, 1, -1),
                        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(row), "max_length_k": max(row),
                        "samples": len(row), "tokens": sum(row)})
    return [{k: (v.to(device) if hasattr(v, "to") else v) for k, v in b.items()} for b in batches]


def padded_batches(lengths: List[int], batch: int, device) -> List[Dict]:
    """Batches of ``batch`` samples in order, right-padded to the longest (ms-swift's padded training)."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(0, len(lengths), batch):
        group = lengths[i:i + batch]
        width = max(group)
        ids = torch.full((len(group), width), _special("<|endoftext|>"))
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, n in enumerate(group):
            ids[r, :n] = torch.randint(100, 3000, (n,), generator=g)
            mask[r, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
                    "samples": len(group), "tokens": sum(group)})
    return out


def train(model, batches: List[Dict], impl: str, device: str) -> Dict:
    """One epoch over ``batches`` (after one untimed warm-up step): seconds, steps, samples, tokens, losses."""
    import torch

    _set_impl(model, impl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def one(b):
        loss = model(**{k: v for k, v in b.items() if k not in ("samples", "tokens")}, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    one(batches[0])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [one(b) for b in batches]
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    samples, tokens = sum(b["samples"] for b in batches), sum(b["tokens"] for b in batches)
    return {"seconds": seconds, "steps": len(batches), "samples": samples, "tokens": tokens,
            "steps_per_s": len(batches) / seconds, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "positions": sum(b["input_ids"].numel() for b in batches), "losses": losses}


def check_training(work, plan) -> Dict:
    import math

    from swift_plugins.training.attention import ATTN_IMPL

    folder = wide_model_dir(work, plan)
    lengths = sample_lengths(plan["train_samples"], plan["length_scale"], plan["pack_len"])
    result = {"lengths": lengths, "pack_len": plan["pack_len"], "padded_batch": plan["padded_batch"]}
    result["packed"] = train(build_wide(folder, plan), packed_rows(lengths, plan["pack_len"], plan["device"]),
                             ATTN_IMPL, plan["device"])
    result["padded"] = train(build_wide(folder, plan), padded_batches(lengths, plan["padded_batch"], plan["device"]),
                             "sdpa", plan["device"])
    result["samples_per_s_ratio"] = result["packed"]["samples_per_s"] / result["padded"]["samples_per_s"]
    result["passed"] = (result["packed"]["samples"] == result["padded"]["samples"] == len(lengths)
                        and all(math.isfinite(x) for side in ("packed", "padded") for x in result[side]["losses"]))
    return result


def check_memory(work, plan) -> Dict:
    import torch
    from swift_plugins.analysis.memory import GIB, MemorySetup, ModelShape, estimate_step_memory, setup_dict
    from swift_plugins.training.attention import ATTN_IMPL

    folder = wide_model_dir(work, plan)
    setup = MemorySetup(tuner="full", zero_stage=0, gradient_checkpointing=True, world_size=1)
    shape = ModelShape.from_config(folder)
    rows = []
    for n in plan["memory_lengths"]:
        for path in bench_loss.PATHS:
            model = build_wide(folder, plan)
            _set_impl(model, ATTN_IMPL)
            batch = packed_rows(bench_attention.lvis_like_pack(n), n, plan["device"])[0]  # exactly n tokens
            inputs = {k: v for k, v in batch.items() if k not in ("samples", "tokens", "labels")}
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            measured, losses = None, []
            for i in range(2):  # step 1 creates the AdamW state; step 2 is a steady-state step
                if plan["device"] == "cuda" and i == 1:
                    torch.cuda.reset_peak_memory_stats()
                loss = bench_loss.model_loss(model, {**inputs, "use_cache": False}, batch["labels"], path)
                loss.backward()
                losses.append(loss.item())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if plan["device"] == "cuda":
                measured = torch.cuda.max_memory_allocated()
            est = estimate_step_memory(shape, batch["tokens"], dataclasses.replace(setup, fused_loss=path == "fused"))
            rows.append({"seq_len": batch["tokens"], "loss_path": path, "losses": losses,
                         "measured_gib": None if measured is None else measured / GIB,
                         "estimate_total_gib": est["total"] / GIB,
                         "estimate_without_overhead_gib": (est["total"] - est["overhead"]) / GIB,
                         "estimate_parts_gib": {k: v / GIB for k, v in est.items()}})
            del model, optimizer
            bench_attention._free_cuda()
    return {"setup": setup_dict(setup), "config": str(folder / "config.json"), "rows": rows,
            "note": "measured = torch.cuda.max_memory_allocated of step 2 (no CUDA context); bf16 weights, torch "
                    "AdamW states in bf16 (the estimate counts an fp32 master copy and fp32 Adam states); "
                    "loss path full: transformers' loss over the (L, vocab) logits; fused: "
                    "swift_plugins.training.linear_ce (liger-kernel if installed, else chunked PyTorch)"}


def packed_row(model, samples: List[Dict]) -> Dict:
    """The samples as one packed training row (labels: each sample's tokens after its first), with the
    4-row position ids the packing template gives (text row restarting per sample + the model's mrope rows)."""
    import torch

    positions = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: positions.append(kw["position_ids"][-3:]), with_kwargs=True)
    try:
        with torch.no_grad():
            for s in samples:
                model(**_forward_kwargs(model, s), use_cache=False)
    finally:
        hook.remove()
    row = _packed_row(samples, positions)
    labels = row["input_ids"].masked_fill(row["input_ids"] == _special("<|image_pad|>"), -100)
    labels[0, row["cu_seq_lens_q"][:-1].long()] = -100
    return {**row, "labels": labels}


def check_zero3(model_dir, plan) -> Dict:
    """ZeRO-3 (one process) around the packed forward: parameters gathered by DeepSpeed's hooks."""
    import os
    import socket

    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed not installed"}
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from swift_plugins.training.attention import ATTN_IMPL, register

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    if plan["device"] == "cpu":  # as swift_plugins.training.pipeline.prepare_cpu_deepspeed: no inference op build
        os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    import deepspeed

    register()
    dtype = getattr(torch, plan["dtype"])
    losses, batches = {}, None
    for side in ("plain", "zero3"):
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(plan["device"]).train()
        if batches is None:  # two packed rows of four image samples each, positions from the model itself
            batches = [packed_row(model, image_samples(plan["device"], dtype, seed)) for seed in (0, 1)]
        _set_impl(model, ATTN_IMPL)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if side == "zero3":
            config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                      "zero_optimization": {"stage": 3}, "bf16": {"enabled": plan["dtype"] == "bfloat16"}}
            model, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        out = []
        for batch in batches:
            loss = model(**batch).loss
            if side == "zero3":
                model.backward(loss)
                model.step()
            else:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            out.append(loss.item())
        losses[side] = out
    step1 = abs(losses["zero3"][0] - losses["plain"][0]) / abs(losses["plain"][0])
    return {"losses": losses, "step1_rel_diff": step1, "tolerance": plan["tol"], "passed": step1 <= plan["tol"]}


CHECKS = {"isolation": lambda a, w, p: check_isolation(a.model_path, p), "flash": lambda a, w, p: check_flash(
    a.model_path, p), "attention": lambda a, w, p: check_attention(a.model_path, p),
    "training": lambda a, w, p: check_training(w, p), "memory": lambda a, w, p: check_memory(w, p),
    "zero3": lambda a, w, p: check_zero3(a.model_path, p)}


def markdown(summary: Dict) -> str:
    lines = [f"# GPU acceptance ({'dry run, CPU fp32' if summary['dry_run'] else 'GPU'})", "",
             f"environment: {json.dumps(summary['environment'])}", "", "| check | status | seconds |", "|---|---|---:|"]
    for name, r in summary["checks"].items():
        status = ("ERROR" if "error" in r else "skipped: " + r["skipped"] if "skipped" in r
                  else {True: "passed", False: "FAILED"}.get(r.get("passed"), "ran"))
        lines.append(f"| {name} | {status} | {r.get('check_seconds', 0):.1f} |")
    c = summary["checks"]
    for name in ("isolation", "flash"):
        for boundaries in ("cu_seq_lens", "position_ids"):
            r = c.get(name, {}).get(boundaries, {})
            if "max_abs_diff" in r:
                lines += ["", f"{name} ({boundaries}): max |packed - alone| per sample "
                              f"{', '.join(f'{d:.2e}' for d in r['max_abs_diff'])} (tolerance {c[name]['tolerance']})"
                              + (f"; varlen_attn ran: {r['varlen_kernel_ran']}" if "varlen_kernel_ran" in r else "")]
            elif "exception" in r:
                lines += ["", f"{name} ({boundaries}): {r['exception']}"]
    if "markdown" in c.get("attention", {}):
        lines += ["", "## Attention bench", ""]
        if summary["dry_run"]:
            lines += ["(dry run: lengths far below the targets' 4k-32k, so the verdicts below mean nothing)", ""]
        lines += [c["attention"]["markdown"]]
    if "packed" in c.get("training", {}):
        t = c["training"]
        lines += ["", "## Training, packed vs padded (wide model)", "",
                  "| side | steps | samples | seconds | steps/s | samples/s | real tokens/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for side in ("packed", "padded"):
            s = t[side]
            lines.append(f"| {side} | {s['steps']} | {s['samples']} | {s['seconds']:.3f} | {s['steps_per_s']:.2f} | "
                         f"{s['samples_per_s']:.2f} | {s['tokens_per_s']:,.0f} |")
        lines.append(f"\npacked / padded samples/s: {t['samples_per_s_ratio']:.2f}")
    if "rows" in c.get("memory", {}):
        lines += ["", "## Peak memory per pack length vs swift_plugins.analysis.memory", "",
                  "| tokens | loss path | measured GiB | estimate GiB | estimate without 2 GiB overhead |",
                  "|---:|---|---:|---:|---:|"]
        for r in c["memory"]["rows"]:
            measured = "n/a (CPU)" if r["measured_gib"] is None else f"{r['measured_gib']:.2f}"
            lines.append(f"| {r['seq_len']:,} | {r['loss_path']} | {measured} | {r['estimate_total_gib']:.2f} | "
                         f"{r['estimate_without_overhead_gib']:.2f} |")
        lines.append("\n" + c["memory"]["note"])
    if "losses" in c.get("zero3", {}):
        z = c["zero3"]
        lines += ["", f"ZeRO-3 packed steps, loss plain vs ZeRO-3: {z['losses']['plain']} vs {z['losses']['zero3']} "
                      f"(step 1 relative difference {z['step1_rel_diff']:.2e}, tolerance {z['tolerance']})"]
    for name, r in c.items():
        if "error" in r:
            lines += ["", f"## {name} error", "", "```", r["error"], "```"]
    return "\n".join(lines) + "\n"


def environment() -> Dict:
    import torch
    import transformers
    from swift_plugins.training import attention

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "flash_attn": importlib.util.find_spec("flash_attn") is not None}
    env["varlen_attn_params"] = sorted(attention._varlen_params()) if attention._varlen_fn() else None
    return env


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--dry_run", action="store_true", help="CPU fp32, tiny sizes, same code paths")
    parser.add_argument("--model_path", default=None, help="tiny checkpoint (default: built into out_dir)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="subset of " + ",".join(CHECKS))
    args = parser.parse_args(argv)
    import torch

    plan = PLANS["dry_run" if args.dry_run else "gpu"]
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry_run on CPU")
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        torch.set_num_threads(1)
    if args.model_path is None:
        from swift_plugins.dev.tiny_model import build
        args.model_path = str(build(out / "tiny-qwen3-vl"))
    summary = {"dry_run": args.dry_run, "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()},
               "environment": environment(), "checks": {}}
    started = time.perf_counter()
    for name in args.checks.split(","):
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = CHECKS[name](args, out, plan)
        except Exception:
            result = {"error": traceback.format_exc()}
            print(result["error"], flush=True)
        result["check_seconds"] = time.perf_counter() - t0
        summary["checks"][name] = result
    summary["total_seconds"] = time.perf_counter() - started
    summary["imported_ms_swift"] = "swift" in sys.modules
    failed = [n for n, r in summary["checks"].items() if "error" in r or r.get("passed") is False]
    summary["failed"] = failed
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 1 if failed or summary["imported_ms_swift"] else 0


if __name__ == "__main__":
    sys.exit(main())
