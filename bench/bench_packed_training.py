"""Benchmark packed training against ms-swift 4.6's own packing and against padded training.

    .venv/bin/python bench/bench_packed_training.py                      # CPU, all parts (see docs/benchmarks.md for run times)
    .venv/bin/python bench/bench_packed_training.py --parts a_inproc     # one part: a_inproc a_launch b profile
    .venv/bin/python bench/bench_packed_training.py --device cuda        # GPU: flash_attn and sdpa, bf16

Parts (same run, same model, same data; seconds are wall clock):

  a_inproc  Preprocessing that must finish before the first optimizer step, in this process, on
            ``--records`` records (the bundled LVIS sample's 200 records with real JPEGs, cycled,
            absolute image paths), both sides starting from the same loaded template
            (``training.calibration.load_template``, ``--max_pixels``), not counted for either.
            ours:     ``counter_from_template`` + ``count_dataset`` (empty cache, image headers
                      checked, 1 process, as training does) + ``plan_packs`` (the default strategy, the tiny config's buffer,
                      overlong drop); also the shipped config's ``build_sample_plan`` (overlong split).
                      Best of ``--repeat``.
            ms-swift: ``AddLengthPreprocessor`` over an HF dataset of the same rows
                      (``data.to_swift_row``), called as ``SwiftSft._encode_dataset`` calls it
                      (``dataset_num_proc`` 1, ``batch_size`` 100 for a multimodal model, no map
                      cache), then ``LazyLLMDataset`` + ``PackingDataset`` as
                      ``_post_process_datasets`` builds them (binpack, ``packing_length`` =
                      ``--global_max_length``). Run once (it is the slow side).
            Asserts ours per-record lengths == ms-swift's ``lengths`` column, record by record.
  a_launch  Time to first optimizer step: a subprocess is started and ``logging.jsonl`` is polled
            for its first ``loss`` line (the end of step 1). Same 2,000 records, 1 sample / pack
            per device batch, gradient accumulation 1, ``max_steps 1``, empty caches.
            ours:     ``python -m swift_plugins.sft --config configs/tiny/sft_packing.yaml`` (cwd = a
                      fresh folder, so the length cache is cold).
            ms-swift: ``swift sft --packing true --lazy_tokenize false --packing_length L
                      --max_length L`` on the same rows as an ms-swift messages/images JSONL.
                      On CPU (sdpa) this needs ``bench/swiftpack_bench_allow_cpu_packing.py``
                      (``--external_plugins``), which disables ms-swift's flash-attention-only
                      check: ms-swift's packed samples then attend to each other (wrong training),
                      which does not change how long preprocessing and one step take.
  b         Training throughput, packed vs padded, one epoch over the same ``--train_records``
            records (the first records of the bundled sample whose exact length is
            <= ``--global_max_length``; so padding cuts nothing and packing drops nothing).
            padded: configs/tiny/sft_padding.yaml (batch 2), ``template.max_length`` = L,
                    truncation delete, ``dataset_shuffle false`` + ``log_data_order`` (the trainer
                    still shuffles; the logged batches give the positions computed, right padding
                    to each batch's longest). packed: configs/tiny/sft_packing.yaml,
                    global_max_length L (padding-free rows: positions = the samples' tokens).
            Both: ``dataloader_num_workers`` 1, no eval, no checkpoint before the end.
            ``--b_rounds`` rounds in ABBA order (padded, packed, packed, padded, ...), so a load
            drift on a shared machine hits both. samples/s = samples trained / ``train_runtime``
            summed over the rounds (packed: ``samples_packed`` of packing/summary.json, checked
            against the per-step ``samples_per_step`` log; padded: the number of records, checked
            against the logged batches and the number of optimizer steps).

  profile   (opt-in, ``--parts profile``) where a step's time goes per position: one forward +
            backward of the model on random text tokens for each ``--profile_shapes`` BxN (weights
            frozen, gradient w.r.t. the input embeddings as with LoRA), seconds per 1,000 positions,
            peak RSS, and the top ops of the last shape's backward (torch.profiler).

``--device cuda`` runs the same parts on a GPU with ``torch_dtype bfloat16`` for each of
``--attn`` (default: flash_attn sdpa); without a GPU it stops with a message. Results are
printed as markdown tables and written to ``<workdir>/results.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "public_data" / "lvis" / "sample" / "train.jsonl"
PLUGIN = REPO / "bench" / "swiftpack_bench_allow_cpu_packing.py"
CFG_PACKING = REPO / "configs" / "tiny" / "sft_packing.yaml"
CFG_PADDING = REPO / "configs" / "tiny" / "sft_padding.yaml"
PARTS = ("a_inproc", "a_launch", "b", "profile")
DEFAULT_PARTS = ("a_inproc", "a_launch", "b")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds() -> float:
    """CPU time (user + system) of this process's threads and of its reaped children (datasets.map's
    forked worker, PackingDataset's): it moves much less than wall time with other sessions' load."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def write_bench_data(folder: pathlib.Path, n: int) -> tuple[pathlib.Path, pathlib.Path]:
    """``n`` records cycling the bundled sample (absolute image paths) + the same rows for ``swift sft``."""
    from swift_plugins.data import to_swift_row

    sample = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    base = SAMPLE.parent
    ours, theirs = folder / f"train{n}.jsonl", folder / f"train{n}_messages.jsonl"
    with open(ours, "w") as fo, open(theirs, "w") as ft:
        for i in range(n):
            rec = dict(sample[i % len(sample)])
            rec["images"] = [str(base / rec["images"][0])]
            fo.write(json.dumps(rec) + "\n")
            ft.write(json.dumps(to_swift_row(rec, base_dir=base, sample_key=i + 1), ensure_ascii=False) + "\n")
    return ours, theirs


