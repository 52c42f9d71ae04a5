"""swift_plugins.training.pipeline: registration from a sidecar, the packing hook, argv as ms-swift parses it."""
from __future__ import annotations

import os
import pathlib
import sys
import types

import pytest

from swift_plugins import config as C
from swift_plugins.errors import UserError
from swift_plugins.training.pipeline import packing_post_process

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_without_packing_ms_swifts_post_processing_runs():
    off = C.RuntimeOptions(packing=False)
    assert packing_post_process(types.SimpleNamespace(swiftpack_options=off), ["t", "v"], lambda d: d[::-1]) == \
        ["v", "t"]


def test_sidecar_registration_checks_world_size_and_hooks_packing(tmp_path, monkeypatch, request):


    from swift.callbacks import callbacks_map
    from swift.dataset import DATASET_MAPPING
    from swift.pipelines.train.sft import SwiftSft

    from swift_plugins.training import packed_dataset
    from swift_plugins.training.pipeline import register_sidecar

    # global registrations are restored after the test
    monkeypatch.setattr(SwiftSft, "_post_process_datasets", SwiftSft._post_process_datasets)
    monkeypatch.setitem(callbacks_map, "swiftpack_save_delay", callbacks_map.get("swiftpack_save_delay"))
    saved_datasets = dict(DATASET_MAPPING)

    def restore_datasets():
        from swift.dataset import dataset_syntax
        DATASET_MAPPING.clear()
        DATASET_MAPPING.update(saved_datasets)
        dataset_syntax._dataset_meta_mapping = None
    request.addfinalizer(restore_datasets)
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
    monkeypatch.delenv("WORLD_SIZE")
    options = register_sidecar(files.sidecar_json)
    assert options == C.runtime_options(resolved)
    assert callbacks_map["swiftpack_save_delay"].keywords == {"save_delay_steps": 3}
    registered = {getattr(m, "dataset_path", None) for m in DATASET_MAPPING.values()}
    assert os.path.abspath("public_data/lvis/sample/train.jsonl") in registered
    stand_in = types.SimpleNamespace()
    # stock SwiftSft now routes through packing_post_process to our packed datasets
    assert SwiftSft._post_process_datasets(stand_in, [[], None]) == ["t", "v"]
    assert calls == [stand_in] and stand_in.swiftpack_options == options


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
