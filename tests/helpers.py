"""Plain helpers and constants the tests share (fixtures live in conftest.py).

Importable as ``from helpers import ...`` from every test module: ``tests/`` has no
``__init__.py``, so pytest (import mode ``prepend``) puts ``tests/`` on ``sys.path`` when it loads
``tests/conftest.py``, before any test module. ``conftest.py`` imports this module first, so
:data:`PRISTINE_ENV` is the environment before any test ran.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import textwrap

import pytest
from PIL import Image

from swift_plugins.data import RecordError, iter_records

REPO = pathlib.Path(__file__).resolve().parents[1]
# The environment before any test ran (see the module docstring): ms-swift sets variables in-process (TENSORBOARD_LOGGING_DIR
# with setdefault, RANK / WORLD_SIZE / NPROC_PER_NODE, ...) that must not leak into child runs.
PRISTINE_ENV = dict(os.environ)


def child_environment() -> dict:
    """Environment for child training processes: offline, no GPU lookups, nothing ms-swift set in-process."""
    env = dict(PRISTINE_ENV)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    env.pop("NPROC_PER_NODE", None)
    return env


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- one analysis of the sample
ANALYSIS_LENGTHS = (4000, 8000, 12000, 16000)
ANALYSIS_EFF, ANALYSIS_WORLD, ANALYSIS_EPOCHS = 8, 2, 2


def analysis_argv(model, jsonl, out, cache, *extra):
    return ["--model_path", str(model), "--train_jsonl", str(jsonl), "--output_dir", str(out), "--cache_dir",
            str(cache), "--max_lengths", ",".join(map(str, ANALYSIS_LENGTHS)), "--effective_batch_size",
            str(ANALYSIS_EFF), "--world_size", str(ANALYSIS_WORLD), "--num_train_epochs", str(ANALYSIS_EPOCHS),
            *map(str, extra)]


# --------------------------------------------------------------------------- record helpers
GOOD = {"images": ["img.png"], "width": 40, "height": 20, "objects": [{"desc": "cat", "poly": [1, 2, 10, 2, 5, 8]}]}


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


def save_image(path, size, mode: str = "RGB", **save_kwargs) -> pathlib.Path:
    """A real image file of ``size`` (w, h) in ``mode``; the format follows the suffix."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 60), "RGBA": (10, 200, 30, 128), "L": 90, "P": 3, "1": 1}[mode]
    Image.new(mode, size, color).save(path, **save_kwargs)
    return path


def save_corrupt_png(path, size=(40, 20)) -> pathlib.Path:
    """A PNG whose header (and every chunk CRC) is fine and whose compressed pixel data is not: PIL
    reads its size, decoding it fails (``OSError``), as training's image loading would."""
    import zlib

    path = save_image(path, size)
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    n = int.from_bytes(data[at - 4:at], "big")
    for k in range(at + 4 + 2, at + 4 + n):  # keep the zlib header's 2 bytes, scramble the stream
        data[k] ^= 0x5A
    data[at + 4 + n:at + 8 + n] = zlib.crc32(bytes(data[at:at + 4 + n])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
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