def read_rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# ----------------------------------------------------------------------------- part a, in process
def part_a_inproc(args, model: pathlib.Path, data: pathlib.Path, messages: pathlib.Path, work: pathlib.Path) -> dict:
    import numpy as np

    from swift_plugins.config import resolve_config
    from swift_plugins.data import ConversationOptions
    from swift_plugins.lengths import count_dataset
    from swift_plugins.packing import DEFAULT_STRATEGY, plan_packs
    from swift_plugins.packing.samples import build_sample_plan
    from swift_plugins.training.calibration import counter_from_template, load_template

    buffer = resolve_config(str(CFG_PACKING), world_size=1).config.training.packing_buffer

    L = args.global_max_length
    t = time.perf_counter()
    template = load_template(model, max_pixels=args.max_pixels)
    t_template = time.perf_counter() - t
    log(f"template loaded in {t_template:.2f} s (shared, counted for neither side)")

    # Same page-cache state for both sides: every image file read once before either is timed.
    for path in sorted({r["images"][0] for r in read_rows(messages)}):
        pathlib.Path(path).read_bytes()
    # ms-swift first: its datasets.map(num_proc=1) forks a worker, and a fork after this process has
    # run torch ops (our counter's calibration encodes one image) hangs the child (seen here).
    # ms-swift 4.6: SwiftSft._encode_dataset -> AddLengthPreprocessor, then _post_process_datasets ->
    # LazyLLMDataset + PackingDataset (dataset_num_proc 1, packing_num_proc 1, strict False).
    from datasets import Dataset as HfDataset
    from swift.dataset import AddLengthPreprocessor, LazyLLMDataset, PackingDataset

    rows = read_rows(messages)
    t0 = time.perf_counter()
    hf = HfDataset.from_list(rows)
    t_from_list = time.perf_counter() - t0
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    encoded = AddLengthPreprocessor(template=template)(hf, num_proc=1, load_from_cache_file=False, strict=False,
                                                     batch_size=100)
    t1 = time.perf_counter()
    lazy = LazyLLMDataset(encoded, template.encode, strict=False, random_state=42)
    packed = PackingDataset(template, lazy, num_proc=1, packing_length=L, packing_num_proc=1,
                            packing_strategy="binpack", strict=False, load_from_cache_file=False)
    t2 = time.perf_counter()
    swift = {"from_list": t_from_list, "add_length": t1 - t0, "packing": t2 - t1, "total": t2 - t0,
             "cpu": cpu_seconds() - c0}
    log(f"ms-swift: {t2 - t0:.2f} s (AddLengthPreprocessor {t1 - t0:.2f}, PackingDataset {t2 - t1:.3f}; "
        f"HfDataset.from_list {t_from_list:.2f} not counted); CPU {swift['cpu']:.2f} s")

    ours_runs, split_runs = [], []
    counted = plan = None
    for r in range(args.repeat):
        cache = work / f"cache_inproc_{r}"
        shutil.rmtree(cache, ignore_errors=True)
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        counter = counter_from_template(template)
        t1 = time.perf_counter()
        counted = count_dataset(data, counter, ConversationOptions(), check_images=True, cache_dir=cache)
        t2 = time.perf_counter()
        plan = plan_packs(counted.total_tokens, L, strategy=DEFAULT_STRATEGY, seed=0, buffer_size=buffer, overlong="drop")
        t3 = time.perf_counter()
        cpu = cpu_seconds() - c0
        assert not counted.from_cache
        ours_runs.append({"counter": t1 - t0, "count": t2 - t1, "plan": t3 - t2, "total": t3 - t0, "cpu": cpu})
        log(f"ours run {r + 1}: {t3 - t0:.2f} s (counter_from_template {t1 - t0:.2f}, count_dataset incl. "
            f"frame calibration {t2 - t1:.2f}, plan_packs {t3 - t2:.3f})")

        cache = work / f"cache_inproc_split_{r}"
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        counter = counter_from_template(template)
        sp = build_sample_plan(data, counter, ConversationOptions(), global_max_length=L, strategy=DEFAULT_STRATEGY, seed=0,
                               buffer_size=buffer, overlong="split", check_images=True, cache_dir=cache)
        split_runs.append(time.perf_counter() - t0)
        log(f"ours as shipped config (overlong split) run {r + 1}: {split_runs[-1]:.2f} s")
    ours_lengths = counted.total_tokens
    split_summary = sp.summary()

    swift_lengths = np.asarray([sum(x) if isinstance(x, list) else x for x in encoded["lengths"]], dtype=np.int64)
    if len(swift_lengths) != len(ours_lengths) or not np.array_equal(swift_lengths, ours_lengths):
        diff = [(i + 1, int(a), int(b)) for i, (a, b) in enumerate(zip(ours_lengths, swift_lengths)) if a != b]
        raise SystemExit(f"length mismatch: ours {len(ours_lengths)} records, ms-swift {len(swift_lengths)}; "
                         f"first differing (line, ours, ms-swift): {diff[:10]}")
    log(f"lengths equal record by record ({len(ours_lengths)} records)")

    stats = plan.stats(ours_lengths)
    swift_pack_lengths = packed.packed_length
    best = min(r["total"] for r in ours_runs)
    best_cpu = min(r["cpu"] for r in ours_runs)
    return {
        "ours_best_cpu_s": best_cpu, "ratio_cpu": swift["cpu"] / best_cpu,
        "records": int(len(ours_lengths)), "template_load_s": t_template, "buffer": buffer,
        "ours_runs": ours_runs, "ours_best_s": best, "ours_split_runs_s": split_runs,
        "ours_split_best_s": min(split_runs), "ours_split_summary": split_summary,
        "swift": swift, "ratio": swift["total"] / best, "ratio_split": swift["total"] / min(split_runs),
        "lengths_equal": True, "lengths_sum": int(ours_lengths.sum()),
        "over_max_length": int((ours_lengths > L).sum()),
        "ours_packs": stats["num_packs"], "ours_efficiency": stats["efficiency"],
        "ours_dropped": stats["samples_dropped"],
        "swift_packs": len(packed), "swift_packs_over_length": int(sum(1 for x in swift_pack_lengths if x > L)),
        "swift_efficiency": float(sum(x for x in swift_pack_lengths if x <= L)
                                  / (L * sum(1 for x in swift_pack_lengths if x <= L))),
    }


