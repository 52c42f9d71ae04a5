"""swift_plugins.config.resolve: extends, overrides, validation messages (exact, with file:line), derived numbers."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from helpers import BASE, write
from swift_plugins import config as C
from swift_plugins.config.schema import CoordTokensSection
from swift_plugins.data import ConversationOptions
from swift_plugins.packing import STRATEGIES

def issues(path, overrides=(), world_size=1):
    with pytest.raises(C.ConfigError) as e:
        C.resolve_config(path, overrides, world_size=world_size)
    return [str(i) for i in e.value.issues]


# ----------------------------------------------------------------------------- exact messages
def test_unknown_key_names_file_section_key_and_suggestion(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  learnign_rate: 1.0e-4\n")
    assert issues(path) == ["x.yaml:3: training.learnign_rate: unknown key (did you mean 'learning_rate'?)"]


def test_unknown_key_suggests_the_section_it_belongs_to(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  max_pixels: 65536\n")
    assert issues(path) == ["x.yaml:3: training.max_pixels: unknown key (did you mean 'template.max_pixels'?)"]


def test_unknown_section_and_unknown_nested_key(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntrainig: {}\ncustom:\n  coord_tokens:\n    enabeld: false\n")
    assert issues(path) == [
        "x.yaml:2: trainig: unknown section (did you mean 'training'?)",
        "x.yaml:5: custom.coord_tokens.enabeld: unknown key (did you mean 'enabled'?)",
    ]


def test_wrong_types(cfg):
    path = cfg("x.yaml", """\
        extends: base.yaml
        training:
          learning_rate: fast
          packing: "yes"
          max_steps: 2.5
        tuner:
          target_modules: [q_proj, 3]
        custom: [a]
        """)
    assert issues(path) == [
        "x.yaml:8: custom: expected a mapping (section), got list [\"a\"]",
        "x.yaml:7: tuner.target_modules: expected list[str], got list [\"q_proj\", 3]",
        "x.yaml:3: training.learning_rate: expected float | null, got str 'fast'",
        "x.yaml:5: training.max_steps: expected int | null, got float 2.5",
        "x.yaml:4: training.packing: expected bool, got str 'yes'",
    ]


def test_out_of_range_and_not_in_choices(cfg):
    path = cfg("x.yaml", """\
        extends: base.yaml
        training:
          packing_min_fill_ratio: 1.5
          learning_rate: 0
          warmup_ratio: 1.0
          packing_strategy: bestfit
        model:
          torch_dtype: fp32
        """)
    assert issues(path) == [
        "x.yaml:8: model.torch_dtype: 'fp32' is not one of 'bfloat16', 'float16', 'float32'",
        "x.yaml:4: training.learning_rate: must be > 0, got 0",
        "x.yaml:5: training.warmup_ratio: must be >= 0 and < 1, got 1",
        "x.yaml:3: training.packing_min_fill_ratio: must be >= 0 and <= 1, got 1.5",
        "x.yaml:6: training.packing_strategy: 'bestfit' is not one of "
        + ", ".join(f"'{s}'" for s in STRATEGIES) + " (did you mean 'next_fit'?)",
    ]


def test_required_keys(cfg):
    path = cfg("x.yaml", "training:\n  effective_batch_size: 8\ncustom:\n  train_jsonl: null\n", base=False)
    assert issues(path) == ["x.yaml: model.model: required, not set",
                            "x.yaml:4: custom.train_jsonl: required, got null"]
    path = cfg("y.yaml", "extends: base.yaml\ncustom:\n  train_jsonl: []\n  val_jsonl: [a.jsonl, 3]\n")
    assert issues(path) == ["y.yaml:3: custom.train_jsonl: required, got an empty list",
                            'y.yaml:4: custom.val_jsonl: expected list[str] | null, got list ["a.jsonl", 3]']


def test_one_path_or_a_list_of_files(cfg):
    one = C.resolve_config(cfg("a.yaml", "extends: base.yaml\ncustom:\n  train_jsonl: t.jsonl\n"), world_size=1)
    many = C.resolve_config(cfg("b.yaml", "extends: base.yaml\ncustom:\n  train_jsonl: [t.jsonl, chat.jsonl]\n  val_jsonl: v.jsonl\n"),
                            world_size=1)
    assert one.config.custom.train_jsonl == ["t.jsonl"] and one.config.custom.val_jsonl is None
    assert (many.config.custom.train_jsonl, many.config.custom.val_jsonl) == (["t.jsonl", "chat.jsonl"], ["v.jsonl"])


def test_all_problems_at_once_across_files(cfg, tmp_path):
    write(tmp_path, "base.yaml", BASE + "template:\n  max_pixel: 10\n")
    path = cfg("x.yaml", """\
        extends: base.yaml
        training:
          learnign_rate: 1.0e-4
          packing: true
          per_device_train_batch_size: 2
        custom:
          coord_tokens:
            enabled: true
        """, base=False)
    assert issues(path) == [
        "base.yaml:9: template.max_pixel: unknown key (did you mean 'max_pixels'?)",
        "x.yaml:3: training.learnign_rate: unknown key (did you mean 'learning_rate'?)",
        "x.yaml:5: training.per_device_train_batch_size: must be 1 with training.packing true (each device batch is "
        "one pack of many samples), got 2",
        "x.yaml:4: training.global_max_length: required with training.packing true (tokens per pack, e.g. 20000)",
        "x.yaml:8: custom.coord_tokens.enabled: true is not implemented (coordinates are emitted as numeric text); "
        "set false",
    ]


def test_conflicting_options(cfg):
    path = cfg("x.yaml", """\
        extends: base.yaml
        model:
          attn_impl: flash_attn
          torch_dtype: float32
        tuner:
          tuner_type: full
          use_dora: true
        training:
          eval_packing: true
          vit_lr: 1.0e-4
        data:
          on_error: skip
        custom:
          coord_offset:
            enabled: true
        swift:
          packing: true
          learning_rate: 0.1
        """)
    assert issues(path) == [
        "x.yaml:9: training.eval_packing: needs training.packing true (or set eval_packing false)",
        "x.yaml:10: training.vit_lr: only used by training.optimizer multimodal (optimizer is 'default')",
        "x.yaml:7: tuner.use_dora: needs tuner.tuner_type lora (tuner_type is 'full')",
        "x.yaml:3: model.attn_impl: flash_attn needs model.torch_dtype bfloat16 or float16 (got 'float32')",
        "x.yaml:15: custom.coord_offset.enabled: true is not implemented (coordinates are emitted as numeric text); "
        "set false",
        "x.yaml:12: data.skip_report_dir: required with data.on_error skip (every skipped record is reported there)",
        "x.yaml:17: swift.packing: ms-swift's own packing encodes every sample up front; use training.packing",
        "x.yaml:18: swift.learning_rate: set by training.learning_rate; use that key",
    ]


# ---------------------------------------------------------------------------------- extends
def test_extends_cycle_is_named(cfg, tmp_path):
    write(tmp_path, "a.yaml", "extends: sub/b.yaml\n")
    write(tmp_path, "sub/b.yaml", "extends: ../a.yaml\n")
    assert issues("a.yaml") == ["a.yaml:1: extends: cycle: a.yaml -> sub/b.yaml -> a.yaml (remove one extends)"]
    write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert issues("self.yaml") == ["self.yaml:1: extends: cycle: self.yaml -> self.yaml (remove one extends)"]


def test_extends_missing_parent_and_bad_yaml(cfg, tmp_path):
    write(tmp_path, "x.yaml", "extends: nope.yaml\n")
    assert issues("x.yaml") == ["x.yaml:1: extends: file not found: nope.yaml (extends is relative to the file it is in)"]
    write(tmp_path, "y.yaml", "training:\n  lr: [1\n")
    assert issues("y.yaml") == ["y.yaml:3: invalid YAML at column 1: expected ',' or ']', but got '<stream end>' (fix the YAML syntax)"]
    assert issues("missing.yaml") == ["missing.yaml: file not found"]


def test_extends_chain_merges_key_by_key(cfg, tmp_path):
    write(tmp_path, "configs/a.yaml", """\
        model: {model: m, torch_dtype: bfloat16}
        training: {learning_rate: 1.0e-4, weight_decay: 0.2, effective_batch_size: 8}
        custom:
          train_jsonl: t.jsonl
          coord_tokens: {enabled: false, skip_bbox_norm: false}
        """)
    write(tmp_path, "configs/mid/b.yaml", """\
        extends: ../a.yaml
        training: {learning_rate: 2.0e-4}
        custom:
          coord_tokens: {skip_bbox_norm: false}
          object_ordering: random
        """)
    write(tmp_path, "configs/c.yaml", """\
        extends: mid/b.yaml
        training: {weight_decay: 0.0, effective_batch_size: null, gradient_accumulation_steps: 3}
        """)
    r = C.resolve_config("configs/c.yaml", [("training.learning_rate", ["3e-4"])])
    assert r.files == ("configs/a.yaml", "configs/mid/b.yaml", "configs/c.yaml")
    t = r.config.training
    assert (t.learning_rate, t.weight_decay, t.effective_batch_size) == (3e-4, 0.0, None)
    assert r.gradient_accumulation_steps == 3
    assert r.config.model.torch_dtype == "bfloat16"
    assert r.config.custom.object_ordering == "random"
    assert r.config.custom.coord_tokens == CoordTokensSection(enabled=False, skip_bbox_norm=False)
    assert {k: r.sources[k] for k in ("training.learning_rate", "training.weight_decay", "model.torch_dtype",
                                      "custom.coord_tokens.enabled", "custom.coord_tokens.skip_bbox_norm",
                                      "custom.object_ordering", "training.seed")} == {
        "training.learning_rate": "command line", "training.weight_decay": "configs/c.yaml",
        "model.torch_dtype": "configs/a.yaml", "custom.coord_tokens.enabled": "configs/a.yaml",
        "custom.coord_tokens.skip_bbox_norm": "configs/mid/b.yaml", "custom.object_ordering": "configs/mid/b.yaml",
        "training.seed": "default"}
    assert r.gradient_accumulation_source == "configs/c.yaml:2"


def test_lists_replace_and_swift_section_merges_by_name(cfg):
    path = cfg("x.yaml", """\
        extends: base.yaml
        tuner: {target_modules: q_proj}
        swift: {max_new_tokens: 8}
        """)
    write_child = cfg("y.yaml", "extends: x.yaml\nswift: {temperature: 0.5}\n")
    r = C.resolve_config(write_child)
    assert r.config.tuner.target_modules == ["q_proj"]
    assert r.config.swift == {"max_new_tokens": 8, "temperature": 0.5}
    assert r.sources["swift.max_new_tokens"] == "x.yaml" and r.sources["swift.temperature"] == "y.yaml"
    assert C.resolve_config(path).config.tuner.target_modules == ["q_proj"]


# ---------------------------------------------------------------- effective batch -> accumulation
@pytest.mark.parametrize("effective,per_device,world,expected", [(128, 1, 4, 32), (128, 2, 4, 16), (8, 1, 1, 8)])
def test_gradient_accumulation_is_derived(cfg, effective, per_device, world, expected):
    path = cfg("x.yaml", f"extends: base.yaml\ntraining:\n  effective_batch_size: {effective}\n"
                         f"  per_device_train_batch_size: {per_device}\n")
    r = C.resolve_config(path, world_size=world)
    assert r.gradient_accumulation_steps == expected
    assert r.gradient_accumulation_source == f"derived: {effective} / ({per_device} x {world})"
    assert C.flat_swift_args(r)["gradient_accumulation_steps"] == expected


def test_non_integral_gradient_accumulation_lists_values_that_work(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  effective_batch_size: 128\n"
                         "  per_device_train_batch_size: 3\n")
    assert issues(path, world_size=4) == [
        "x.yaml:3: training.effective_batch_size: 128 is not a multiple of per_device_train_batch_size x world_size "
        "= 3 x 4 = 12; effective_batch_size values that work: 120, 132; per_device_train_batch_size values that "
        "work with 128: 1, 2, 4, 8, 16, 32"]
    path = cfg("y.yaml", "extends: base.yaml\ntraining:\n  effective_batch_size: 100\n")
    assert issues(path, world_size=3) == [
        "y.yaml:3: training.effective_batch_size: 100 is not a multiple of per_device_train_batch_size x world_size "
        "= 1 x 3 = 3; effective_batch_size values that work: 99, 102; no per_device_train_batch_size works with "
        "100 on 3 processes"]


def test_effective_batch_and_accumulation_both_or_neither(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  gradient_accumulation_steps: 4\n")
    assert issues(path) == [
        "x.yaml:3: training.gradient_accumulation_steps: set either training.effective_batch_size (8) or "
        "training.gradient_accumulation_steps (4), not both (null one of them)"]
    path = cfg("y.yaml", "extends: base.yaml\ntraining:\n  effective_batch_size: null\n")
    assert issues(path) == ["y.yaml: training.effective_batch_size: required (or set "
                            "training.gradient_accumulation_steps); ms-swift's silent default is 16"]


def test_world_size_from_flag_then_torchrun_env():
    assert C.resolve_world_size(4, {"WORLD_SIZE": "2"}) == (4, "--world_size")
    assert C.resolve_world_size(None, {"WORLD_SIZE": "2"}) == (2, "WORLD_SIZE")
    assert C.resolve_world_size(None, {}) == (1, "default")
    with pytest.raises(C.ConfigError) as e:
        C.resolve_world_size(None, {"WORLD_SIZE": "two"})
    assert str(e.value) == "environment: WORLD_SIZE: expected a positive int, got 'two'"


# ------------------------------------------------------------------------------- overrides
def test_overrides_are_parsed_with_the_schema_type(cfg):
    path = cfg("x.yaml", "extends: base.yaml\n")
    r = C.resolve_config(path, [
        ("training.learning_rate", ["1e-4"]), ("training.packing_drop_last", ["True"]), ("training.max_steps", ["7"]),
        ("tuner.target_modules", ["q_proj", "v_proj"]), ("model.model", ["/abs/model"]),
        ("training.output_dir", ["null"]), ("custom.coord_tokens.skip_bbox_norm", ["false"]),
        ("swift.max_new_tokens", ["16"]), ("swift.stop_words", ["a", "b"])])
    t = r.config.training
    assert (t.learning_rate, t.packing_drop_last, t.max_steps, t.output_dir) == (1e-4, True, 7, None)
    assert r.config.tuner.target_modules == ["q_proj", "v_proj"]
    assert r.config.model.model == "/abs/model"
    assert r.config.swift == {"max_new_tokens": 16, "stop_words": ["a", "b"]}
    assert r.sources["model.model"] == "command line" and r.sources["swift.max_new_tokens"] == "command line"


def test_unknown_and_bad_overrides(cfg):
    path = cfg("x.yaml", "extends: base.yaml\n")
    assert issues(path, [("training.learnign_rate", ["1"]), ("training.seed", ["x"]), ("training.packing", ["maybe"]),
                         ("custom.coord_tokens", ["true"]), ("model.model", []), ("trainig.seed", ["1"])]) == [
        "command line: training.learnign_rate: unknown key (did you mean '--training.learning_rate'?)",
        "command line: training.seed: expected int, got 'x'",
        "command line: training.packing: expected bool (true or false), got 'maybe'",
        "command line: custom.coord_tokens: is a section; set one of its keys: --custom.coord_tokens.enabled, "
        "--custom.coord_tokens.skip_bbox_norm",
        "command line: model.model: expected one value (str), got 0: (none)",
        "command line: trainig.seed: unknown key (did you mean '--training.seed'?)",
    ]


def test_yaml_1_1_exponent_strings_are_floats(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  learning_rate: 2e-4\n  vit_lr: 1.0e-4\n"
                         "  optimizer: multimodal\n")
    assert C.resolve_config(path).config.training.learning_rate == 2e-4


def test_a_duplicate_key_is_refused_with_file_line_and_key(cfg, tmp_path):
    write(tmp_path, "d.yaml", """\
        model: {model: m}
        training:
          learning_rate: 1.0e-4
          effective_batch_size: 8
          learning_rate: 2.0e-4
        custom: {train_jsonl: t.jsonl}
        custom: {train_jsonl: u.jsonl}
        """)
    assert issues("d.yaml") == [
        "d.yaml:5: training.learning_rate: duplicate key (also at line 3); YAML would silently keep the last one: keep one",
        "d.yaml:7: custom: duplicate key (also at line 6); YAML would silently keep the last one: keep one"]
    write(tmp_path, "child.yaml", "extends: d.yaml\n")
    assert issues("child.yaml")[0].startswith("d.yaml:5: training.learning_rate: duplicate key")


# ----------------------------------------------------------------------------- the steps of resolve_config
def test_overrides_step_replaces_refuses_and_collects_swift_keys():
    from swift_plugins.config import resolve

    merged = {("training", "learning_rate"): (0.1, "a.yaml", "a.yaml:3")}
    swift, found, bad = {}, [], set()
    resolve._apply_overrides([("training.learning_rate", ["x"]), ("swift.foo", ["1"]), ("swift.bar", ["a", "b"]),
                              ("training", ["1"]), ("training.nope", ["1"]), ("training.num_train_epochs", ["3"])],
                             merged, swift, found, bad)
    cli = "command line"
    assert merged == {("training", "num_train_epochs"): (3.0, cli, cli)}  # the bad value dropped the file's too
    assert swift == {("swift", "foo"): (1, cli, cli), ("swift", "bar"): (["a", "b"], cli, cli)}
    messages = [str(i) for i in found]
    assert messages[0] == "command line: training.learning_rate: expected float, got 'x'"
    assert messages[1].startswith("command line: training: is a section; set one of its keys: --training.optimizer, "
                                  "--training.learning_rate, ")
    assert messages[2:] == ["command line: training.nope: unknown key"] and bad == {"training.learning_rate"}


def test_leaf_values_step_checks_ranges_and_requirements_and_names_sources():
    from swift_plugins.config import resolve

    found, bad = [], set()
    values, sources, where = resolve._leaf_values(
        {("training", "num_train_epochs"): (3.0, "command line", "command line"),
         ("training", "learning_rate"): (-1, "a.yaml", "a.yaml:3")}, "top.yaml", found, bad)
    assert [str(i) for i in found] == ["top.yaml: model.model: required, not set",
                                       "a.yaml:3: training.learning_rate: must be > 0, got -1",
                                       "top.yaml: custom.train_jsonl: required, not set"]
    assert bad == {"model.model", "custom.train_jsonl", "training.learning_rate"}
    assert (values[("training", "num_train_epochs")], values[("training", "learning_rate")]) == (3.0, None)
    assert (sources["training.num_train_epochs"], sources["training.learning_rate"], sources["training.seed"]) == (
        "command line", "a.yaml", "default")
    assert where == {"training.learning_rate": "a.yaml:3", "training.num_train_epochs": "command line"}
