"""Benchmark the exact token-length analysis against ms-swift 4.6's own way of getting lengths.

    .venv/bin/python bench/bench_token_analysis.py                  # A, B, C (124 s on 2 shared cores), then D
    .venv/bin/python bench/bench_token_analysis.py --skip_analysis --swift_map   # C + datasets.map
    .venv/bin/python bench/bench_token_analysis.py --skip_analysis --skip_compare --profile
    .venv/bin/python bench/bench_token_analysis.py --skip_analysis --compare_records 2000 --profile_ours
    .venv/bin/python bench/bench_token_analysis.py --model_path M --synthetic_dir D --repeat 3
    .venv/bin/python bench/bench_token_analysis.py --skip_analysis --skip_compare       # D only (3,000 records)
    .venv/bin/python bench/bench_token_analysis.py --skip_analysis --skip_compare --skip_messages   # E only

Parts (each timed ``--repeat`` times, best reported):
  A  cold analysis   ``scripts/analyze_token_lengths.py`` on the 99,388-record synthetic LVIS-like
                     set (width/height only, ``--check_images false``) in a fresh subprocess with
                     ``--clear_cache`` (counter calibration + counting + simulations + outputs),
                     ``--num_workers`` 1 and 2. Targets: <= 60 s wall, <= 2 GiB peak RSS.
  B  warm analysis   the same command without ``--clear_cache`` right after: the counter and the
                     lengths come from the cache. Target: <= 5 s wall.
  C  ms-swift vs us  the bundled sample's 200 records with real JPEGs, cycled to
                     ``--compare_records``; both start from the same loaded template.
                     ms-swift: ``AddLengthPreprocessor(template).preprocess(row)`` on every row
                     (what ``swift sft`` runs before packing: ``template.encode(row,
                     return_length=True)``, image loaded from disk and processed) - the per-row
                     work only, without the ``datasets.map``/Arrow overhead around it, so the
                     ratio is a lower bound. It runs with torch's default intra-op threads and
                     with one thread (faster when other jobs share the cores); the fastest
                     ms-swift run is compared. ``--swift_map`` adds the full ``datasets.map`` path
                     (``swift sft``'s ``dataset_num_proc 1``: datasets forks one worker).
                     ours: ``counter_from_template`` + ``count_dataset`` with an empty
                     cache (image headers checked). Counts must be equal record by record.
                     Target: ours >= 20x faster.
  D  messages        the bundled messages-format sample (public_data/messages/sample: captions, VQA,
                     grounding, two-image and multi-turn rows, system prompts; 58 real JPEG/PNG
                     images of awkward sizes) cycled to ``--messages_records``; as C: ms-swift's
                     ``AddLengthPreprocessor.preprocess`` per row (torch default threads and 1
                     thread) against ours: ``counter_from_template`` (incl. the chat-layout
                     calibration) + ``count_dataset(record_format="messages")`` with an empty
                     cache (image headers read). Counts equal record by record. Target: >= 20x.

  E  image check     what ``check_images`` costs since it also decodes every image's pixel data
                     once (a corrupt image is a bad record, not an OSError in training): ours,
                     in-process, empty cache, on C's records and on D's, three ways: pixel data
                     decoded (the default), headers only (``check_image_data=False``: the check as
                     it was before), ``check_images false`` (LVIS images untouched; messages
                     headers are still read for their sizes). Counts must be equal.

Memory of a subprocess: "tree RSS" is the peak over time of the summed RSS of the process and
all its descendants (psutil, polled every 20 ms; shared pages count once per process, so it
over-states; a peak shorter than 20 ms can be missed); "max proc RSS" is the kernel's high-water
mark of the largest single process of the tree (``os.wait4`` rusage, exact).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLE_DIR = os.path.join(ROOT, "public_data", "lvis", "sample")
MESSAGES_SAMPLE_DIR = os.path.join(ROOT, "public_data", "messages", "sample")
SYNTHETIC_RECORDS = 99_388
TARGET_COLD_S, TARGET_COLD_GIB, TARGET_WARM_S, TARGET_RATIO = 60.0, 2.0, 5.0, 20.0
GIB = 1 << 30


# ------------------------------------------------------------------------------ subprocess meter
class TreeMeter(threading.Thread):
    """Polls the summed RSS of a process and all its descendants; ``peak`` is the max seen."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, len(procs)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def measured_run(cmd: list[str], log_path: str) -> dict:
    """Run ``cmd`` (stdout+stderr to ``log_path``); wall seconds, peak tree RSS, max single-process RSS."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        meter = TreeMeter(p.pid)
        meter.start()
        # wait4: rusage of this child and its waited-for descendants (pool workers are joined)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        meter.stop()
    text = open(log_path, encoding="utf-8", errors="replace").read()
    if p.returncode != 0:
        raise SystemExit(f"command failed (exit {p.returncode}): {' '.join(cmd)}\n--- last lines of {log_path}:\n"
                         + "\n".join(text.splitlines()[-30:]))
    return {"wall": wall, "tree_rss": meter.peak, "tree_procs": meter.peak_procs,
            "max_proc_rss": usage.ru_maxrss * 1024, "cpu": usage.ru_utime + usage.ru_stime, "log": text}


def phase(log: str, pattern: str) -> float | None:
    m = re.search(pattern, log)
    return float(m.group(1)) if m else None


def file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=12).hexdigest()


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------ inputs
def prepare_inputs(args) -> tuple[str, str]:
    os.makedirs(args.work_dir, exist_ok=True)
    py = sys.executable
    model = args.model_path or os.path.join(args.work_dir, "model")
    if not args.model_path and (args.rebuild or not os.path.exists(os.path.join(model, "config.json"))):
        t0 = time.perf_counter()
        subprocess.run([py, "scripts/make_tiny_model.py", model], cwd=ROOT, check=True, capture_output=True)
        print(f"built tiny model in {time.perf_counter() - t0:.1f}s: {model}")
    syn_dir = args.synthetic_dir or os.path.join(args.work_dir, "synthetic")
    jsonl = os.path.join(syn_dir, "train.jsonl")
    if not args.synthetic_dir and (args.rebuild or not os.path.exists(jsonl)):
        t0 = time.perf_counter()
        subprocess.run([py, "public_data/scripts/make_synthetic_lvis.py", "--out", syn_dir], cwd=ROOT, check=True,
                       capture_output=True)
        print(f"built synthetic set in {time.perf_counter() - t0:.1f}s: {jsonl}")
    with open(jsonl, "rb") as f:
        n = sum(1 for line in f if line.strip())
    if n != SYNTHETIC_RECORDS and not args.synthetic_dir:
        raise SystemExit(f"{jsonl}: {n} records, expected {SYNTHETIC_RECORDS}; rerun with --rebuild")
    print(f"inputs: model {model}; synthetic {jsonl} ({n:,} records, {os.path.getsize(jsonl) / 1e6:.0f} MB)")
    return model, jsonl


def cycled_sample(work_dir: str, n: int, sample_dir: str = SAMPLE_DIR, splits=("train",), tag: str = "sample") -> str:
    """A bundled sample's records (of ``splits``) cycled to ``n`` lines, next to a link to its images folder."""
    out_dir = os.path.join(work_dir, f"{tag}_x{n}")
    os.makedirs(out_dir, exist_ok=True)
    link = os.path.join(out_dir, "images")
    if not os.path.islink(link):
        os.symlink(os.path.join(sample_dir, "images"), link)
    lines = []
    for split in splits:
        with open(os.path.join(sample_dir, f"{split}.jsonl"), "rb") as f:
            lines += [line.rstrip(b"\r\n") + b"\n" for line in f if line.strip()]
    path = os.path.join(out_dir, "train.jsonl")
    with open(path, "wb") as f:
        f.writelines(lines[i % len(lines)] for i in range(n))
    return path


