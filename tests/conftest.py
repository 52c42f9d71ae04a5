"""Shared fixtures: the tiny offline Qwen3-VL is built once per test session."""
from __future__ import annotations

import json
import os
import pathlib
import sys
import subprocess
import textwrap

import pytest
from PIL import Image

from swift_plugins.data import RecordError, iter_records

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent
# The environment before any test ran: ms-swift sets variables in-process (TENSORBOARD_LOGGING_DIR
# with setdefault, RANK / WORLD_SIZE / NPROC_PER_NODE, ...) that must not leak into child runs.
PRISTINE_ENV = dict(os.environ)


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


@pytest.fixture(scope="session")
def counter(tiny_template):
    """The LengthCounter calibrated on ``tiny_template`` (pure counting after this)."""
    from swift_plugins.training.calibration import counter_from_template

    return counter_from_template(tiny_template)


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


# Four images of four different patch grids (not multiples of 32 on every side)
GRID_SIZES = [(64, 96), (128, 64), (96, 96), (32, 160)]


def detection_swift_rows(folder, sizes=GRID_SIZES) -> list[dict]:
    """One ms-swift row per image size: a detection answer of two objects, the image written to ``folder``."""
    rows = []
    for i, (w, h) in enumerate(sizes):
        image = pathlib.Path(folder) / f"img{i}.png"
        Image.new("RGB", (w, h), (i * 50, 100, 200 - i * 40)).save(image)
        answer = '[{"desc":"cat %d","bbox_2d":[1,2,3,%d]},{"desc":"dog","poly":[4,5,6,7,8,%d]}]' % (i, 7 * i, i)
        rows.append({"messages": [{"role": "user", "content": "<image>Detect all objects."},
                                  {"role": "assistant", "content": answer}], "images": [str(image)]})
    return rows


def tiny_overrides(model_dir, data_dir, out_dir, *extra):
    return ["--model.model", str(model_dir), "--custom.train_jsonl", str(data_dir / "train.jsonl"),
            "--custom.val_jsonl", "null", "--training.output_dir", str(out_dir), "--training.add_version", "false",
            *map(str, extra)]


def run(cmd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr




# --------------------------------------------------------------------------- messages-format helpers
# The tiny tokenizer is Qwen's real BPE, whose whitespace merges ("\n\n", "  ", " \n", ...) make a
# string tokenize differently when ms-swift joins it to "user\n" / "assistant\n" than when it is
# tokenized apart (seams). The control below removes every merge whose result is whitespace only.
WHITESPACE_BYTES = frozenset("ĠĊĉč")  # byte-level space, \n, \t, \r


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


def save_image(path, size, mode: str = "RGB", **save_kwargs) -> pathlib.Path:
    """A real image file of ``size`` (w, h) in ``mode``; the format follows the suffix."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 60), "RGBA": (10, 200, 30, 128), "L": 90, "P": 3, "1": 1}[mode]
    Image.new(mode, size, color).save(path, **save_kwargs)
    return path


def msg(role: str, content) -> dict:
    return {"role": role, "content": content}


# Awkward image files for exactness tests: sides not multiples of 32, below min pixels, wide and
# tall aspect ratios, palette / grayscale / alpha modes, JPEG and PNG.
AWKWARD_IMAGES = {"wide.png": ((1000, 30), "RGB"), "tall.jpg": ((30, 1000), "L"), "tiny.png": ((10, 10), "P"),
                  "odd.png": ((641, 479), "RGBA"), "small.jpg": ((33, 33), "RGB"), "mid.png": ((700, 500), "RGB")}


def awkward_messages_records(folder) -> list[dict]:
    """Hand-made messages records over :data:`AWKWARD_IMAGES` (written into ``folder/img``)."""
    for name, (size, mode) in AWKWARD_IMAGES.items():
        save_image(pathlib.Path(folder) / "img" / name, size, mode)
    u, a, s = (lambda c: msg("user", c)), (lambda c: msg("assistant", c)), (lambda c: msg("system", c))
    words = "the red cup sits left of a 12 cm box; café naïve 日本語 🐱 [3, 4]\n".split(" ")
    long_q = " ".join(words[i % len(words)] for i in range(600))
    long_a = " ".join(words[(7 * i) % len(words)] for i in range(1400))
    return [
        {"messages": [u("<image>Describe the image."), a("A red square on a blue background.")],
         "images": ["img/odd.png"]},
        {"messages": [s("You are a careful annotator."), u("Compare <image> and <image>."), a("The first is wider.")],
         "images": ["img/wide.png", "img/tall.jpg"]},
        {"messages": [u("<image>What is this?"), a("A cat."), u("And this one?<image>"), a("A dog."),
                      u("Which is bigger?"), a("The dog.")], "images": ["img/tiny.png", "img/small.jpg"]},
        {"messages": [s("\n\n  System with newlines \n"), u("\n\n<image>\n\nLook closely.  \n"),
                      a("\n\n  Leading newlines and spaces.\n\n"), u("  \n<image>"), a("   x  \n  \n")],
         "images": ["img/mid.png", "img/odd.png"]},
        {"messages": [u("<image>Qu'est-ce que c'est ? 日本語のテキスト 🐱 nai\u0308ve e\u0301"),
                      a("\u0301C'est un chat \u2014 猫 🐱 café\u00a0!")], "images": ["img/small.jpg"]},
        {"messages": [s("Answer at length."), u(long_q + "<image>" + long_q), a(long_a)], "images": ["img/mid.png"]},
        {"messages": [u("<image>Find the cup. Answer with JSON."),
                      a('[{"bbox_2d": [12, 40, 96, 130], "label": "cup"}, {"bbox_2d": [0, 0, 640, 479], '
                        '"label": "table"}]')], "images": ["img/odd.png"]},
        {"messages": [u("What is 2+2?"), a("4")]},
        {"messages": [u("Two views:<image><image>"), a(" ok")], "images": ["img/wide.png", "img/wide.png"]},
        {"messages": [u("<image>"), a("caption")], "images": ["img/tiny.png"]},
        {"messages": [s(""), u("<image>x"), a("y")], "images": ["img/tall.jpg"]},
        {"messages": [s("sys\n"), u("\n<image>\n"), a("\n first"), u("<image> second\n\n"), a("  second  "),
                      u("\n\n"), a("\tthird\n"), u("last <image>"), a("\n\n\nfourth")],
         "images": ["img/small.jpg", "img/mid.png", "img/wide.png"]},
        {"messages": [u("<image>Grounding, Qwen2-VL style"),
                      a("<|object_ref_start|>cup<|object_ref_end|><|box_start|>(12,40),(96,130)<|box_end|> "
                        "<ref-object> <bbox> <think>\nhm</think> {{ROUND0}}")], "images": ["img/odd.png"]},
    ]
