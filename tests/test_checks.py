"""swift_plugins.checks: each up-front check's exact sentence on hand-made paths, numbers and environments."""
from __future__ import annotations

import json
import os

import pytest

from swift_plugins import checks
from swift_plugins.errors import UserError


def test_env_problems_name_each_bad_override_and_pass_good_or_empty_ones():
    env = {"MAX_PIXELS": "abc", "MIN_PIXELS": "3136", "IMAGE_MAX_TOKEN_NUM": "0", "IMAGE_FACTOR": "",
           "SPATIAL_MERGE_SIZE": "1.5", "HOME": "/root"}
    assert checks.env_problems(env) == [
        "environment: MAX_PIXELS: expected a positive integer, got 'abc' (unset it or give e.g. MAX_PIXELS=1003520)",
        "environment: IMAGE_MAX_TOKEN_NUM: expected a positive integer, got '0' (unset it or give e.g. "
        "IMAGE_MAX_TOKEN_NUM=1280)",
        "environment: SPATIAL_MERGE_SIZE: expected a positive integer, got '1.5' (unset it or give e.g. "
        "SPATIAL_MERGE_SIZE=2)"]
    assert checks.env_problems({"MAX_PIXELS": "1003520"}) == []


@pytest.mark.parametrize("kw, value, expected", [
    ({"minimum": 1}, 0, "--n: must be at least 1, got 0"),
    ({"minimum": 1}, 1, None),
    ({"minimum": 0, "maximum": 1}, 1.5, "--n: must be at most 1, got 1.5"),
    ({"above": 0}, 0.0, "--n: must be above 0, got 0.0"),
    ({"minimum": 0, "below": 1}, 1.0, "--n: must be below 1, got 1.0"),
    ({"minimum": 1}, None, None),
])
def test_number_problem_bounds(kw, value, expected):
    assert checks.number_problem("--n", value, **kw) == expected


def test_model_dir_needs_the_folder_and_its_config_json(tmp_path):
    assert "no such directory" in checks.model_dir_problem("--model_path", str(tmp_path / "nope"))
    assert checks.model_dir_problem("--model_path", str(tmp_path)) == (
        f"--model_path: {tmp_path}: no config.json in the folder (give the checkpoint folder itself, the one with "
        f"config.json, tokenizer.json and preprocessor_config.json)")
    (tmp_path / "config.json").write_text("{}")
    assert checks.model_dir_problem("--model_path", str(tmp_path)) is None


def test_model_context_length_reads_text_config_first(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096},
                                                      "max_position_embeddings": 99}))
    assert checks.model_context_length(str(tmp_path)) == 4096
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    assert checks.model_context_length(str(tmp_path)) == 2048
    (tmp_path / "config.json").write_text("{}")
    assert checks.model_context_length(str(tmp_path)) is None
    assert checks.model_context_length(str(tmp_path / "absent")) is None


def test_writable_dir_names_a_file_in_the_way_and_an_unwritable_place(tmp_path):
    (tmp_path / "f").write_text("x")
    assert checks.writable_dir_problem("--output_dir", str(tmp_path / "f")) == \
        f"--output_dir: {tmp_path / 'f'} is a file, not a folder (give a folder path)"
    assert checks.writable_dir_problem("--output_dir", str(tmp_path / "f" / "sub")) == \
        f"--output_dir: {tmp_path / 'f' / 'sub'} (its parent {tmp_path / 'f'}) is a file, not a folder (give a folder path)"
    assert checks.writable_dir_problem("--output_dir", "/sys/swiftpack-edge-check").startswith(
        "--output_dir: /sys/swiftpack-edge-check: cannot write there (")
    assert checks.writable_dir_problem("--output_dir", str(tmp_path / "new" / "out")) is None
    assert (tmp_path / "new" / "out").is_dir() and os.listdir(tmp_path / "new" / "out") == []  # the probe is gone
    assert checks.writable_dir_problem("--x", str(tmp_path / "later"), create=False) is None
    assert not (tmp_path / "later").exists()
    assert checks.writable_file_problem("--output", str(tmp_path)) == f"--output: {tmp_path} is a folder (give a file path)"


def test_jsonl_problems_missing_empty_blank_and_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    assert checks.jsonl_problems("--train_jsonl", ["a.jsonl"]) == []
    assert checks.jsonl_problems("--train_jsonl", ["a.jsonl", "./a.jsonl", "empty.jsonl", "blank.jsonl", "no.jsonl"]) == [
        "--train_jsonl: ./a.jsonl is listed twice (also as a.jsonl); give each file once (it would be counted and "
        "trained twice)",
        "--train_jsonl: empty.jsonl: empty (no record, only blank lines or nothing); give a JSONL with one record per line",
        "--train_jsonl: blank.jsonl: empty (no record, only blank lines or nothing); give a JSONL with one record per line",
        f"--train_jsonl: no.jsonl: no such file (paths are relative to the working directory {tmp_path})"]


def test_raise_problems_one_line_each_and_nothing_when_all_pass():
    checks.raise_problems([None, "", False])
    with pytest.raises(UserError) as info:
        checks.raise_problems(["a: b", None, "c: d"])
    assert str(info.value) == "a: b\nc: d"