# ------------------------------------------------------------------------------ parts A and B
def analysis_cmd(model: str, jsonl: str, out_dir: str, cache_dir: str, workers: int, cold: bool,
                 profile_to: str | None = None) -> list[str]:
    cmd = [sys.executable]
    if profile_to:
        cmd += ["-m", "cProfile", "-o", profile_to]
    cmd += ["scripts/analyze_token_lengths.py", "--model_path", model, "--train_jsonl", jsonl,
            "--output_dir", out_dir, "--check_images", "false", "--cache_dir", cache_dir,
            "--num_workers", str(workers)]
    return cmd + (["--clear_cache"] if cold else [])


def run_analysis(args, model: str, jsonl: str) -> tuple[list[dict], dict]:
    cache_dir = os.path.join(args.work_dir, "cache")
    runs, hashes = [], {}
    for rep in range(args.repeat):
        for workers in args.workers:
            for cold in (True, False):
                if not cold and workers != args.workers[0]:
                    continue  # the warm run does not depend on --num_workers
                tag = f"{'cold' if cold else 'warm'}_w{workers}_r{rep}"
                out_dir = os.path.join(args.work_dir, "out", tag)
                shutil.rmtree(out_dir, ignore_errors=True)
                load = load_avg()
                r = measured_run(analysis_cmd(model, jsonl, out_dir, cache_dir, workers, cold),
                                 os.path.join(args.work_dir, f"{tag}.log"))
                r.update(kind="cold" if cold else "warm", workers=workers, rep=rep, load=load,
                         calib=phase(r["log"], r"template calibrated in ([\d.]+)s"),
                         count=phase(r["log"], r"counted \d+ records in ([\d.]+)s"),
                         sims=phase(r["log"], r"packing simulations \(\d+\) in ([\d.]+)s"),
                         from_cache="(from cache)" in r["log"])
                if r["from_cache"] == cold:
                    raise SystemExit(f"{tag}: expected {'a rebuild' if cold else 'a cache hit'}; see {tag}.log")
                n = phase(r["log"], r"counted (\d+) records")
                if n != SYNTHETIC_RECORDS and not args.synthetic_dir:
                    raise SystemExit(f"{tag}: counted {n} records, expected {SYNTHETIC_RECORDS}")
                hashes[tag] = file_hash(os.path.join(out_dir, "sample_stats.jsonl"))
                runs.append(r)
                print(f"  {tag}: {r['wall']:.2f}s wall, tree RSS {r['tree_rss'] / GIB:.2f} GiB "
                      f"({r['tree_procs']} procs), max proc RSS {r['max_proc_rss'] / GIB:.2f} GiB "
                      f"[load {load}]", flush=True)
    if len(set(hashes.values())) != 1:
        raise SystemExit(f"sample_stats.jsonl differs between runs: {hashes}")
    print(f"  sample_stats.jsonl identical in all {len(hashes)} runs (cold/warm, workers {args.workers})")
    return runs, hashes