# ----------------------------------------------------------------------------- subprocess runs
def child_env(args, work: pathlib.Path) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                # fresh dataset caches: nothing from an earlier run is reused
                "HF_DATASETS_CACHE": str(work / "hf_datasets_cache"), "MODELSCOPE_CACHE": str(work / "ms_cache")})
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("NPROC_PER_NODE", None)
    return env


def first_loss(log_file: pathlib.Path) -> Optional[dict]:
    if not log_file.is_file():
        return None
    for line in log_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if "loss" in rec:
            return rec
    return None


def run_until_first_step(cmd: list, cwd: pathlib.Path, env: dict, log_file: pathlib.Path, out_log: pathlib.Path,
                         timeout: float) -> dict:
    """Start ``cmd``; seconds until ``log_file`` has its first loss line; then wait for the exit."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(out_log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        first, t_first = None, None
        try:
            while True:
                first = first_loss(log_file)
                if first is not None:
                    t_first = time.perf_counter() - t0
                    break
                if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                    break
                time.sleep(0.2)
            code = proc.wait(timeout=max(60.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the group this call started (swift sft runs a child python)
            code = proc.wait()
        t_exit = time.perf_counter() - t0
    if t_first is None or code != 0:
        tail = out_log.read_text()[-4000:]
        raise SystemExit(f"run failed (exit {code}, first loss line {'seen' if t_first else 'never seen'}): "
                         f"{' '.join(map(str, cmd))}\n--- log tail ({out_log}) ---\n{tail}")
    return {"to_first_step_s": t_first, "exit_s": t_exit, "first_step_s": float(first.get("train_speed(s/it)", "nan")),
            "log": str(out_log)}


def ours_cmd(config: pathlib.Path, model, data, out, *extra) -> list:
    return [sys.executable, "-m", "swift_plugins.sft", "--config", str(config), "--model.model", str(model),
            "--custom.train_jsonl", str(data), "--custom.val_jsonl", "null", "--training.output_dir", str(out),
            "--training.add_version", "false", *map(str, extra)]


def device_overrides(args, attn: str) -> list:
    if args.device == "cpu":
        return ["--model.attn_impl", attn]
    return ["--model.attn_impl", attn, "--model.torch_dtype", "bfloat16", "--training.use_cpu", "false"]


def part_a_launch(args, model, data, messages, work: pathlib.Path, attn: str) -> dict:
    L = args.global_max_length
    env = child_env(args, work)
    tag = f"{args.device}_{attn}"
    res = {}
    # ours
    run_dir = work / f"launch_ours_{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = run_dir / "out"
    cmd = ours_cmd(CFG_PACKING, model, data, out, "--training.max_steps", 1, "--training.global_max_length", L,
                   "--training.effective_batch_size", 1, "--training.logging_steps", 1,
                   "--training.save_steps", 100000, "--training.eval_steps", 100000,
                   "--template.max_pixels", args.max_pixels, *device_overrides(args, attn))
    log(f"a_launch ours ({tag}) ...")
    res["ours"] = run_until_first_step(cmd, run_dir, env, out / "logging.jsonl", work / f"launch_ours_{tag}.log",
                                       args.timeout)
    res["ours"]["summary"] = json.loads((out / "packing" / "summary.json").read_text())["train"]
    log(f"a_launch ours ({tag}): first step after {res['ours']['to_first_step_s']:.1f} s")
    # ms-swift
    run_dir = work / f"launch_swift_{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = run_dir / "out"
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    cmd = [str(pathlib.Path(sys.executable).parent / "swift"), "sft", "--model", str(model), "--model_type", "qwen3_vl",
           "--dataset", str(messages), "--tuner_type", "lora", "--lora_rank", "4", "--lora_alpha", "8",
           "--target_modules", "all-linear", "--use_dora", "true", "--freeze_vit", "false", "--freeze_aligner", "false",
           "--max_steps", "1", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
           "--check_model", "false", "--output_dir", str(out), "--add_version", "false", "--logging_steps", "1",
           "--save_steps", "100000", "--torch_dtype", dtype, "--attn_impl", attn, "--dataloader_num_workers", "1",
           "--dataset_num_proc", "1", "--report_to", "none", "--split_dataset_ratio", "0",
           "--packing", "true", "--packing_length", str(L), "--max_length", str(L), "--lazy_tokenize", "false",
           "--max_pixels", str(args.max_pixels), "--external_plugins", str(PLUGIN)]
    log(f"a_launch ms-swift ({tag}) ...")
    res["swift"] = run_until_first_step(cmd, run_dir, env, out / "logging.jsonl", work / f"launch_swift_{tag}.log",
                                        args.timeout)
    log(f"a_launch ms-swift ({tag}): first step after {res['swift']['to_first_step_s']:.1f} s")
    res["ratio"] = res["swift"]["to_first_step_s"] / res["ours"]["to_first_step_s"]
    return res


# ----------------------------------------------------------------------------- part b
def part_b(args, model, lengths, work: pathlib.Path, attn: str) -> dict:
    """``lengths``: exact lengths of the bundled sample's records in file order (checked in a_inproc)."""
    L = args.global_max_length
    sample = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    keep = [i for i, n in enumerate(lengths) if n <= L][: args.train_records]
    folder = work / "b_data"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train.jsonl"
    with open(data, "w") as f:
        for i in keep:
            rec = dict(sample[i])
            rec["images"] = [str(SAMPLE.parent / rec["images"][0])]
            f.write(json.dumps(rec) + "\n")
    n = len(keep)
    sel = [int(lengths[i]) for i in keep]
    env = child_env(args, work)
    tag = f"{args.device}_{attn}"
    common = ["--training.max_steps", "null", "--training.num_train_epochs", 1, "--training.logging_steps", 1,
              "--training.save_steps", 100000, "--training.eval_steps", 100000,
              "--training.dataloader_num_workers", 1, "--template.max_pixels", args.max_pixels,
              *device_overrides(args, attn)]
    res = {"records": n, "tokens": sum(sel), "max_len": max(sel), "mean_len": sum(sel) / n}

    def train(name, config, *extra):
        run_dir = work / f"b_{name}_{tag}"
        shutil.rmtree(run_dir, ignore_errors=True)
        out = run_dir / "out"
        cmd = ours_cmd(config, model, data, out, *common, *extra)
        log(f"b {name} ({tag}): {n} records, one epoch ...")
        t0 = time.perf_counter()
        with open(work / f"b_{name}_{tag}.log", "w") as fo:
            proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=fo, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            watchdog = threading.Timer(args.timeout, os.killpg, (proc.pid, 9))  # the group this call started
            watchdog.start()
            _, status, usage = os.wait4(proc.pid, 0)  # the training process's own peak RSS (not its workers')
            watchdog.cancel()
            proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        peak_rss_gib = usage.ru_maxrss / 2 ** 20
        cpu = usage.ru_utime + usage.ru_stime  # the training process + its reaped dataloader worker
        if code != 0:
            raise SystemExit(f"b {name} failed (exit {code}); log: {work / f'b_{name}_{tag}.log'}\n"
                             + (work / f"b_{name}_{tag}.log").read_text()[-4000:])
        recs = [json.loads(l) for l in (out / "logging.jsonl").read_text().splitlines() if l.strip()]
        steps = [r for r in recs if "loss" in r]
        runtime = next(r["train_runtime"] for r in recs if "train_runtime" in r)
        return out, steps, runtime, wall, peak_rss_gib, cpu

    def padded_run(r):
        out, steps, runtime, wall, rss, cpu = train(f"padded{r}", CFG_PADDING, "--template.max_length", L,
                                          "--template.truncation_strategy", "delete",
                                          # data order by JSONL line (the trainer still shuffles batches),
                                          # logged, so the padded positions can be counted
                                          "--swift.dataset_shuffle", "false", "--training.log_data_order", "true")
        ga = 2  # sft_padding.yaml: effective 4 / (batch 2 x 1 process)
        expect_steps = math.ceil(math.ceil(n / 2) / ga)
        batches = json.loads((out / "data_order" / "rank0.json").read_text())["batches"]
        if len(steps) != expect_steps or sorted(i for b in batches for i in b) != list(range(n)):
            raise SystemExit(f"padded run: {len(steps)} steps (expected {expect_steps}), batches {batches}")
        positions = sum(len(b) * max(sel[i] for i in b) for b in batches)  # right padding to the batch's longest
        log(f"b padded: {n} samples / {runtime:.1f} s = {n / runtime:.3f} samples/s")
        return {"mode": "padded", "samples": n, "train_runtime": runtime, "wall": wall, "steps": len(steps),
                "positions": positions, "samples_per_s": n / runtime, "peak_rss_gib": rss, "cpu_s": cpu,
                "load_after": loadavg()}

    def packed_run(r):
        out, steps, runtime, wall, rss, cpu = train(f"packed{r}", CFG_PACKING, "--training.global_max_length", L)
        summary = json.loads((out / "packing" / "summary.json").read_text())["train"]
        packed = summary["samples_packed"]
        logged = int(sum(x["samples_per_step"] for x in steps))
        if packed != n or logged != packed:
            raise SystemExit(f"packed run: samples_packed {packed}, logged per step {logged}, records {n}")
        log(f"b packed: {packed} samples / {runtime:.1f} s = {packed / runtime:.3f} samples/s")
        return {"mode": "packed", "samples": packed, "train_runtime": runtime, "wall": wall, "steps": len(steps),
                "packs": summary["num_packs"], "efficiency": summary["efficiency"],
                "positions": sum(sel),  # padding-free rows: a pack is exactly its samples' tokens
                "samples_per_s": packed / runtime, "peak_rss_gib": rss, "cpu_s": cpu,
                "load_after": loadavg()}

    # ABBA order (padded, packed, packed, padded, ...) so a load drift on a shared machine hits both alike
    runs = []
    for r in range(args.b_rounds):
        order = (padded_run, packed_run) if r % 2 == 0 else (packed_run, padded_run)
        runs += [fn(r) for fn in order]
    res["runs"] = runs
    for mode in ("padded", "packed"):
        mine = [x for x in runs if x["mode"] == mode]
        res[mode] = {"samples": sum(x["samples"] for x in mine), "train_runtime": sum(x["train_runtime"] for x in mine),
                     "positions": sum(x["positions"] for x in mine)}
        res[mode]["samples_per_s"] = res[mode]["samples"] / res[mode]["train_runtime"]
        res[mode]["positions_per_s"] = res[mode]["positions"] / res[mode]["train_runtime"]
        res[mode]["cpu_s"] = sum(x["cpu_s"] for x in mine)
    res["ratio"] = res["packed"]["samples_per_s"] / res["padded"]["samples_per_s"]
    return res



