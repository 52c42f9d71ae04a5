"""Shared fixtures: the tiny offline Qwen3-VL is built once per test session."""
from __future__ import annotations

import json
import os
import pathlib
import sys
import textwrap

import subprocess

import pytest
from PIL import Image

from swift_plugins.data import RecordError, iter_records

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent
# The environment before any test ran: ms-swift sets variables in-process (TENSORBOARD_LOGGING_DIR
# with setdefault, RANK / WORLD_SIZE / NPROC_PER_NODE, ...) that must not leak into child runs.
PRISTINE_ENV = dict(os.environ)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """Path of the tiny Qwen3-VL checkpoint (scripts/make_tiny_model.py), built once per session."""
    from swift_plugins.dev.tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny-qwen3-vl")


@pytest.fixture(scope="session")
def swift_cli() -> str:
    """The `swift` console script of the interpreter running the tests."""
    return str(VENV_BIN / "swift")


def child_environment() -> dict:
    """Environment for child training processes: offline, no GPU lookups, nothing ms-swift set in-process."""
    env = dict(PRISTINE_ENV)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    env.pop("NPROC_PER_NODE", None)
    return env


@pytest.fixture()
def subprocess_env() -> dict:
    return child_environment()


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    """The bundled LVIS-format sample (public_data/lvis/sample)."""
    return REPO / "public_data" / "lvis" / "sample"


@pytest.fixture(scope="session")
def tiny_template(tiny_model_dir):
    """ms-swift's qwen3_vl template (train mode) over the tiny model's processor; no weights loaded."""
    from swift_plugins.training.calibration import load_template

    return load_template(tiny_model_dir)


# --------------------------------------------------------------------------- one analysis of the sample
ANALYSIS_LENGTHS = (4000, 8000, 12000, 16000)
ANALYSIS_EFF, ANALYSIS_WORLD, ANALYSIS_EPOCHS = 8, 2, 2


def analysis_argv(model, jsonl, out, cache, *extra):
    return ["--model_path", str(model), "--train_jsonl", str(jsonl), "--output_dir", str(out), "--cache_dir",
            str(cache), "--max_lengths", ",".join(map(str, ANALYSIS_LENGTHS)), "--effective_batch_size",
            str(ANALYSIS_EFF), "--world_size", str(ANALYSIS_WORLD), "--num_train_epochs", str(ANALYSIS_EPOCHS),
            *map(str, extra)]


@pytest.fixture(scope="session")
def sample_analysis(tiny_model_dir, sample_dir, tmp_path_factory) -> pathlib.Path:
    """scripts/analyze_token_lengths.py on the bundled sample, once per session (read it, do not write into it)."""
    from swift_plugins.analysis import token_analysis

    out = tmp_path_factory.mktemp("sample-analysis")
    token_analysis.run(token_analysis.options_from_argv(analysis_argv(tiny_model_dir, sample_dir / "train.jsonl",
                                                                      out, out / "cache")))
    return out


# --------------------------------------------------------------------------- record helpers
GOOD = {"images": ["img.png"], "width": 40, "height": 20, "objects": [{"desc": "cat", "poly": [1, 2, 10, 2, 5, 8]}]}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "img.png")
    return tmp_path


def write_lines(folder, lines, name="d.jsonl"):
    path = folder / name
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line))
                     .encode()) + b"\n")
    return path


def first_error(folder, line, check_images=True):
    path = write_lines(folder, [line])
    with pytest.raises(RecordError) as info:
        list(iter_records(path, check_images=check_images))
    e = info.value
    assert str(e) == f"{e.path}:{e.line}: {e.field}: {e.message}"
    assert e.path == str(path) and e.line == 1
    return e


def with_(**changes):
    rec = json.loads(json.dumps(GOOD))
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


def obj(**o):
    return with_(objects=[o])


# --------------------------------------------------------------------------- config helpers
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


# --------------------------------------------------------------------------- e2e helpers
def make_lvis_jsonl(folder: pathlib.Path, n: int, name: str = "train.jsonl", object_counts=None) -> pathlib.Path:
    """``n`` small LVIS-format records with short answers (fast on CPU), images next to the JSONL.

    Default: 2 objects each (a cat box, a dog polygon). ``object_counts[i]`` (cycled) gives record
    i that many objects instead, for varied lengths (packs of several samples, dense records).
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        image = f"{pathlib.Path(name).stem}{i}.png"
        w, h = 96 + 32 * (i % 3), 96
        Image.new("RGB", (w, h), (40 * i % 255, 90, 140)).save(folder / image)
        objects = [{"desc": "cat", "bbox_2d": [2, 3, 40, 50 + i]}, {"desc": "dog", "poly": [10, 12, 60, 14, 30, 70]}]
        if object_counts is not None:
            k = object_counts[i % len(object_counts)]
            objects = [{"desc": ("cat", "dog", "red cup")[j % 3], "poly": [j % 90, 5, 80, (7 * j) % 90, 40, 88]}
                       for j in range(k)]
        lines.append(json.dumps({"images": [image], "width": w, "height": h, "objects": objects}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_overrides(model_dir, data_dir, out_dir, *extra):
    return ["--model.model", str(model_dir), "--custom.train_jsonl", str(data_dir / "train.jsonl"),
            "--custom.val_jsonl", "null", "--training.output_dir", str(out_dir), "--training.add_version", "false",
            *map(str, extra)]


def run(cmd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