# ------------------------------------------------------------------------------ part C
def compare_with_swift(args, model: str) -> dict:
    from swift.dataset import AddLengthPreprocessor

    from swift_plugins import data
    from swift_plugins.lengths import count_dataset, image_rule
    from swift_plugins.training.calibration import counter_from_template, load_template

    path = cycled_sample(args.work_dir, args.compare_records)
    base_dir = os.path.dirname(path)
    t0 = time.perf_counter()
    template = load_template(model)
    t_template = time.perf_counter() - t0
    records = list(data.iter_records(path))
    rows = [data.to_swift_row(rec, base_dir=base_dir, sample_key=line) for line, rec in records]
    n = len(rows)

    swift_map = None
    if args.swift_map:
        # First, before this process runs any template.encode: datasets.map(num_proc=1) forks a
        # pool, and a fork after torch's intra-op threads have run hangs the child (measured here).
        from datasets import Dataset as HfDataset

        map_times = []
        for rep in range(args.repeat):
            load = load_avg()
            t0 = time.perf_counter()
            ds = AddLengthPreprocessor(template=template)(HfDataset.from_list(rows), num_proc=1,
                                                         load_from_cache_file=False, batch_size=100)
            map_times.append((time.perf_counter() - t0, load))
            mapped = [x[0] for x in ds["lengths"]]
            print(f"  rep {rep}: ms-swift via datasets.map {map_times[-1][0]:.2f}s [load {load}]", flush=True)
        swift_map = (map_times, mapped)

    def swift_lengths():
        pre = AddLengthPreprocessor(template=template)
        return [pre.preprocess(dict(row))["lengths"][0] for row in rows]

    def check_equal(swift_out, ours_out):
        diff = [i for i, (a, b) in enumerate(zip(swift_out, ours_out)) if a != b]
        if len(swift_out) != len(ours_out) or diff:
            raise SystemExit(f"counts differ: {len(swift_out)} vs {len(ours_out)} records; first differing "
                             f"records (0-based) {diff[:10]}")

    def ours_lengths():
        image_rule._resized_size.cache_clear()  # nothing carried over from the previous repeat
        with tempfile.TemporaryDirectory(dir=args.work_dir) as cache:  # empty cache: a real count
            counter = counter_from_template(template)
            res = count_dataset(path, counter, check_images=True, cache_dir=cache)
        assert not res.from_cache
        return res.total_tokens.tolist()

    # torch's intra-op threads (default: one per core) make template.encode 2-4x slower than one
    # thread when other jobs share the cores (measured here), so ms-swift runs both ways and its
    # fastest run is the one compared.
    import torch

    default_threads = torch.get_num_threads()
    thread_settings = sorted({default_threads, 1}, reverse=True)
    swift_times = {t: [] for t in thread_settings}
    ours_times, swift_outs = [], []
    for rep in range(args.repeat):
        for threads in thread_settings:
            torch.set_num_threads(threads)
            load = load_avg()
            t0 = time.perf_counter()
            swift_out = swift_lengths()
            swift_times[threads].append((time.perf_counter() - t0, load))
            torch.set_num_threads(default_threads)
            swift_outs.append(swift_out)
            print(f"  rep {rep}: ms-swift, torch threads {threads}: {swift_times[threads][-1][0]:.2f}s [load {load}]",
                  flush=True)
        load = load_avg()
        t0 = time.perf_counter()
        ours_out = ours_lengths()
        ours_times.append((time.perf_counter() - t0, load))
        print(f"  rep {rep}: ours {ours_times[-1][0]:.3f}s [load {load}]", flush=True)
    for swift_out in swift_outs:
        check_equal(swift_out, ours_out)
    print(f"  counts identical on all {n} records in every run (sum {sum(ours_out):,} tokens)")
    if args.profile_ours:
        prof = cProfile.Profile()
        prof.enable()
        ours_lengths()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        print(f"\ncProfile of ours on the {n} records, top 25 by cumulative time:")
        print("\n".join(buf.getvalue().splitlines()[:45]))
    result = {"n": n, "template_s": t_template, "swift": swift_times, "ours": ours_times,
              "total_tokens": sum(ours_out)}
    if swift_map is not None:
        if swift_map[1] != ours_out:
            raise SystemExit("ms-swift datasets.map lengths differ from ours")
        print("  datasets.map counts identical too")
        result["swift_map"] = min(swift_map[0])

    return result


