"""swift_plugins.config: schema, extends, overrides, validation messages (exact), flattening."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from swift_plugins import config as C
from swift_plugins.data import ConversationOptions

BASE = """
model:
  model: models/m
training:
  effective_batch_size: 8
custom:
  train_jsonl: data/train.jsonl
"""


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def issues(path, overrides=(), world_size=1):
    with pytest.raises(C.ConfigError) as e:
        C.resolve_config(path, overrides, world_size=world_size)
    return [str(i) for i in e.value.issues]


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    """Write configs into tmp_path; labels are then relative ('x.yaml') as a user would type them."""
    monkeypatch.chdir(tmp_path)

    def make(name, text, base=True):
        if base:
            write(tmp_path, "base.yaml", BASE)
        write(tmp_path, name, text)
        return name
    return make


# ----------------------------------------------------------------------------- exact messages
def test_unknown_key_names_file_section_key_and_suggestion(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  learnign_rate: 1.0e-4\n")
    assert issues(path) == ["x.yaml: training.learnign_rate: unknown key (did you mean 'learning_rate'?)"]


def test_unknown_key_suggests_the_section_it_belongs_to(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  max_pixels: 65536\n")
    assert issues(path) == ["x.yaml: training.max_pixels: unknown key (did you mean 'template.max_pixels'?)"]


def test_unknown_section_and_unknown_nested_key(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntrainig: {}\ncustom:\n  coord_tokens:\n    enabeld: false\n")
    assert issues(path) == [
        "x.yaml: trainig: unknown section (did you mean 'training'?)",
        "x.yaml: custom.coord_tokens.enabeld: unknown key (did you mean 'enabled'?)",
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
        "x.yaml: custom: expected a mapping (section), got list [\"a\"]",
        "x.yaml: tuner.target_modules: expected list[str], got list [\"q_proj\", 3]",
        "x.yaml: training.learning_rate: expected float | null, got str 'fast'",
        "x.yaml: training.max_steps: expected int | null, got float 2.5",
        "x.yaml: training.packing: expected bool, got str 'yes'",
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
        "x.yaml: model.torch_dtype: 'fp32' is not one of 'bfloat16', 'float16', 'float32'",
        "x.yaml: training.learning_rate: must be > 0, got 0",
        "x.yaml: training.warmup_ratio: must be >= 0 and < 1, got 1",
        "x.yaml: training.packing_min_fill_ratio: must be >= 0 and <= 1, got 1.5",
        "x.yaml: training.packing_strategy: 'bestfit' is not one of 'bfd', 'greedy', 'random', 'next_fit' "
        "(did you mean 'next_fit'?)",
    ]


def test_required_keys(cfg):
    path = cfg("x.yaml", "training:\n  effective_batch_size: 8\ncustom:\n  train_jsonl: null\n", base=False)
    assert issues(path) == ["x.yaml: model.model: required, not set",
                            "x.yaml: custom.train_jsonl: required, got null"]


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
        "base.yaml: template.max_pixel: unknown key (did you mean 'max_pixels'?)",
        "x.yaml: training.learnign_rate: unknown key (did you mean 'learning_rate'?)",
        "x.yaml: training.per_device_train_batch_size: must be 1 with training.packing true (each device batch is "
        "one pack of many samples), got 2",
        "x.yaml: training.global_max_length: required with training.packing true (tokens per pack, e.g. 20000)",
        "x.yaml: custom.coord_tokens.enabled: true is not implemented (coordinates are emitted as numeric text); "
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
        "x.yaml: training.eval_packing: needs training.packing true (or set eval_packing false)",
        "x.yaml: training.vit_lr: only used by training.optimizer multimodal (optimizer is 'default')",
        "x.yaml: tuner.use_dora: needs tuner.tuner_type lora (tuner_type is 'full')",
        "x.yaml: model.attn_impl: flash_attn needs model.torch_dtype bfloat16 or float16 (got 'float32')",
        "x.yaml: custom.coord_offset.enabled: true is not implemented (coordinates are emitted as numeric text); "
        "set false",
        "x.yaml: data.skip_report_dir: required with data.on_error skip (every skipped record is reported there)",
        "x.yaml: swift.packing: ms-swift's own packing encodes every sample up front; use training.packing",
        "x.yaml: swift.learning_rate: set by training.learning_rate; use that key",
    ]


# ---------------------------------------------------------------------------------- extends
def test_extends_cycle_is_named(cfg, tmp_path):
    write(tmp_path, "a.yaml", "extends: sub/b.yaml\n")
    write(tmp_path, "sub/b.yaml", "extends: ../a.yaml\n")
    assert issues("a.yaml") == ["a.yaml: extends: cycle: a.yaml -> sub/b.yaml -> a.yaml"]
    write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert issues("self.yaml") == ["self.yaml: extends: cycle: self.yaml -> self.yaml"]


def test_extends_missing_parent_and_bad_yaml(cfg, tmp_path):
    write(tmp_path, "x.yaml", "extends: nope.yaml\n")
    assert issues("x.yaml") == ["x.yaml: extends: file not found: nope.yaml"]
    write(tmp_path, "y.yaml", "training:\n  lr: [1\n")
    assert issues("y.yaml") == ["y.yaml: invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"]
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
    assert r.config.custom.coord_tokens == C.CoordTokensSection(enabled=False, skip_bbox_norm=False)
    assert {k: r.sources[k] for k in ("training.learning_rate", "training.weight_decay", "model.torch_dtype",
                                      "custom.coord_tokens.enabled", "custom.coord_tokens.skip_bbox_norm",
                                      "custom.object_ordering", "training.seed")} == {
        "training.learning_rate": "command line", "training.weight_decay": "configs/c.yaml",
        "model.torch_dtype": "configs/a.yaml", "custom.coord_tokens.enabled": "configs/a.yaml",
        "custom.coord_tokens.skip_bbox_norm": "configs/mid/b.yaml", "custom.object_ordering": "configs/mid/b.yaml",
        "training.seed": "default"}
    assert r.gradient_accumulation_source == "configs/c.yaml"


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
        "x.yaml: training.effective_batch_size: 128 is not a multiple of per_device_train_batch_size x world_size "
        "= 3 x 4 = 12; effective_batch_size values that work: 120, 132; per_device_train_batch_size values that "
        "work with 128: 1, 2, 4, 8, 16, 32"]
    path = cfg("y.yaml", "extends: base.yaml\ntraining:\n  effective_batch_size: 100\n")
    assert issues(path, world_size=3) == [
        "y.yaml: training.effective_batch_size: 100 is not a multiple of per_device_train_batch_size x world_size "
        "= 1 x 3 = 3; effective_batch_size values that work: 99, 102; no per_device_train_batch_size works with "
        "100 on 3 processes"]


def test_effective_batch_and_accumulation_both_or_neither(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  gradient_accumulation_steps: 4\n")
    assert issues(path) == [
        "x.yaml: training.gradient_accumulation_steps: set either training.effective_batch_size (8) or "
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
def test_parse_cli_groups_flags_and_values():
    cli = C.parse_cli(["--config", "c.yaml", "--training.learning_rate", "1e-4", "--tuner.target_modules", "q_proj",
                       "v_proj", "--model.model=/m", "--print_config", "--world_size", "4", "--export_flat", "o.yaml"])
    assert cli == C.CliArgs(config="c.yaml", print_config=True, export_flat="o.yaml", world_size=4, overrides=(
        ("training.learning_rate", ("1e-4",)), ("tuner.target_modules", ("q_proj", "v_proj")),
        ("model.model", ("/m",))))


def test_parse_cli_errors_all_at_once():
    with pytest.raises(C.ConfigError) as e:
        C.parse_cli(["stray", "--config", "c.yaml", "--learning_rate", "1e-4", "--world_size", "0", "--lerning_rate",
                     "1", "--print_config", "yes"])
    assert [str(i) for i in e.value.issues] == [
        "command line: unexpected argument 'stray' (options start with --)",
        "command line: --learning_rate: unknown option (did you mean '--training.learning_rate'?); keys are set as "
        "--section.key value",
        "command line: --world_size: expected a positive int, got '0'",
        "command line: --lerning_rate: unknown option (did you mean '--training.learning_rate'?); keys are set as "
        "--section.key value",
        "command line: --print_config: takes no value, got 'yes'",
    ]
    with pytest.raises(C.ConfigError) as e:
        C.parse_cli(["--training.seed", "1"])
    assert str(e.value) == ("command line: --config: required (the YAML file, e.g. configs/tiny/sft_padding.yaml)")


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


# ------------------------------------------------------------------------ print / flatten / export
def test_render_config_shows_sources_and_loads_back(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  learning_rate: 2.0e-4\n")
    r = C.resolve_config(path, [("training.seed", ["7"])], world_size=2, world_size_source="--world_size")
    text = C.render_config(r)
    lines = text.splitlines()
    assert lines[0] == "# resolved from: x.yaml <- base.yaml"
    assert "  learning_rate: 0.0002  # x.yaml" in lines
    assert "  effective_batch_size: 8  # base.yaml" in lines
    assert "  seed: 7  # command line" in lines
    assert "  weight_decay: 0.1  # default" in lines
    assert lines[-2:] == ["# derived (world_size 2 from --world_size):",
                          "#   gradient_accumulation_steps: 4  (derived: 8 / (1 x 2))"]
    reloaded = yaml.safe_load(text)
    assert reloaded["training"]["learning_rate"] == 2e-4 and reloaded["custom"]["coord_tokens"]["enabled"] is False
    with open("roundtrip.yaml", "w") as f:
        f.write(text)
    again = C.resolve_config("roundtrip.yaml", world_size=2)
    assert again.config == r.config


def test_flat_swift_args_exact(cfg):
    path = cfg("x.yaml", """\
        extends: base.yaml
        model: {model_type: qwen3_vl, torch_dtype: float32, attn_impl: sdpa}
        tuner: {use_dora: true, freeze_vit: false}
        training:
          optimizer: multimodal
          learning_rate: 2.0e-4
          vit_lr: 1.0e-4
          save_delay_steps: 5
          packing: true
          global_max_length: 4096
        template: {max_pixels: 65536}
        custom: {val_jsonl: data/val.jsonl}
        swift: {max_new_tokens: 8}
        """)
    r = C.resolve_config(path, world_size=2)
    assert C.flat_swift_args(r) == {
        "model": "models/m", "model_type": "qwen3_vl", "torch_dtype": "float32", "attn_impl": "sdpa",
        "check_model": False, "tuner_type": "lora", "use_dora": True, "lora_rank": 8, "lora_alpha": 32.0,
        "lora_dropout": 0.05, "target_modules": ["all-linear"], "freeze_llm": False, "freeze_vit": False,
        "freeze_aligner": True, "optimizer": "swiftpack_multimodal", "learning_rate": 2e-4, "vit_lr": 1e-4,
        "weight_decay": 0.1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "max_grad_norm": 1.0,
        "num_train_epochs": 3.0, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
        "gradient_accumulation_steps": 4, "gradient_checkpointing": True, "seed": 42, "data_seed": 42,
        "use_cpu": False, "save_strategy": "steps", "save_steps": 500, "save_only_model": False, "logging_steps": 5,
        "add_version": True, "report_to": ["tensorboard"], "dataset_num_proc": 1, "max_pixels": 65536,
        "truncation_strategy": "delete", "dataset": ["data/train.jsonl"], "val_dataset": ["data/val.jsonl"],
        "callbacks": ["swiftpack_save_delay"], "max_new_tokens": 8,
        # packing on: the isolating template, and fresh dataloader workers each epoch (new pack order)
        "template": "qwen3_vl_packing", "dataloader_persistent_workers": False}
    assert "packing" not in C.flat_swift_args(r)  # ms-swift's own packing is never switched on
    argv = C.swift_argv(C.flat_swift_args(r, with_runtime_fields=True))
    assert argv[argv.index("--swiftpack_packing") + 1] == "True"
    assert argv[argv.index("--swiftpack_global_max_length") + 1] == "4096"
    assert argv[argv.index("--target_modules") + 1] == "all-linear"
    assert argv[argv.index("--check_model") + 1] == "False"


def test_runtime_options_and_sidecar_round_trip(cfg, tmp_path):
    path = cfg("x.yaml", """\
        extends: base.yaml
        training: {packing: true, global_max_length: 20000, packing_buffer: 256, packing_min_fill_ratio: 0.7,
                   packing_drop_last: true, packing_strategy: greedy, save_delay_steps: 50}
        custom: {object_ordering: random, emit_norm: norm1000, seed: 3, prompt: Find all.}
        """)
    r = C.resolve_config(path, world_size=4)
    options = C.runtime_options(r)
    assert dataclasses.asdict(options) == {
        "packing": True, "global_max_length": 20000, "packing_buffer": 256, "packing_min_fill_ratio": 0.7,
        "packing_drop_last": True, "eval_packing": False, "packing_strategy": "greedy", "packing_seed": 42, "packing_overlong": "drop",
        "length_cache_dir": ".cache/swiftpack",
        "save_delay_steps": 50, "log_data_order": False, "on_error": "raise", "skip_report_dir": None,
        "check_images": True, "train_jsonl": "data/train.jsonl", "val_jsonl": None, "prompt": "Find all.",
        "object_ordering": "random", "emit_norm": "norm1000", "conversation_seed": 3, "coord_tokens": False,
        "coord_tokens_skip_bbox_norm": False, "coord_offset": False}
    assert options.conversation_options() == ConversationOptions(prompt="Find all.", object_ordering="random",
                                                                  emit_norm="norm1000", seed=3)
    files = C.export_flat(r, str(tmp_path / "out" / "my run.yaml"))
    assert files.sidecar_json == str(tmp_path / "out" / "my run.swiftpack.json")
    assert files.plugin_py == str(tmp_path / "out" / "swiftpack_options_my_run.py")
    assert C.load_sidecar(files.sidecar_json) == (options, 4)
    flat = yaml.safe_load(open(files.flat_yaml))
    assert flat["external_plugins"] == [files.plugin_py]
    assert flat["gradient_accumulation_steps"] == 2 and flat["tuner_type"] == "lora" and flat["check_model"] is False
    assert set(flat) == set(C.flat_swift_args(r)) | {"external_plugins"}
    assert open(files.plugin_py).read().endswith(f"register_sidecar({json.dumps(files.sidecar_json)})\n")
    data = json.load(open(files.sidecar_json))
    data["options"]["bogus"] = 1
    json.dump(data, open(files.sidecar_json, "w"))
    with pytest.raises(ValueError, match=r"options do not match this swift_plugins version \(unknown: \['bogus'\]"):
        C.load_sidecar(files.sidecar_json)


# -------------------------------------------------------------------------------- the schema
def test_every_conversation_option_is_a_custom_key():
    runtime = {f.name for f in dataclasses.fields(C.RuntimeOptions)}
    by_option = {"seed": "conversation_seed"}
    for f in dataclasses.fields(ConversationOptions):
        assert by_option.get(f.name, f.name) in runtime, f.name
    custom = {leaf.meta["name"]: leaf for leaf in C.SCHEMA_LEAVES if leaf.path[0] == "custom"}
    assert custom["object_ordering"].meta["choices"] == ConversationOptions.__dataclass_fields__[
        "object_ordering"].metadata["choices"]


def test_schema_metadata_is_complete():
    names = set()
    for leaf in C.SCHEMA_LEAVES:
        assert leaf.meta["help"], leaf.dotted
        assert leaf.meta["target"] in (C.SWIFT, C.OURS, C.CONFIG)
        key = (leaf.meta["target"], leaf.meta["name"])
        assert key not in names, leaf.dotted
        names.add(key)
        if leaf.meta["choices"] is not None and not leaf.meta["required"]:
            assert leaf.default is None or leaf.default in leaf.meta["choices"], leaf.dotted


def test_docs_schema_table_is_up_to_date(repo_root):
    text = (repo_root / "docs" / "configuration.md").read_text()
    assert C.update_docs(text) == text, "run: python -m swift_plugins.config --update-docs docs/configuration.md"


def test_validation_imports_neither_torch_nor_swift(repo_root):
    code = ("import sys; import swift_plugins.config, swift_plugins.sft; "
            "print(sorted(m for m in ('torch', 'swift', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