# ----------------------------------------------------------------------------- part profile
def part_profile(args, model) -> dict:
    """Where a training step's time goes, per position: one forward + backward of the model (weights frozen,
    gradient w.r.t. the input embeddings, as with LoRA: every activation gradient is computed) on random
    text tokens, for each ``--profile_shapes`` BxN; plus the top ops of the last shape's backward."""
    import resource

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import Qwen3VLForConditionalGeneration

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    attn = args.attn[0]
    attn = "flash_attention_2" if attn == "flash_attn" else attn
    m = Qwen3VLForConditionalGeneration.from_pretrained(str(model), dtype=dtype, attn_implementation=attn)
    m = m.to(args.device).train()
    for prm in m.parameters():
        prm.requires_grad_(False)
    emb = m.get_input_embeddings()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    rows, table = [], ""
    for k, shape in enumerate(args.profile_shapes):
        b, n = (int(x) for x in shape.lower().split("x"))
        ids = torch.randint(1000, 5000, (b, n), device=args.device)
        x = emb(ids).detach().requires_grad_(True)
        sync(); t0 = time.perf_counter()
        out = m(inputs_embeds=x, labels=ids.clone())
        sync(); t1 = time.perf_counter()
        last = k == len(args.profile_shapes) - 1
        if last:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
            with profile(activities=activities) as pr:
                out.loss.backward()
                sync()
        else:
            out.loss.backward()
        sync(); t2 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        rows.append({"shape": shape, "positions": b * n, "forward_s": t1 - t0, "backward_s": t2 - t1,
                     "s_per_1k_positions": (t2 - t0) / (b * n) * 1000, "peak_rss_gib": rss})
        log(f"profile {shape}: forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s (profiled: {last}), "
            f"peak RSS so far {rss:.1f} GiB")
        if last:
            table = pr.key_averages().table(sort_by="self_cpu_time_total" if args.device == "cpu"
                                            else "self_cuda_time_total", row_limit=8, max_name_column_width=60)
        del out, x
    return {"rows": rows, "top_ops": table, "attn": attn}