# ------------------------------------------------------------------------------ part E
def image_check_cost(args, model: str) -> list[str]:
    """Part E: count_dataset with the pixel-data check, headers only, and check_images false (see docstring)."""
    from swift_plugins.data import ConversationOptions
    from swift_plugins.lengths import count_dataset, image_rule
    from swift_plugins.training.calibration import load_counter

    counter = load_counter(model, user_texts=("<image>" + ConversationOptions().resolved_prompt,),
                           cache_dir=os.path.join(args.work_dir, "cache"))
    sets = [("C: LVIS records, JPEG", cycled_sample(args.work_dir, args.compare_records)),
            ("D: messages rows, JPEG + PNG", cycled_sample(args.work_dir, args.messages_records, MESSAGES_SAMPLE_DIR,
                                                           ("train", "val"), "messages"))]
    ways = {"pixel data decoded (default)": dict(check_images=True, check_image_data=True),
            "headers only (--check_image_data false)": dict(check_images=True, check_image_data=False),
            "--check_images false": dict(check_images=False)}
    lines = ["", f"E: the image check's cost (ours in-process, empty cache, best of {args.repeat})", "",
             "| records | check | seconds | x headers only |", "|---|---|---:|---:|"]
    for label, path in sets:
        times, counts = {}, []
        for rep in range(args.repeat):
            for way, kw in ways.items():
                image_rule._resized_size.cache_clear()
                with tempfile.TemporaryDirectory(dir=args.work_dir) as cache:
                    t0 = time.perf_counter()
                    res = count_dataset(path, counter, cache_dir=cache, **kw)
                    times[way] = min(times.get(way, 1e9), time.perf_counter() - t0)
                counts.append(res.total_tokens.tolist())
        if any(c != counts[0] for c in counts):
            raise SystemExit(f"E: counts differ between the checks on {path}")
        base = times["headers only (--check_image_data false)"]
        lines += [f"| {label}, {len(counts[0]):,} | {way} | {times[way]:.3f} | {times[way] / base:.2f} |"
                  for way in ways]
        print(f"  {label}: " + ", ".join(f"{w} {t:.3f}s" for w, t in times.items()) + f" [load {load_avg()}]",
              flush=True)
    return lines


