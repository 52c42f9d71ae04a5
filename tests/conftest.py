"""Shared fixtures (the tiny offline Qwen3-VL is built once per test session) and the collection order.

Plain helper functions and constants are in ``tests/helpers.py`` (``from helpers import ...``).
"""
from __future__ import annotations

import json
import pathlib
import sys

import pytest
from PIL import Image

from helpers import BASE, REPO, WHITESPACE_BYTES, analysis_argv, child_environment, write


VENV_BIN = pathlib.Path(sys.executable).parent


def pytest_collection_modifyitems(items):
    """The end-to-end file (about 135 s of runs) first: under `make test`'s two workers (`--dist
    loadfile`) one worker starts on it at once and the other takes the rest, instead of it
    starting last on a worker that already ran half the suite while the other idles."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/e2e/"))  # stable: order otherwise kept


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """Factory: ``tiny_family_dir("qwen2_5_vl")`` -> path of that family's tiny checkpoint
    (scripts/make_tiny_model.py --family MODEL_TYPE), each family built at most once per session."""
    from swift_plugins.dev.tiny_model import build

    built: dict[str, pathlib.Path] = {}

    def get(model_type: str) -> pathlib.Path:
        if model_type not in built:
            folder = tmp_path_factory.mktemp("models") / f"tiny-{model_type.replace('_', '-')}"
            built[model_type] = build(folder, family_name=model_type)
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_family_dir) -> pathlib.Path:
    """Path of the tiny Qwen3-VL checkpoint (scripts/make_tiny_model.py), built once per session."""
    return tiny_family_dir("qwen3_vl")


@pytest.fixture(scope="session")
def swift_cli() -> str:
    """The `swift` console script of the interpreter running the tests."""
    return str(VENV_BIN / "swift")


@pytest.fixture()
def subprocess_env() -> dict:
    return child_environment()


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    """The bundled LVIS-format sample (public_data/lvis/sample)."""
    return REPO / "public_data" / "lvis" / "sample"


@pytest.fixture(scope="session")
def tiny_template(tiny_model_dir):
    """ms-swift's qwen3_vl template (train mode) over the tiny model's processor; no weights loaded."""
    from swift_plugins.training.calibration import load_template

    return load_template(tiny_model_dir)


@pytest.fixture(scope="session")
def counter(tiny_template):
    """The LengthCounter calibrated on ``tiny_template`` (pure counting after this)."""
    from swift_plugins.training.calibration import counter_from_template

    return counter_from_template(tiny_template)


@pytest.fixture(scope="session")
def sample_analysis(tiny_model_dir, sample_dir, tmp_path_factory) -> pathlib.Path:
    """scripts/analyze_token_lengths.py on the bundled sample, once per session (read it, do not write into it)."""
    from swift_plugins.analysis import token_analysis
    from swift_plugins.analyze import load_counter

    out = tmp_path_factory.mktemp("sample-analysis")
    token_analysis.run(token_analysis.options_from_argv(analysis_argv(tiny_model_dir, sample_dir / "train.jsonl",
                                                                      out, out / "cache")), load_counter)
    return out


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "img.png")
    return tmp_path


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


@pytest.fixture(scope="session")
def plain_model_dir(tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    """The tiny model without Qwen's whitespace-only merges (whitespace never merges: no seams)."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen3-vl-plain"
    out.mkdir()
    for p in pathlib.Path(tiny_model_dir).iterdir():
        (out / p.name).symlink_to(p) if p.name == "model.safetensors" else (out / p.name).write_bytes(p.read_bytes())
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    merges = tok["model"]["merges"]
    tok["model"]["merges"] = [m for m in merges if not set(m[0] + m[1]) <= WHITESPACE_BYTES]
    assert 1000 < len(merges) - len(tok["model"]["merges"]) < 10000  # 5,955 of 294,166
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def plain_template(plain_model_dir):
    """ms-swift's qwen3_vl template (train mode) over the no-seam tokenizer."""
    from swift_plugins.training.calibration import load_template

    return load_template(plain_model_dir)
