"""Every command a user runs turns a user error into one line, ``error: place: field: what (fix)``, and
exit status 2, with no traceback; the scripts are thin wrappers of the package's ``main``."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

from helpers import GOOD, make_lvis_jsonl, run

REPO = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable


def user_error(cmd, env):
    code, out = run(cmd, env, timeout=300)
    assert code == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert lines, out[-3000:]
    return lines


@pytest.mark.parametrize("script", sorted(str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*.py")
                                          if p.name != "torchvision_cpu_guard.py")
                         + sorted(str(p.relative_to(REPO)) for p in (REPO / "public_data" / "scripts").glob("*.py")))
def test_scripts_are_thin_wrappers_of_a_main(script):
    text = (REPO / script).read_text()
    assert len(text.splitlines()) <= 12 and "sys.exit(main" in text, script


def test_analysis_reports_a_bad_record_a_missing_model_and_a_missing_file(tiny_model_dir, tmp_path, subprocess_env):
    from swift_plugins.analyze import main

    data = make_lvis_jsonl(tmp_path, 2)
    base = [PY, "scripts/analyze_token_lengths.py", "--output_dir", str(tmp_path / "out"), "--cache_dir",
            str(tmp_path / "cache"), "--max_lengths", "4000"]
    # the good file first, in this process: the child reads the calibration from the cache (no ms-swift
    # import, ~10 s less) and reaches the bad record through the same counting code
    assert main(base[2:] + ["--model_path", str(tiny_model_dir), "--train_jsonl", str(data)]) == 0
    with open(data, "a") as f:
        f.write(json.dumps({**GOOD, "width": 0}) + "\n")
    assert user_error(base + ["--model_path", str(tiny_model_dir), "--train_jsonl", str(data)], subprocess_env) == [
        f"error: {data}:3: width: expected a positive integer, got 0 (write the stored image's width in pixels as "
        f"an integer)"]
    assert user_error(base + ["--model_path", str(tmp_path / "nope"), "--train_jsonl", str(data)],
                      subprocess_env) == [
        f"error: --model_path: {tmp_path / 'nope'}: no such directory (give a local model folder with config.json, "
        f"tokenizer.json and preprocessor_config.json; paths are relative to {REPO})"]
    assert user_error(base + ["--model_path", str(tiny_model_dir), "--train_jsonl", str(tmp_path / "no.jsonl")],
                      subprocess_env) == [
        f"error: --train_jsonl: {tmp_path / 'no.jsonl'}: no such file (paths are relative to the working directory "
        f"{REPO})"]


def test_report_and_migration_name_the_missing_analysis(tmp_path, subprocess_env):
    assert user_error([PY, "scripts/visualize_packing_results.py", "--input_dir", str(tmp_path)], subprocess_env) == [
        f"error: {tmp_path}: missing dataset_stats.json, sample_stats.jsonl, packing_simulations.json, "
        f"recommendations.json; run scripts/analyze_token_lengths.py --output_dir DIR first"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: nope.yaml\n")
    assert user_error([PY, "scripts/migrate_to_packing.py", "--padding_config", str(bad), "--analysis_dir",
                       str(tmp_path)], subprocess_env) == [
        f"error: {tmp_path}: missing dataset_stats.json, sample_stats.jsonl, packing_simulations.json, "
        f"recommendations.json; run scripts/analyze_token_lengths.py --output_dir DIR first"]


def test_converter_names_the_missing_input(tmp_path, subprocess_env):
    assert user_error([PY, "public_data/scripts/convert_lvis.py", "--instances", str(tmp_path / "i.json"),
                       "--image_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")], subprocess_env) == [
        f"error: --instances: {tmp_path / 'i.json'}: no such file (paths are relative to the working directory "
        f"{REPO})"]


def test_entry_point_reports_every_config_problem_one_per_line(tmp_path, subprocess_env):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("extends: " + str(REPO / "configs/tiny/sft_padding.yaml") + "\ntraining:\n  learnng_rate: 1\n"
                   "  packing_strategy: bdf\n")
    assert user_error([PY, "-m", "swift_plugins.sft", "--config", str(cfg)], subprocess_env) == [
        f"error: {cfg}:3: training.learnng_rate: unknown key (did you mean 'learning_rate'?)",
        f"error: {cfg}:4: training.packing_strategy: 'bdf' is not one of 'ffd', 'bfd', 'greedy', 'next_fit', "
        f"'random' (did you mean 'bfd'?)"]


def test_entry_point_reports_a_bad_record_found_while_loading(tiny_model_dir, tmp_path, subprocess_env):
    data = make_lvis_jsonl(tmp_path, 2)
    with open(data, "a") as f:
        f.write("{not json\n")
    lines = user_error([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml", "--model.model",
                        str(tiny_model_dir), "--custom.train_jsonl", str(data), "--custom.val_jsonl", "null",
                        "--training.output_dir", str(tmp_path / "out")], subprocess_env)
    assert lines == [f"error: {data}:3: <json>: invalid JSON: Expecting property name enclosed in double quotes at "
                     f"column 2 (write exactly one JSON object per line)"]