# ------------------------------------------------------------------------------ part D
def compare_messages_with_swift(args, model: str) -> dict:
    """Part D: the messages sample cycled to ``--messages_records``; ms-swift per row vs ours."""
    import torch
    from swift.dataset import AddLengthPreprocessor

    from swift_plugins import data
    from swift_plugins.lengths import count_dataset, image_rule
    from swift_plugins.training.calibration import counter_from_template, load_template

    path = cycled_sample(args.work_dir, args.messages_records, MESSAGES_SAMPLE_DIR, ("train", "val"), "messages")
    base_dir = os.path.dirname(path)
    t0 = time.perf_counter()
    template = load_template(model)
    t_template = time.perf_counter() - t0
    records = [r for _, r in data.iter_records(path, record_format="messages")]
    rows = [data.messages_to_swift_row(r, base_dir=base_dir) for r in records]
    n, n_images = len(rows), sum(len(r["images"]) for r in rows)
    n_turns = sum(sum(m["role"] == "assistant" for m in r["messages"]) for r in rows)

    def swift_lengths():
        pre = AddLengthPreprocessor(template=template)
        return [pre.preprocess(dict(row))["lengths"][0] for row in rows]

    def ours_lengths():
        image_rule._resized_size.cache_clear()  # nothing carried over from the previous repeat
        with tempfile.TemporaryDirectory(dir=args.work_dir) as cache:  # empty cache: a real count
            counter = counter_from_template(template)  # includes the chat-layout calibration
            res = count_dataset(path, counter, check_images=True, cache_dir=cache, record_format="messages")
        assert not res.from_cache and int(res.kind.min()) == 1
        return res.total_tokens.tolist()

    default_threads = torch.get_num_threads()
    thread_settings = sorted({default_threads, 1}, reverse=True)
    swift_times = {t: [] for t in thread_settings}
    ours_times, swift_outs = [], []
    for rep in range(args.repeat):
        for threads in thread_settings:
            torch.set_num_threads(threads)
            load = load_avg()
            t0 = time.perf_counter()
            swift_outs.append(swift_lengths())
            swift_times[threads].append((time.perf_counter() - t0, load))
            torch.set_num_threads(default_threads)
            print(f"  rep {rep}: ms-swift, torch threads {threads}: {swift_times[threads][-1][0]:.2f}s [load {load}]",
                  flush=True)
        load = load_avg()
        t0 = time.perf_counter()
        ours_out = ours_lengths()
        ours_times.append((time.perf_counter() - t0, load))
        print(f"  rep {rep}: ours {ours_times[-1][0]:.3f}s [load {load}]", flush=True)
    for swift_out in swift_outs:
        if swift_out != ours_out:
            diff = [i for i, (a, b) in enumerate(zip(swift_out, ours_out)) if a != b]
            raise SystemExit(f"messages counts differ on records (0-based) {diff[:10]}")
    print(f"  counts identical on all {n} messages records in every run (sum {sum(ours_out):,} tokens)")
    return {"n": n, "images": n_images, "turns": n_turns, "template_s": t_template, "swift": swift_times,
            "ours": ours_times, "total_tokens": sum(ours_out)}


# ------------------------------------------------------------------------------ report
def best(runs: list[dict], **match) -> dict:
    sel = [r for r in runs if all(r[k] == v for k, v in match.items())]
    return min(sel, key=lambda r: r["wall"])


def report(args, runs: list[dict], cmp: dict | None, msg_cmp: dict | None = None) -> list[str]:
    lines, verdicts = [], {}
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    if runs:
        lines += analysis_table(args, runs, verdicts, met)
    if cmp:
        lines += compare_table(args, cmp, verdicts, met)
    if msg_cmp:
        lines += compare_table(args, msg_cmp, verdicts, met, messages=True)
    if verdicts:
        lines.append("")
        lines.append("Targets: " + ", ".join(f"{k} {met(v)}" for k, v in verdicts.items()))
    return lines


