"""swift_plugins.config.export: flat ms-swift arguments, RuntimeOptions, sidecar and plugin."""
import dataclasses
import json

import pytest
import yaml

from swift_plugins import config as C
from swift_plugins.data import ConversationOptions
from swift_plugins.errors import UserError


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
        "model": "models/m", "model_type": "qwen3_vl", "torch_dtype": "float32", "attn_impl": "swiftpack_varlen",
        "check_model": False, "tuner_type": "lora", "use_dora": True, "lora_rank": 8, "lora_alpha": 32.0,
        "lora_dropout": 0.05, "target_modules": ["all-linear"], "freeze_llm": False, "freeze_vit": False,
        "freeze_aligner": True, "optimizer": "swiftpack_multimodal", "learning_rate": 2e-4, "vit_lr": 1e-4,
        "weight_decay": 0.1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "max_grad_norm": 1.0,
        "num_train_epochs": 3.0, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
        "gradient_accumulation_steps": 4, "gradient_checkpointing": True, "seed": 42, "data_seed": 42,
        "use_cpu": False, "save_strategy": "steps", "save_steps": 500, "save_only_model": False, "logging_steps": 5,
        "add_version": True, "report_to": ["tensorboard"], "dataset_num_proc": 1, "max_pixels": 65536,
        "truncation_strategy": "delete", "dataset": ["data/train.jsonl"], "val_dataset": ["data/val.jsonl"],
        "callbacks": ["swiftpack_eval_token_mean"], "max_new_tokens": 8,
        "loss_type": "swiftpack_fused_ce",  # training.fused_loss (default true): ms-swift's loss registry
        # packing on: the isolating template, attention per packed sample (sdpa would get an L x L
        # mask), fresh dataloader workers each epoch (new pack order), no second shuffle of the dealt packs
        "template": "qwen3_vl_packing", "dataloader_persistent_workers": False, "train_dataloader_shuffle": False}
    assert "packing" not in C.flat_swift_args(r)  # ms-swift's own packing is never switched on
    assert r.attn_impl == ("swiftpack_varlen", "model.attn_impl sdpa -> swiftpack_varlen with training.packing: "
                           "attention per packed sample, no L x L mask (model.attn_impl eager or flash_attn keeps those)")
    assert C.render_config(r).splitlines()[-1] == f"#   attn_impl: swiftpack_varlen  ({r.attn_impl[1]})"
    argv = C.swift_argv(C.flat_swift_args(r))
    assert not [a for a in argv if a.startswith("--swiftpack_")]  # our options never travel as strings to ms-swift
    assert argv[argv.index("--attn_impl") + 1] == "swiftpack_varlen"
    assert argv[argv.index("--target_modules") + 1] == "all-linear"
    assert argv[argv.index("--check_model") + 1] == "False"
    assert argv[argv.index("--loss_type") + 1] == "swiftpack_fused_ce" and C.runtime_options(r).fused_loss is True


def test_fused_loss_false_leaves_ms_swifts_loss_and_another_loss_type_needs_it_off(cfg):
    base = "extends: base.yaml\n"
    r = C.resolve_config(cfg("off.yaml", base + "training: {fused_loss: false}\n"), world_size=1)
    assert "loss_type" not in C.flat_swift_args(r)
    r = C.resolve_config(cfg("other.yaml", base + "training: {fused_loss: false}\nswift: {loss_type: cross_entropy}\n"),
                         world_size=1)
    assert C.flat_swift_args(r)["loss_type"] == "cross_entropy"
    with pytest.raises(C.ConfigError, match=r"swift.loss_type: training.fused_loss true sets it .*set "
                                            r"training.fused_loss false to use another loss_type"):
        C.resolve_config(cfg("both.yaml", base + "swift: {loss_type: cross_entropy}\n"), world_size=1)


def _model(folder, model_type):
    (folder / "models" / "m").mkdir(parents=True, exist_ok=True)
    (folder / "models" / "m" / "config.json").write_text(json.dumps({"model_type": model_type}))


PACKED = "extends: base.yaml\ntraining: {packing: true, global_max_length: 4096}\n"


@pytest.mark.parametrize("model_type, swift_model_type, template", [
    ("qwen2_vl", "qwen2_vl", "qwen2_vl_packing"), ("qwen2_5_vl", "qwen2_5_vl", "qwen2_5_vl_packing"),
    ("qwen3_vl", "qwen3_vl", "qwen3_vl_packing"), ("qwen3_vl_moe", "qwen3_vl_moe", "qwen3_vl_packing")])
def test_the_model_family_picks_model_type_and_the_packing_template(cfg, tmp_path, model_type, swift_model_type,
                                                                     template):
    _model(tmp_path, model_type)
    args = C.flat_swift_args(C.resolve_config(cfg("x.yaml", PACKED), world_size=1))
    assert (args["model_type"], args["template"]) == (swift_model_type, template)
    plain = C.flat_swift_args(C.resolve_config(cfg("y.yaml", "extends: base.yaml\n"), world_size=1))
    assert plain["model_type"] == swift_model_type and "template" not in plain


