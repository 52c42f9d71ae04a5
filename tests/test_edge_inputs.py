"""Edge inputs across the commands: each refused with exit status 2 and exactly one ``error:`` line naming
its cause, no traceback, and nothing left that looks complete; Ctrl-C ends with one line and 130.

The commands run in-process through their ``main(argv)`` (the same ``run_main`` wrapper the scripts
use); one subprocess checks the script's real exit status, one a real SIGINT to a real analysis.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO, make_lvis_jsonl, save_corrupt_png
from swift_plugins import sft
from swift_plugins import analyze as analysis_command
from swift_plugins.analysis import migrate, report
from swift_plugins.analysis.folder import MANIFEST

PY = sys.executable
TINY_PADDING = str(REPO / "configs/tiny/sft_padding.yaml")
TINY_PACKING = str(REPO / "configs/tiny/sft_packing.yaml")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, sample_analysis, tiny_model_dir):
    """Inputs shared by the cases (none of them is written by a case)."""
    d = tmp_path_factory.mktemp("edges")
    (d / "model").mkdir()  # config.json only: enough for every up-front check
    (d / "model" / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    (d / "no_config").mkdir()
    data = make_lvis_jsonl(d / "data", 2)
    bad_image = d / "data" / "bad.jsonl"
    save_corrupt_png(d / "data" / "bad.png", (96, 96))
    record = json.loads(data.read_text().splitlines()[0])
    bad_image.write_text(data.read_text() + json.dumps({**record, "images": ["bad.png"]}) + "\n")
    all_bad = d / "data" / "all_bad.jsonl"
    all_bad.write_text(json.dumps({**record, "width": 0}) + "\n" + json.dumps({**record, "objects": []}) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n   \n")
    (d / "a_file").write_text("not a folder")
    (d / "dup.yaml").write_text(f"extends: {TINY_PADDING}\ntraining:\n  learning_rate: 1.0e-4\n"
                                f"  learning_rate: 2.0e-4\n")
    mixed = d / "mixed"  # a complete analysis whose sample_stats.jsonl came from another run
    shutil.copytree(sample_analysis, mixed, ignore=shutil.ignore_patterns("cache"))
    with open(mixed / "sample_stats.jsonl", "a") as f:
        f.write(json.dumps({"file": 0, "line": 999, "text_tokens": 1, "image_tokens": 1, "total_tokens": 2}) + "\n")
    stale = d / "stale"  # the files of an analysis without its manifest (an older or interrupted run)
    shutil.copytree(sample_analysis, stale, ignore=shutil.ignore_patterns("cache", MANIFEST))
    cache = d / "cache"  # the session analysis' calibration, not its folder: cases may write lengths here
    cache.mkdir()
    for counter_file in (sample_analysis / "cache").glob("counter-*.json"):
        shutil.copy(counter_file, cache)
    return SimpleNamespace(d=d, model=d / "model", no_config=d / "no_config", tiny=tiny_model_dir, data=data,
                           bad_image=bad_image, all_bad=all_bad, empty=d / "empty.jsonl", blank=d / "blank.jsonl",
                           file=d / "a_file", dup=d / "dup.yaml", mixed=mixed, stale=stale,
                           good=sample_analysis, cache=cache)


def analyze(c, out, *extra, model=None, data=None):
    return ["--model_path", str(model or c.model), "--train_jsonl", str(data or c.data), "--output_dir", str(out),
            "--cache_dir", str(c.cache), "--max_lengths", "4000", *map(str, extra)]


def run_sft(c, out, *extra, config=TINY_PADDING, model=None, data=None):
    return ["--config", str(config), "--model.model", str(model or c.model), "--custom.train_jsonl",
            *map(str, data or [c.data]), "--custom.val_jsonl", str(c.data), "--training.output_dir", str(out),
            *map(str, extra)]


# (id, command, argv(ctx, out), environment, the cause the one error line must contain)
CASES = [
    ("analysis: empty input", analysis_command, lambda c, o: analyze(c, o, data=c.empty), {},
     "empty.jsonl: empty (no record"),
    ("analysis: blank-only input", analysis_command, lambda c, o: analyze(c, o, data=c.blank), {},
     "blank.jsonl: empty (no record"),
    ("analysis: a file listed twice", analysis_command,
     lambda c, o: analyze(c, o) + ["--train_jsonl", str(c.data), os.path.relpath(c.data)], {}, "is listed twice"),
    ("analysis: model folder without config.json", analysis_command, lambda c, o: analyze(c, o, model=c.no_config), {},
     "no config.json in the folder"),
    ("analysis: output folder is a file", analysis_command, lambda c, o: analyze(c, c.file), {},
     "--output_dir: " + "{file} is a file, not a folder"),
    ("analysis: output folder not writable", analysis_command, lambda c, o: analyze(c, "/sys/swiftpack-edge"), {},
     "--output_dir: /sys/swiftpack-edge: cannot write there"),
    ("analysis: cache folder is a file", analysis_command, lambda c, o: analyze(c, o) + ["--cache_dir", str(c.file)],
     {}, "--cache_dir: {file} is a file"),
    ("analysis: --num_workers 0", analysis_command, lambda c, o: analyze(c, o, "--num_workers", 0), {},
     "--num_workers: must be at least 1, got 0"),
    ("analysis: --memory_headroom 1", analysis_command, lambda c, o: analyze(c, o, "--memory_headroom", 1), {},
     "--memory_headroom: must be below 1, got 1.0"),
    ("analysis: --num_workers not a number", analysis_command, lambda c, o: analyze(c, o, "--num_workers", "two"), {},
     "argument --num_workers: invalid int value: 'two'"),
    ("analysis: a length above the model's context", analysis_command,
     lambda c, o: analyze(c, o) + ["--max_lengths", "4000,8192"], {},
     "--max_lengths: 8192 is above the model's context (max_position_embeddings 4096"),
    ("analysis: MAX_PIXELS not an integer", analysis_command, analyze, {"MAX_PIXELS": "1e6"},
     "environment: MAX_PIXELS: expected a positive integer, got '1e6'"),
    ("analysis: IMAGE_MAX_TOKEN_NUM negative", analysis_command, analyze, {"IMAGE_MAX_TOKEN_NUM": "-3"},
     "environment: IMAGE_MAX_TOKEN_NUM: expected a positive integer"),
    ("analysis: undecodable image under raise", analysis_command,
     lambda c, o: analyze(c, o, model=c.tiny, data=c.bad_image), {},
     "bad.jsonl:3: images[0]: the pixel data of"),
    ("analysis: every record skipped", analysis_command,
     lambda c, o: analyze(c, o, "--on_error", "skip", model=c.tiny, data=c.all_bad), {},
     "nothing to analyse: all 2 record(s) were skipped (first: "),
    ("visualizer: files of no complete analysis", report, lambda c, o: ["--input_dir", str(c.stale)], {},
     "analysis_manifest.json missing: these files are not one complete analysis"),
    ("visualizer: two analyses mixed", report, lambda c, o: ["--input_dir", str(c.mixed), "--output_dir", str(o)], {},
     "sample_stats.jsonl: changed since analysis run"),
    ("visualizer: --world_size 0", report, lambda c, o: ["--input_dir", str(c.good), "--world_size", "0",
                                                         "--output_dir", str(o)], {}, "--world_size: must be at least 1"),
    ("visualizer: output folder is a file", report, lambda c, o: ["--input_dir", str(c.good), "--output_dir",
                                                                   str(c.file)], {}, "{file} is a file, not a folder"),
    ("visualizer: model folder without config.json", report,
     lambda c, o: ["--input_dir", str(c.good), "--output_dir", str(o), "--model_path", str(c.no_config)], {},
     "--model_path: {no_config}: no config.json"),
    ("migration: two analyses mixed", migrate,
     lambda c, o: ["--padding_config", TINY_PADDING, "--analysis_dir", str(c.mixed), "--output", str(o / "p.yaml")],
     {}, "sample_stats.jsonl: changed since analysis run"),
    ("migration: output is a folder", migrate,
     lambda c, o: ["--padding_config", TINY_PADDING, "--analysis_dir", str(c.good), "--output", str(c.d)], {},
     "--output: {d} is a folder"),
    ("migration: --packing_min_fill_ratio 2", migrate,
     lambda c, o: ["--padding_config", TINY_PADDING, "--analysis_dir", str(c.good), "--output", str(o / "p.yaml"),
                   "--packing_min_fill_ratio", "2"], {}, "--packing_min_fill_ratio: must be at most 1, got 2.0"),
    ("sft: duplicate YAML key", sft, lambda c, o: ["--config", str(c.dup), "--print_config"], {},
     "dup.yaml:4: training.learning_rate: duplicate key (also at line 3)"),
    ("sft: --print_config with a bad MAX_PIXELS", sft, lambda c, o: ["--config", TINY_PADDING, "--print_config"],
     {"MAX_PIXELS": "abc"}, "environment: MAX_PIXELS: expected a positive integer, got 'abc'"),
    ("sft: --export_flat into a folder", sft, lambda c, o: ["--config", TINY_PADDING, "--export_flat", str(c.d)], {},
     "command line: --export_flat: {d} is a folder"),
    ("sft: model folder without config.json", sft, lambda c, o: run_sft(c, o, model=c.no_config), {},
     "model.model: {no_config}: no config.json in the folder"),
    ("sft: empty train file", sft, lambda c, o: run_sft(c, o, data=[c.data, c.empty]), {},
     "custom.train_jsonl: {empty}: empty (no record"),
    ("sft: a train file listed twice", sft, lambda c, o: run_sft(c, o, data=[c.data, c.data]), {},
     "custom.train_jsonl: {data} is listed twice"),
    ("sft: global_max_length above the model's context", sft,
     lambda c, o: run_sft(c, o, "--training.global_max_length", "8192", config=TINY_PACKING), {},
     "training.global_max_length: 8192 is above the model's context (max_position_embeddings 4096"),
    ("sft: output folder is a file", sft, lambda c, o: run_sft(c, c.file), {},
     "training.output_dir: {file} is a file, not a folder"),
]


@pytest.mark.parametrize("name, command, argv, env, cause", CASES, ids=[c[0] for c in CASES])
def test_an_edge_input_is_one_error_line_and_exit_2(ctx, tmp_path, monkeypatch, capsys, name, command, argv, env,
                                                     cause):
    monkeypatch.chdir(REPO)  # the shipped configs' relative paths
    for key in ("MAX_PIXELS", "IMAGE_MAX_TOKEN_NUM", "NPROC_PER_NODE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert command.main(argv(ctx, out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert cause.format(**vars(ctx)) in errors[0], errors[0]
    assert "Traceback" not in err
    # nothing left that looks complete: no analysis, figures, config or run folder was made
    assert not out.exists() or sorted(os.listdir(out)) == [], sorted(os.listdir(out))
    assert not (ctx.mixed / "figures").exists() and not (ctx.stale / "figures").exists()


def test_the_script_exits_2_with_one_line(ctx, tmp_path, subprocess_env):
    proc = subprocess.run([PY, "scripts/analyze_token_lengths.py", *analyze(ctx, tmp_path / "out", data=ctx.empty)],
                          cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: --train_jsonl: {ctx.empty}: empty (no record, only blank lines or nothing); give "
                           f"a JSONL with one record per line\n")
    assert not (tmp_path / "out").exists()


def _default_sigint() -> None:
    """In the child before exec: SIGINT's default action, as a shell gives a foreground command. A test run
    started as a background job of a non-interactive shell ignores SIGINT (POSIX), the ignore survives exec,
    and the analysis would then never see this Ctrl-C (exit 0; it happened when CI was started that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_re_analysis_leaves_a_folder_every_reader_refuses(ctx, sample_dir, tmp_path,
                                                                         subprocess_env, capsys):
    """A used folder (analysis + figures + summary), a re-analysis into it, a real Ctrl-C (SIGINT to the
    process group, the pool workers included) while it counts: exit 130, one line, and the folder holds
    no analysis: neither the old one (with the new files) nor the figures made from it."""
    out = tmp_path / "analysis"
    shutil.copytree(ctx.good, out, ignore=shutil.ignore_patterns("cache"))
    assert report.main(["--input_dir", str(out)]) == 0
    assert (out / "figures" / "token_distribution.png").is_file() and (out / "FULL_RESULTS_SUMMARY.md").is_file()
    cache = tmp_path / "cache"
    shutil.copytree(ctx.cache, cache, ignore=shutil.ignore_patterns("lengths-*"))  # the calibration: counting runs
    big = tmp_path / "big.jsonl"
    big.write_text((sample_dir / "train.jsonl").read_text() * 20)  # 4,000 records, width/height only
    proc = subprocess.Popen([PY, "scripts/analyze_token_lengths.py", "--model_path", str(ctx.tiny), "--train_jsonl",
                             str(big), "--output_dir", str(out), "--cache_dir", str(cache), "--check_images", "false",
                             "--num_workers", "2"], cwd=REPO, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        for line in proc.stdout:
            if line.startswith("template calibrated"):  # counting starts now
                break
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "error: interrupted (Ctrl-C): nothing this run was writing is complete; run the command again"]
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == []  # the earlier analysis, its figures and summary went before the work began
    capsys.readouterr()
    assert report.main(["--input_dir", str(out)]) == 2
    assert migrate.main(["--padding_config", TINY_PADDING, "--analysis_dir", str(out), "--output",
                         str(tmp_path / "p.yaml")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: {out}: missing dataset_stats.json, sample_stats.jsonl, packing_simulations.json, "
                      f"recommendations.json; run scripts/analyze_token_lengths.py --output_dir DIR first"] * 2
    assert not (tmp_path / "p.yaml").exists()


def test_a_record_beyond_the_model_context_caps_the_lengths_and_is_listed(ctx, tmp_path, capsys):
    """The correct result instead of a refusal: lengths never above max_position_embeddings, the long row listed."""
    model = tmp_path / "model"
    model.mkdir()
    for f in ctx.tiny.iterdir():
        (model / f.name).symlink_to(f)
    config = json.loads((ctx.tiny / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 1024
    (model / "config.json").unlink()
    (model / "config.json").write_text(json.dumps(config))
    data = tmp_path / "d.jsonl"
    long_row = {"messages": [{"role": "user", "content": "Tell me everything."},
                             {"role": "assistant", "content": " ".join(f"word{i}" for i in range(1500))}]}
    data.write_text(ctx.data.read_text() + json.dumps(long_row) + "\n")
    shutil.copytree(ctx.data.parent, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.jsonl"))
    out = tmp_path / "out"
    argv = analyze(ctx, out, model=model, data=data)
    argv[argv.index("--max_lengths") + 1] = "auto"
    assert analysis_command.main(argv) == 0
    sims = json.loads((out / "packing_simulations.json").read_text())
    rec = json.loads((out / "recommendations.json").read_text())
    total = [json.loads(x)["total_tokens"] for x in (out / "sample_stats.jsonl").read_text().splitlines()]
    assert total[-1] > 1024 and max(total[:-1]) <= 1024
    assert {e["global_max_length"] for e in sims} == {1024}
    assert rec["beyond_context"] == {"max_position_embeddings": 1024, "records": [
        {"jsonl": str(data), "line": 3, "total_tokens": total[-1],
         "reason": "longer than the model's context (max_position_embeddings 1024)"}]}
    assert all(e["records_lost"] == 1 for e in sims if e["buffer_size"] is None)  # the long row, never "0 lost"
    assert "(capped at the model's context 1024)" in capsys.readouterr().out
