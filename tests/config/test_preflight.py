"""swift_plugins.config.preflight: what a run's paths hold, and the environment, each at its key's file:line."""
from __future__ import annotations

import json

from swift_plugins.config import resolve_config
from swift_plugins.config.preflight import preview_issues, run_issues

CONFIG = """
model:
  model: m
training:
  effective_batch_size: 8
  packing: true
  global_max_length: 8192
  output_dir: out
custom:
  train_jsonl: [a.jsonl, ./a.jsonl]
  val_jsonl: empty.jsonl
"""


def test_preview_issues_environment_and_export_target(tmp_path):
    assert [str(i) for i in preview_issues({"MAX_PIXELS": "12x", "IMAGE_MAX_TOKEN_NUM": "1280"}, str(tmp_path))] == [
        "environment: MAX_PIXELS: expected a positive integer, got '12x' (unset it or give e.g. MAX_PIXELS=1003520)",
        f"command line: --export_flat: {tmp_path} is a folder (give a file path)"]
    assert preview_issues({}, str(tmp_path / "flat.yaml")) == []


def test_run_issues_model_data_context_and_output(cfg, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "out").write_text("a file")
    name = cfg("c.yaml", CONFIG, base=False)
    issues = [str(i) for i in run_issues(resolve_config(name))]
    assert issues == [
        "c.yaml:3: model.model: m: no config.json in the folder (give the checkpoint folder itself, the one with "
        "config.json, tokenizer.json and preprocessor_config.json)",
        "c.yaml:10: custom.train_jsonl: ./a.jsonl is listed twice (also as a.jsonl); give each file once (it would be "
        "counted and trained twice)",
        "c.yaml:11: custom.val_jsonl: empty.jsonl: empty (no record, only blank lines or nothing); give a JSONL with "
        "one record per line",
        "c.yaml:8: training.output_dir: out is a file, not a folder (give a folder path)"]
    (tmp_path / "m" / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    issues = [str(i) for i in run_issues(resolve_config(name, [("custom.train_jsonl", ("a.jsonl",)),
                                                              ("custom.val_jsonl", ("a.jsonl",)),
                                                              ("training.output_dir", ("run",))]))]
    assert issues == ["c.yaml:7: training.global_max_length: 8192 is above the model's context "
                      "(max_position_embeddings 4096 in m/config.json); give at most 4096"]
    assert run_issues(resolve_config(name, [("custom.train_jsonl", ("a.jsonl",)), ("custom.val_jsonl", ("a.jsonl",)),
                                            ("training.output_dir", ("run",)),
                                            ("training.global_max_length", ("4096",))])) == []
    assert (tmp_path / "run").is_dir()  # a run's folders are made (and probed) up front