def test_a_model_of_another_family_than_the_config_says_is_refused(cfg, tmp_path):
    _model(tmp_path, "qwen2_5_vl")
    r = C.resolve_config(cfg("x.yaml", PACKED + "model: {model_type: qwen3_vl}\n"), world_size=1)
    with pytest.raises(UserError, match=r"^x.yaml: model.model_type: 'qwen3_vl' but models/m is a Qwen2.5-VL checkpoint "
                                        r"\(qwen2_5_vl\); set model.model_type: null$"):
        C.flat_swift_args(r)
    r = C.resolve_config(cfg("y.yaml", PACKED + "template: {template: qwen3_vl_packing}\n"), world_size=1)
    with pytest.raises(UserError, match=r"^y.yaml: template.template: 'qwen3_vl_packing' is not the Qwen2.5-VL "
                                        r"template of models/m \(set template.template: null; packing uses "
                                        r"'qwen2_5_vl_packing'\)$"):
        C.flat_swift_args(r)
    _model(tmp_path, "llava")
    with pytest.raises(UserError, match=r"models/m/config.json: model_type: 'llava' is not supported \(supported: "
                                        r"qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe\)"):
        C.flat_swift_args(C.resolve_config(cfg("z.yaml", PACKED), world_size=1))


@pytest.mark.parametrize("attn_impl, packing, expected", [
    (None, True, "swiftpack_varlen"), ("sdpa", True, "swiftpack_varlen"), ("eager", True, "eager"),
    ("flash_attn", True, "flash_attn"), ("swiftpack_varlen", True, "swiftpack_varlen"), ("sdpa", False, "sdpa"),
    (None, False, None), ("swiftpack_varlen", False, "swiftpack_varlen")])
def test_packing_replaces_only_sdpa_or_unset_attention(cfg, attn_impl, packing, expected):
    model = "" if attn_impl is None else f"model: {{attn_impl: {attn_impl}, torch_dtype: bfloat16}}\n"
    training = "training: {packing: true, global_max_length: 4096}\n" if packing else ""
    r = C.resolve_config(cfg("x.yaml", "extends: base.yaml\n" + model + training), world_size=1)
    assert C.flat_swift_args(r).get("attn_impl") == expected
    assert (r.attn_impl[1] is not None) == (packing and attn_impl in (None, "sdpa"))
    assert ("#   attn_impl:" in C.render_config(r)) == (r.attn_impl[1] is not None)


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
        "fused_loss": True, "packing": True, "global_max_length": 20000, "packing_buffer": 256,
        "packing_min_fill_ratio": 0.7,
        "packing_drop_last": True, "eval_packing": False, "packing_strategy": "greedy", "packing_seed": 42, "packing_overlong": "drop",
        "length_cache_dir": ".cache/swiftpack",
        "save_delay_steps": 50, "log_data_order": False, "on_error": "raise", "skip_report_dir": None,
        "check_images": True, "record_format": "auto", "train_jsonl": ["data/train.jsonl"], "val_jsonl": None,
        "prompt": "Find all.",
        "object_ordering": "random", "emit_norm": "norm1000", "conversation_seed": 3, "coord_tokens": False,
        "coord_tokens_skip_bbox_norm": False, "coord_offset": False}
    assert options.conversation_options() == ConversationOptions(prompt="Find all.", object_ordering="random",
                                                                  emit_norm="norm1000", seed=3)
    files = C.export_flat(r, str(tmp_path / "out" / "my run.yaml"))
    assert files.sidecar_json == str(tmp_path / "out" / "my run.swiftpack.json")
    assert files.plugin_py == str(tmp_path / "out" / "swiftpack_options_my_run.py")
    assert C.load_sidecar(files.sidecar_json) == (options, 4, False)
    flat = yaml.safe_load(open(files.flat_yaml))
    assert flat["external_plugins"] == [files.plugin_py]
    assert flat["gradient_accumulation_steps"] == 2 and flat["tuner_type"] == "lora" and flat["check_model"] is False
    assert set(flat) == set(C.flat_swift_args(r)) | {"external_plugins"}
    assert open(files.plugin_py).read().endswith("from swift_plugins import register_plugins\n\n"
                                                 f"register_plugins(sidecar={json.dumps(files.sidecar_json)})\n")
    data = json.load(open(files.sidecar_json))
    data["options"]["bogus"] = 1
    json.dump(data, open(files.sidecar_json, "w"))
    with pytest.raises(UserError, match=r"options do not match this swift_plugins version \(unknown: \['bogus'\]"):
        C.load_sidecar(files.sidecar_json)
