"""Shared fixtures: the tiny offline Qwen3-VL is built once per test session."""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """Path of the tiny Qwen3-VL checkpoint (scripts/make_tiny_model.py), built once per session."""
    from swift_plugins.tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny-qwen3-vl")


@pytest.fixture(scope="session")
def swift_cli() -> str:
    """The `swift` console script of the interpreter running the tests."""
    return str(VENV_BIN / "swift")


@pytest.fixture()
def subprocess_env() -> dict:
    """Environment for child training processes: offline, single-threaded BLAS, no GPU lookups."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    env.pop("NPROC_PER_NODE", None)
    return env


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    """The bundled LVIS-format sample (public_data/lvis/sample)."""
    return REPO / "public_data" / "lvis" / "sample"


@pytest.fixture(scope="session")
def tiny_template(tiny_model_dir):
    """ms-swift's qwen3_vl template (train mode) over the tiny model's processor; no weights loaded."""
    from swift_plugins.dataset_lengths import load_template

    return load_template(tiny_model_dir)