def analysis_table(args, runs: list[dict], verdicts: dict, met) -> list[str]:
    lines = []
    lines.append(f"#### Full analysis, {SYNTHETIC_RECORDS:,} synthetic records (best of {args.repeat}; "
                 "all runs listed in the log)")
    lines.append("")
    lines.append("| run | wall s | calibration s | counting s | simulations s | peak tree RSS GiB | "
                 "max proc RSS GiB | CPU s | load avg (1/5/15 min) at start | target |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for kind, workers in [("cold", w) for w in args.workers] + [("warm", args.workers[0])]:
        r = best(runs, kind=kind, workers=workers)
        peak_tree = max(x["tree_rss"] for x in runs if x["kind"] == kind and x["workers"] == workers)
        peak_proc = max(x["max_proc_rss"] for x in runs if x["kind"] == kind and x["workers"] == workers)
        if kind == "cold":
            ok = r["wall"] <= TARGET_COLD_S and peak_tree <= TARGET_COLD_GIB * GIB
            target = f"<= {TARGET_COLD_S:g} s, <= {TARGET_COLD_GIB:g} GiB: {met(ok)}"
        else:
            ok = r["wall"] <= TARGET_WARM_S
            target = f"<= {TARGET_WARM_S:g} s: {met(ok)}"
        verdicts[f"{kind} w{workers}"] = ok
        name = f"{kind} (--clear_cache), --num_workers {workers}" if kind == "cold" else \
            "warm (cache hit), --num_workers 1"
        lines.append(f"| {name} | {r['wall']:.2f} | {fmt(r['calib'])} | {fmt(r['count'])} | {fmt(r['sims'])} | "
                     f"{peak_tree / GIB:.2f} | {peak_proc / GIB:.2f} | {r['cpu']:.1f} | {r['load']} | {target} |")
    lines.append("")
    lines.append("Peak RSS columns are the maximum over all repeats; wall, phases and CPU are from the fastest "
                 "repeat. Phases are the tool's own log lines (rounded to 0.1 s).")
    return lines


def compare_table(args, cmp: dict, verdicts: dict, met, messages: bool = False) -> list[str]:
    lines = []
    o_best = min(cmp["ours"])
    s_rows = {t: min(v) for t, v in cmp["swift"].items()}
    s_best = min(s_rows.values())
    ratio = s_best[0] / o_best[0]
    verdict = "messages ratio" if messages else "ratio"
    verdicts[verdict] = ratio >= TARGET_RATIO
    n = cmp["n"]
    lines.append("")
    if messages:
        lines.append(f"#### ms-swift lengths vs ours, {n:,} messages records ({cmp['images']:,} real JPEG/PNG images, "
                     f"{cmp['turns']:,} assistant turns; bundled messages sample cycled; best of {args.repeat}; "
                     "counts identical record by record)")
    else:
        lines.append(f"#### ms-swift lengths vs ours, {n:,} records with real JPEGs (bundled sample cycled; "
                     f"best of {args.repeat}; counts identical record by record)")
    lines.append("")
    lines.append("| method | seconds | ms / record | time / ours | load avg at start |")
    lines.append("|---|---:|---:|---:|---|")
    for threads, (sec, load) in s_rows.items():
        lines.append(f"| ms-swift 4.6 AddLengthPreprocessor.preprocess per row (template.encode, image decoded), "
                     f"torch threads {threads} | {sec:.2f} | {1000 * sec / n:.2f} | {sec / o_best[0]:.1f} | {load} |")
    if "swift_map" in cmp:
        m = cmp["swift_map"]
        lines.append(f"| ms-swift 4.6 AddLengthPreprocessor via datasets.map (num_proc 1: one forked worker) | "
                     f"{m[0]:.2f} | {1000 * m[0] / n:.2f} | {m[0] / o_best[0]:.1f} | {m[1]} |")
    ours = ("counter_from_template (chat layout calibrated) + count_dataset(record_format messages), empty cache, "
            "image headers read") if messages else "counter_from_template + count_dataset, empty cache, image headers checked"
    lines.append(f"| ours: {ours} | {o_best[0]:.3f} | {1000 * o_best[0] / n:.3f} | 1.0 | {o_best[1]} |")
    lines.append("")
    lines.append("All runs (s): " + "; ".join(
        [f"ms-swift threads {t}: " + " / ".join(f"{x[0]:.2f}" for x in v) for t, v in cmp["swift"].items()]
        + ["ours: " + " / ".join(f"{x[0]:.3f}" for x in cmp["ours"])]) + ".")
    lines.append(f"Both start from the same loaded template (load_template: {cmp['template_s']:.1f} s, not counted). "
                 f"Speed-up against ms-swift's fastest run: {ratio:.2f}x, target >= {TARGET_RATIO:g}x: "
                 f"{met(verdicts[verdict])}.")
    return lines


def run_profile(args, model: str, jsonl: str) -> None:
    """cProfile of one cold run (1 worker): where the time goes."""
    prof = os.path.join(args.work_dir, "cold_w1.prof")
    out_dir = os.path.join(args.work_dir, "out", "profile")
    shutil.rmtree(out_dir, ignore_errors=True)
    r = measured_run(analysis_cmd(model, jsonl, out_dir, os.path.join(args.work_dir, "cache"), 1, True, prof),
                     os.path.join(args.work_dir, "profile.log"))
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    print(f"\ncProfile of a cold run, 1 worker ({r['wall']:.1f}s wall under the profiler), top 30 by cumulative "
          f"time (full profile: {prof}):")
    print("\n".join(buf.getvalue().splitlines()[:60]))
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    print("top 15 by own time:")
    print("\n".join(buf.getvalue().splitlines()[:40]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work_dir", default=os.path.join(ROOT, ".cache", "bench_token_analysis"),
                    help="tiny model, synthetic set, caches, logs (model and set are reused when present)")
    ap.add_argument("--model_path", help="existing tiny model folder (default: build into --work_dir)")
    ap.add_argument("--synthetic_dir", help="existing folder with the synthetic train.jsonl (default: build)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the tiny model and synthetic set in --work_dir")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of every timed part (best is reported)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--num_workers values of the cold runs")
    ap.add_argument("--compare_records", type=int, default=1000,
                    help="records for the ms-swift comparison (the bundled 200 cycled)")
    ap.add_argument("--skip_analysis", action="store_true", help="skip parts A and B")
    ap.add_argument("--skip_compare", action="store_true", help="skip part C (no ms-swift import in this process)")
    ap.add_argument("--messages_records", type=int, default=3000,
                    help="records for part D (the bundled messages sample's 50 rows cycled)")
    ap.add_argument("--skip_messages", action="store_true", help="skip part D (messages records vs ms-swift)")
    ap.add_argument("--skip_image_check", action="store_true", help="skip part E (the image check's cost)")
    ap.add_argument("--swift_map", action="store_true",
                    help="also time ms-swift's full AddLengthPreprocessor datasets.map path once")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile one cold analysis run (1 worker) and print the top functions")
    ap.add_argument("--profile_ours", action="store_true",
                    help="cProfile our count in part C once (after the timed runs) and print the top functions")
    args = ap.parse_args(argv)
    args.work_dir = os.path.abspath(args.work_dir)

    t_all = time.perf_counter()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / GIB:.1f} GiB RAM, "
          f"Python {sys.version.split()[0]}; load avg at start {load_avg()}")
    model, jsonl = prepare_inputs(args)

    runs = []
    if not args.skip_analysis:
        print(f"A/B: analysis in fresh subprocesses (cold --clear_cache, workers {args.workers}; warm), "
              f"{args.repeat} repeats")
        runs, _ = run_analysis(args, model, jsonl)
    cmp = None
    if not args.skip_compare:
        print(f"C: ms-swift AddLengthPreprocessor vs ours on {args.compare_records} records with real images, "
              f"{args.repeat} repeats")
        cmp = compare_with_swift(args, model)
    msg_cmp = None
    if not args.skip_messages:
        print(f"D: ms-swift AddLengthPreprocessor vs ours on {args.messages_records} messages records with real "
              f"images, {args.repeat} repeats")
        msg_cmp = compare_messages_with_swift(args, model)
    image_check = []
    if not args.skip_image_check:
        print(f"E: the image check's cost, {args.repeat} repeats")
        image_check = image_check_cost(args, model)
    if args.profile:
        run_profile(args, model, jsonl)
    print()
    print("\n".join(report(args, runs, cmp, msg_cmp) + image_check))
    print(f"\nbench total {time.perf_counter() - t_all:.0f}s; load avg at end {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
