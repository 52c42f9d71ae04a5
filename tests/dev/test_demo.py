"""swift_plugins.dev.demo: its commands are ones the real parsers accept, and it counts what the run trained."""
from __future__ import annotations

import json
import sys

import pytest

from swift_plugins.analysis import migrate, report, token_analysis
from swift_plugins.config import parse_cli, resolve_config
from swift_plugins.dev import demo


def by_script(train_steps):
    return {(cmd[1] if cmd[1] != "-m" else cmd[2]): cmd[2:] if cmd[1] != "-m" else cmd[3:]
            for _, cmd in demo.steps("out", train_steps)}


def test_each_step_is_a_command_its_parser_accepts():
    cmds = by_script(0)
    assert list(cmds) == ["scripts/make_tiny_model.py", "scripts/analyze_token_lengths.py",
                          "scripts/visualize_packing_results.py", "scripts/migrate_to_packing.py", "swift_plugins.sft"]
    assert all(cmd[0] == sys.executable for _, cmd in demo.steps("out", 0))
    assert cmds["scripts/make_tiny_model.py"] == [demo.MODEL]
    analysis = token_analysis.options_from_argv(cmds["scripts/analyze_token_lengths.py"])
    assert (analysis.train_jsonl, analysis.model_path, analysis.output_dir) == (demo.TRAIN_JSONL, demo.MODEL,
                                                                               "out/analysis")
    assert report.build_parser().parse_args(cmds["scripts/visualize_packing_results.py"]).config == demo.PADDING_CONFIG
    assert migrate.build_parser().parse_args(cmds["scripts/migrate_to_packing.py"]).output == "out/sft_packed.yaml"
    cli = parse_cli(cmds["swift_plugins.sft"])
    assert cli.config == "out/sft_packed.yaml" and not cli.print_config and cli.export_flat is None


@pytest.mark.parametrize("train_steps, max_steps, save_steps", [(0, "null", "100000"), (3, "3", "3")])
def test_train_steps_zero_trains_the_whole_epoch(train_steps, max_steps, save_steps):
    overrides = dict(parse_cli(by_script(train_steps)["swift_plugins.sft"]).overrides)
    assert overrides["training.max_steps"] == (max_steps,) and overrides["training.num_train_epochs"] == ("1",)
    assert overrides["training.save_steps"] == (save_steps,) and overrides["training.log_data_order"] == ("true",)


def test_the_demo_analyses_the_files_the_padding_config_trains_on(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert resolve_config(demo.PADDING_CONFIG).config.custom.train_jsonl == demo.TRAIN_JSONL


def test_trained_records_count_what_the_served_packs_held(tmp_path):
    """Samples 0 and 1 are two pieces of one dense record (a.jsonl:3): four samples, three records."""
    packing = tmp_path / "packing"
    packing.mkdir()
    (packing / "samples.json").write_text(json.dumps({"files": ["a.jsonl", "a.jsonl", "b.jsonl", "b.jsonl"],
                                                      "lines": [3, 3, 1, 2]}))
    steps = [{"step": 1, "samples": [[0, 2]]}, {"step": 2, "samples": [[1]]}]
    (packing / "served_rank0.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (packing / "served_rank1.jsonl").write_text(json.dumps({"step": 1, "samples": [[3]]}) + "\n")
    assert demo.trained_records(tmp_path) == (3, 4)
    assert demo.records_of(json.loads((packing / "samples.json").read_text()), [0, 1, 3]) == {("a.jsonl", 3),
                                                                                                ("b.jsonl", 2)}
