"""swift_plugins.training.pipeline: registration from a sidecar routing one plain run, argv as ms-swift parses it."""
from __future__ import annotations

import json
import os
import pathlib
import sys
import types

import pytest

from swift_plugins import config as C
from swift_plugins.errors import UserError
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_sidecar_registration_checks_world_size_and_routes_one_run(tmp_path, monkeypatch):
    from swift.callbacks import callbacks_map
    from swift.dataset import DATASET_MAPPING
    from swift.pipelines.train.sft import SwiftSft

    from swift_plugins.training import packed_dataset, plain_swift
    from swift_plugins.training.callbacks import PackingCallback, SaveDelayCallback
    from swift_plugins.training.hooks import OPTIONS_FILE
    from swift_plugins.training.pipeline import register_sidecar

    own = {name: SwiftSft.__dict__[name] for name in plain_swift.HOOKS}
    registry = dict(callbacks_map)
    calls = []
    monkeypatch.setattr(packed_dataset, "build_packed_datasets", lambda sft, train, val: calls.append(sft) or ("t", "v"))
    monkeypatch.chdir(REPO)
    resolved = C.resolve_config("configs/tiny/sft_packing.yaml", [("training.save_delay_steps", ["3"])], world_size=1)
    files = C.export_flat(resolved, str(tmp_path / "packed.yaml"))

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError) as e:
        register_sidecar(files.sidecar_json)
    assert str(e.value) == (f"{files.sidecar_json}: exported for world_size 1 (gradient_accumulation_steps was "
                            f"derived from it) but this run has WORLD_SIZE 2; re-export with --world_size 2")
    assert not plain_swift.is_patched()  # a refused sidecar patches nothing
    monkeypatch.delenv("WORLD_SIZE")
    options = register_sidecar(files.sidecar_json)
    assert options == C.runtime_options(resolved)  # the sidecar's string form round-trips exactly
    assert dict(callbacks_map) == registry  # nothing run-specific in ms-swift's callback registry
    registered = {getattr(m, "dataset_path", None) for m in DATASET_MAPPING.values()}
    assert os.path.abspath("public_data/lvis/sample/train.jsonl") in registered

    # stock SwiftSft now runs one packed run through our hooks ...
    stand_in = types.SimpleNamespace(args=types.SimpleNamespace(use_flash_ckpt=False),
                                     _get_resume_checkpoint=lambda t: None, _save_trainer_state=lambda t: "state")
    assert SwiftSft._get_dataset(stand_in) == (None, None)
    assert SwiftSft._post_process_datasets(stand_in, [[], None]) == ["t", "v"]
    assert calls == [stand_in] and stand_in.swiftpack_options == options
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(output_dir=str(tmp_path / "out")), added=[],
                                    train=lambda checkpoint: None, compute_loss=None, evaluation_loop=None)
    trainer.add_callback = trainer.added.append
    os.makedirs(trainer.args.output_dir)
    assert SwiftSft.train(stand_in, trainer) == "state"  # ms-swift's own train ran, after our hook
    assert [type(c) for c in trainer.added] == [SaveDelayCallback, PackingCallback]
    assert trainer.added[0].save_delay_steps == 3
    saved = json.loads((tmp_path / "out" / OPTIONS_FILE).read_text())
    assert C.RuntimeOptions(**saved) == options
    # ... and is ms-swift's own again once train returned
    assert not plain_swift.is_patched()
    assert {name: SwiftSft.__dict__[name] for name in plain_swift.HOOKS} == own


def test_export_matches_ms_swift_yaml_parsing(tmp_path, monkeypatch):
    """The flat YAML becomes, through ms-swift's own parse_yaml_args, the argv our entry point builds."""
    from swift.cli.main import parse_yaml_args

    monkeypatch.chdir(REPO)
    resolved = C.resolve_config("configs/dlora/sft_text_only.yaml", world_size=4)
    files = C.export_flat(resolved, str(tmp_path / "flat.yaml"))
    argv = [files.flat_yaml]
    monkeypatch.delenv("SWIFT_CONFIG_FILE", raising=False)
    parse_yaml_args(argv)
    monkeypatch.delenv("SWIFT_CONFIG_FILE", raising=False)
    expected = C.flat_swift_args(resolved)
    expected["external_plugins"] = [files.plugin_py]
    assert argv == C.swift_argv(expected)
    assert "--train_type" not in argv and "--packing" not in argv
    assert argv[argv.index("--gradient_accumulation_steps") + 1] == "32"




# ----------------------------------------------------------------------------- DeepSpeed on the CPU
def test_device_issues_without_a_gpu(monkeypatch):
    from swift_plugins.training.pipeline import device_issues

    monkeypatch.chdir(REPO)
    zero3 = [("deepspeed.config", ["zero3"])]
    no_cpu = C.resolve_config("configs/tiny/sft_packing.yaml", zero3 + [("training.use_cpu", ["false"])])
    assert [str(i) for i in device_issues(no_cpu, {})] == [
        "command line: training.use_cpu: must be true for DeepSpeed without a GPU (then DeepSpeed runs on its CPU "
        "accelerator over gloo, in fp32); add --training.use_cpu true"]
    cpu = C.resolve_config("configs/tiny/sft_packing.yaml", zero3, world_size=2)
    assert device_issues(cpu, {"WORLD_SIZE": "2"}) == [] == device_issues(cpu, {"DS_ACCELERATOR": "cpu"})
    assert [str(i) for i in device_issues(cpu, {"DS_ACCELERATOR": "cuda"})] == [
        "environment: DS_ACCELERATOR: is 'cuda' but training.use_cpu is true with DeepSpeed; unset it (the run sets "
        "cpu) or set training.use_cpu false on a GPU machine"]
    ddp = C.resolve_config("configs/tiny/sft_packing.yaml", [("training.use_cpu", ["false"])], world_size=2)
    assert [i.key for i in device_issues(ddp, {"WORLD_SIZE": "2"})] == ["training.use_cpu"]
    assert device_issues(ddp, {}) == []


def test_cpu_deepspeed_environment_of_a_rank_and_of_one_process():
    from swift_plugins.training.pipeline import cpu_deepspeed_environment

    rank = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu"}
    assert cpu_deepspeed_environment(rank, lambda: 1 / 0) == {"DS_ACCELERATOR": "cpu"}  # torchrun set the rest
    assert cpu_deepspeed_environment({}, lambda: 29123) == {  # no torchrun: a world of one, not MPI discovery
        "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29123"}
    with pytest.raises(UserError, match=r"^environment: DS_ACCELERATOR: is 'cuda' but training.use_cpu is true"):
        cpu_deepspeed_environment({"DS_ACCELERATOR": "cuda"}, lambda: 1)