# ----------------------------------------------------------------------------- report
def report(results: dict, args) -> str:
    L = args.global_max_length
    out = []
    a = results.get("a_inproc")
    if a:
        out += [f"### (a) preprocessing before the first step, in process: {a['records']} records, "
                f"global_max_length {L}, max_pixels {args.max_pixels}", "",
                "| side | seconds | breakdown | time / ours |", "|---|---:|---|---:|"]
        best = min(a["ours_runs"], key=lambda r: r["total"])
        runs = ", ".join(f"{r['total']:.2f}" for r in a["ours_runs"])
        out.append(f"| ours: count_dataset (cold cache, image headers checked) + plan_packs ({DEFAULT_STRATEGY}, buffer {a['buffer']}, "
                   f"overlong drop) | {a['ours_best_s']:.2f} | LengthCounter {best['counter']:.2f} + count_dataset "
                   f"{best['count']:.2f} + plan {best['plan']:.3f}; runs: {runs} | 1.0 |")
        runs = ", ".join(f"{r:.2f}" for r in a["ours_split_runs_s"])
        out.append(f"| ours as configs/tiny/sft_packing.yaml: build_sample_plan (overlong split) | "
                   f"{a['ours_split_best_s']:.2f} | runs: {runs} | {a['ours_split_best_s'] / a['ours_best_s']:.2f} |")
        s = a["swift"]
        out.append(f"| ms-swift 4.6: AddLengthPreprocessor + PackingDataset | {s['total']:.2f} | AddLength "
                   f"{s['add_length']:.2f} + PackingDataset {s['packing']:.3f} (HfDataset.from_list "
                   f"{s['from_list']:.2f} not counted) | {s['total'] / a['ours_best_s']:.1f} |")
        out += ["", f"CPU seconds (this process + reaped children): ours best {a['ours_best_cpu_s']:.2f}, ms-swift "
                f"{s['cpu']:.2f}; ms-swift / ours by CPU time: **{a['ratio_cpu']:.1f}x**."]
        out += ["", f"ms-swift / ours: **{a['ratio']:.1f}x** (vs the shipped config's split path: "
                f"{a['ratio_split']:.1f}x). Per-record lengths equal: {a['lengths_equal']} "
                f"({a['records']} records, {a['lengths_sum']:,} tokens, {a['over_max_length']} over {L}). "
                f"Packs: ours {a['ours_packs']} (efficiency {a['ours_efficiency']:.2%}, {a['ours_dropped']} dropped "
                f"overlong), ms-swift {a['swift_packs']} ({a['swift_packs_over_length']} of them single overlong "
                f"rows, efficiency of the others {a['swift_efficiency']:.2%}). Template load "
                f"{a['template_load_s']:.2f} s, shared.", ""]
    for key, r in results.items():
        if key.startswith("a_launch"):
            o, s = r["ours"], r["swift"]
            out += [f"### (a) time to first optimizer step ({key[len('a_launch_'):]}): {r['records']} records", "",
                    "| side | to first loss line (s) | first step (trainer s/it) | before training (s) | "
                    "process exit (s) |", "|---|---:|---:|---:|---:|"]
            for name, x in (("ours (python -m swift_plugins.sft, sft_packing.yaml)", o),
                            ("ms-swift (swift sft --packing true)", s)):
                out.append(f"| {name} | {x['to_first_step_s']:.1f} | {x['first_step_s']:.1f} | "
                           f"{x['to_first_step_s'] - x['first_step_s']:.1f} | {x['exit_s']:.1f} |")
            out += ["", f"ms-swift / ours: **{r['ratio']:.2f}x**", ""]
        if key.startswith("b_"):
            out += [f"### (b) training throughput ({key[2:]}): {r['records']} records <= {L} tokens, one epoch per run "
                    f"({r['tokens']:,} tokens, mean {r['mean_len']:.0f}, max {r['max_len']})", "",
                    "| run (in order) | samples | optimizer steps | positions computed | train_runtime (s) | samples/s "
                    "| positions/s | peak RSS (GiB) | wall (s) | CPU s (whole process) | load after |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
            for x in r["runs"]:
                name = ("padded (sft_padding.yaml, batch 2)" if x["mode"] == "padded" else
                        f"packed (sft_packing.yaml, {x['packs']} packs, efficiency {x['efficiency']:.2%})")
                out.append(f"| {name} | {x['samples']} | {x['steps']} | {x['positions']:,} | {x['train_runtime']:.1f} | "
                           f"{x['samples_per_s']:.3f} | {x['positions'] / x['train_runtime']:.0f} | "
                           f"{x['peak_rss_gib']:.1f} | {x['wall']:.1f} | {x['cpu_s']:.1f} | "
                           f"{x['load_after']} |")
            p, d = r["packed"], r["padded"]
            out += ["", f"All runs: padded {d['samples']} samples / {d['train_runtime']:.1f} s = "
                    f"{d['samples_per_s']:.3f} samples/s ({d['positions_per_s']:.0f} positions/s); packed "
                    f"{p['samples']} / {p['train_runtime']:.1f} s = {p['samples_per_s']:.3f} samples/s "
                    f"({p['positions_per_s']:.0f} positions/s). packed / padded samples/s: **{r['ratio']:.2f}x** "
                    f"(positions computed, padded / packed: {d['positions'] / p['positions']:.2f}x). CPU seconds of "
                    f"the whole processes (start-up included; less sensitive to other sessions' load than "
                    f"train_runtime): padded {d['cpu_s']:.0f}, packed {p['cpu_s']:.0f}, padded / packed "
                    f"{d['cpu_s'] / p['cpu_s']:.2f}x", ""]
    pr = results.get("profile")
    if pr:
        out += [f"### profile: one forward + backward of the model ({pr['attn']}), random text tokens", "",
                "| batch x positions | positions | forward (s) | backward (s) | s per 1k positions | peak RSS so far (GiB) |",
                "|---|---:|---:|---:|---:|---:|"]
        for x in pr["rows"]:
            out.append(f"| {x['shape']} | {x['positions']:,} | {x['forward_s']:.2f} | {x['backward_s']:.2f} | "
                       f"{x['s_per_1k_positions']:.2f} | {x['peak_rss_gib']:.1f} |")
        out += ["", f"Top ops of the {pr['rows'][-1]['shape']} backward:", "", "```", pr["top_ops"].strip(), "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--attn", nargs="+", default=None,
                   help="attention kernels to run (cpu default: sdpa; cuda default: flash_attn sdpa)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                   help="default: a_inproc a_launch b (profile is opt-in)")
    p.add_argument("--profile_shapes", nargs="+", default=["1x2048", "2x2048", "1x4096"],
                   help="part profile: batch x positions per forward+backward (peak memory ~2.5 MB per position on "
                        "the tiny model, CPU fp32)")
    p.add_argument("--records", type=int, default=2000, help="records for part a (the sample cycled)")
    p.add_argument("--train_records", type=int, default=None,
                   help="records for part b (default: cpu 64, cuda all of the sample that fit; at 32 the "
                        "tiny packing config's last, part-filled packs weigh more: 10 packs 92.1%% full "
                        "vs 20 packs 96.3%%)")
    p.add_argument("--b_rounds", type=int, default=2,
                   help="part b: rounds of (padded, packed), alternating order: ABBA for 2")
    p.add_argument("--global_max_length", type=int, default=4096)
    p.add_argument("--max_pixels", type=int, default=262144)
    p.add_argument("--repeat", type=int, default=3, help="repeats of our in-process preprocessing (best reported)")
    p.add_argument("--model", default=None, help="model folder (default: build the tiny Qwen3-VL in the workdir)")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir (logs, results.json)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    args = p.parse_args(argv)
    if args.attn is None:
        args.attn = ["sdpa"] if args.device == "cpu" else ["flash_attn", "sdpa"]
    if args.train_records is None:
        args.train_records = 64 if args.device == "cpu" else 200
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cuda":
        # asked in a subprocess: no CUDA init here before a_inproc's forked datasets.map worker
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            print("--device cuda: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU "
                  "machine with flash-attn installed", file=sys.stderr)
            return 2
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_packed_training_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    log(f"workdir {work}; parts {args.parts}; device {args.device}; attn {args.attn}; nproc {os.cpu_count()}")
    if args.model:
        model = pathlib.Path(args.model).resolve()
    else:
        model = work / "tiny-qwen3-vl"
        if not (model / "config.json").is_file():
            # in a subprocess: torch ops in this process before a_inproc's forked datasets.map worker hang it
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), str(model)], cwd=REPO,
                           check=True, capture_output=True)
    data, messages = write_bench_data(work, args.records)
    results: dict = {"args": vars(args), "load_start": loadavg()}
    if "a_inproc" in args.parts:
        results["a_inproc"] = part_a_inproc(args, model, data, messages, work)
    if "a_launch" in args.parts:
        for attn in args.attn:
            r = part_a_launch(args, model, data, messages, work, attn)
            r["records"] = args.records
            results[f"a_launch_{args.device}_{attn}"] = r
    if "b" in args.parts:
        # exact lengths of the sample (== ms-swift's, checked in a_inproc on the same records)
        from swift_plugins.data import ConversationOptions
        from swift_plugins.lengths import count_dataset
        from swift_plugins.training.calibration import counter_from_template, load_template
        counter = counter_from_template(load_template(model, max_pixels=args.max_pixels))
        sample_copy = work / "sample_abs.jsonl"
        write_sample = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
        with open(sample_copy, "w") as f:
            for rec in write_sample:
                f.write(json.dumps({**rec, "images": [str(SAMPLE.parent / rec["images"][0])]}) + "\n")
        lengths = count_dataset(sample_copy, counter, ConversationOptions(), check_images=True).total_tokens.tolist()
        for attn in args.attn:
            results[f"b_{args.device}_{attn}"] = part_b(args, model, lengths, work, attn)
    if "profile" in args.parts:
        results["profile"] = part_profile(args, model)
    results["load_end"] = loadavg()
    results["total_s"] = time.perf_counter() - t_all
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(report(results, args))
    print(f"load average (1/5/15 min) at start {results['load_start']}, at end {results['load_end']}; "
          f"total {results['total_s']:.0f} s"
          + ("" if not args.workdir and not args.keep else f"; results: {work / 'results.json'}"))
    if not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
