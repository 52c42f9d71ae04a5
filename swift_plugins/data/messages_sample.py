"""The bundled messages-format sample: drawn scenes and conversations about them, same bytes every run.

``make_messages_sample()`` -> ``public_data/messages/sample/``: ``train.jsonl`` (40 rows),
``val.jsonl`` (10 rows), ``images/`` (JPEG, some PNG) and ``MANIFEST.json``. Each image is a
scene of 1-5 filled shapes (desc "<color> <shape>", box known exactly) at an awkward stored size
(sides not multiples of 32, 50x40 below Qwen3-VL's minimum pixels, 1000x200 wide, 1280x720); each
row is one task about its scenes, cycling so that every split has each kind::

    caption       <image>Describe the image.            -> "A blue background with 2 shapes: ..."
    vqa           <image>How many shapes ...?           -> "3."
    grounding     <image>Locate every circle. ...       -> '[{"bbox_2d": [120, 85, 410, 520], "label": "red circle"}]'
                                                           (0-1000 coordinates, ``emit_coords`` norm1000)
    multi_image   Image 1: <image> Image 2: <image> ... -> "The first image: 4 shapes against 2."
    multi_turn    background, count, then a box, in three rounds about one image
    second_image  a caption, then a question about a second image given in the later turn
    text_only     one row without images

About a third of the rows start with a system prompt (some in French / Chinese). Deterministic:
``random.Random(f"messages:{split}:{seed}")``, PIL drawing, and PIL's JPEG / PNG encoders;
``MANIFEST.json`` records the encoder versions (another libjpeg-turbo or zlib may write the same
pixels as other bytes).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional

from swift_plugins.data.conversation import emit_coords
from swift_plugins.data.reader import dump_record
from swift_plugins.data.synthetic import _SAMPLE_COLORS, jpeg_encoder_versions
from swift_plugins.files import atomic_write_bytes, atomic_write_text

__all__ = ["DEFAULT_MESSAGES_SAMPLE_DIR", "TASKS", "main_messages_sample", "make_messages_sample"]

DEFAULT_MESSAGES_SAMPLE_DIR = Path(__file__).resolve().parents[2] / "public_data" / "messages" / "sample"
TASKS = ("caption", "vqa", "grounding", "multi_image", "multi_turn", "caption", "vqa", "second_image", "grounding",
         "multi_turn")
TEXT_ONLY_ROW = 17  # train row without images
# (width, height): awkward stored sizes, drawn per image
SIZES = ((640, 480), (500, 375), (333, 500), (1000, 200), (96, 96), (50, 40), (1280, 720), (427, 640), (300, 301),
         (700, 233))
SHAPES = ("circle", "square", "rectangle", "triangle", "ellipse")
SYSTEM_PROMPTS = ("You are a careful visual assistant. Answer briefly.",
                  "Réponds en une phrase, sans détails inutiles.",
                  "你是一个严谨的视觉助手。请简洁回答。",
                  "Coordinates are integers from 0 to 1000, relative to the image width and height.")
CAPTION_PROMPTS = ("<image>Describe the image.", "<image>\nWhat does this picture show?",
                   "Give a one-sentence caption. <image>")
GROUNDING_PROMPT = ('<image>Locate every {shape} in the image. Answer with a JSON list of {{"bbox_2d": [x1, y1, x2, '
                    'y2], "label": name}}, coordinates from 0 to 1000.')


def _scene(rng: random.Random, size: tuple[int, int]):
    """A PIL image of 1-5 shapes on a plain background and its objects [{"desc", "box"}] (pixel boxes)."""
    from PIL import Image, ImageDraw

    w, h = size
    colors = list(_SAMPLE_COLORS)
    bg = rng.choice(colors)
    im = Image.new("RGB", (w, h), _SAMPLE_COLORS[bg])
    draw = ImageDraw.Draw(im)
    objects = []
    for _ in range(rng.randint(1, 5)):
        shape = rng.choice(SHAPES)
        color = rng.choice([c for c in colors if c != bg])
        bw = max(4, round(w * rng.uniform(0.15, 0.45)))
        bh = bw if shape in ("circle", "square") else max(4, round(h * rng.uniform(0.15, 0.45)))
        bw, bh = min(bw, w - 1), min(bh, h - 1)
        x1, y1 = rng.randint(0, w - 1 - bw), rng.randint(0, h - 1 - bh)
        box = [x1, y1, x1 + bw, y1 + bh]
        fill = _SAMPLE_COLORS[color]
        if shape in ("circle", "ellipse"):
            draw.ellipse(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(x1, y1 + bh), (x1 + bw // 2, y1), (x1 + bw, y1 + bh)], fill=fill)
        else:
            draw.rectangle(box, fill=fill)
        objects.append({"desc": f"{color} {shape}", "box": box})
    return im, {"background": bg, "objects": objects, "size": size}


def _caption(scene) -> str:
    descs = [("an " if o["desc"][0] in "aeiou" else "a ") + o["desc"] for o in scene["objects"]]
    listed = descs[0] if len(descs) == 1 else ", ".join(descs[:-1]) + " and " + descs[-1]
    n = len(descs)
    return f"A {scene['background']} background with {n} shape{'s' if n > 1 else ''}: {listed}."


def _boxes(scene, shape: Optional[str] = None) -> str:
    w, h = scene["size"]
    found = [{"bbox_2d": emit_coords(o["box"], w, h, "norm1000"), "label": o["desc"]}
             for o in scene["objects"] if shape is None or o["desc"].endswith(" " + shape)]
    return json.dumps(found, ensure_ascii=False)


def _vqa(rng: random.Random, scene) -> tuple[str, str]:
    objects = scene["objects"]
    kind = rng.randrange(3)
    if kind == 0:
        return "<image>How many shapes are in the image?", f"{len(objects)}."
    if kind == 1:
        largest = max(objects, key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
        return "What color is the largest shape?\n<image>", largest["desc"].split(" ")[0].capitalize() + "."
    probe = f"{rng.choice(list(_SAMPLE_COLORS))} {rng.choice(SHAPES)}"
    answer = "Yes." if any(o["desc"] == probe for o in objects) else "No."
    return f"<image>Is there a {probe} in this picture?", answer


def _row(rng: random.Random, task: str, scenes: list) -> list[dict]:
    """The turns of one row (without the optional system prompt); ``scenes`` has the task's images."""
    u, a = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
    s0 = scenes[0] if scenes else None
    if task == "caption":
        return [u(rng.choice(CAPTION_PROMPTS)), a(_caption(s0))]
    if task == "vqa":
        question, answer = _vqa(rng, s0)
        return [u(question), a(answer)]
    if task == "grounding":
        shape = rng.choice([o["desc"].split(" ")[1] for o in s0["objects"]])
        return [u(GROUNDING_PROMPT.format(shape=shape)), a(_boxes(s0, shape))]
    if task == "multi_image":
        n1, n2 = len(scenes[0]["objects"]), len(scenes[1]["objects"])
        verdict = ("They have the same number of shapes" if n1 == n2 else
                   f"The {'first' if n1 > n2 else 'second'} image") + f": {n1} shapes against {n2}."
        return [u("Image 1: <image>\nImage 2: <image>\nWhich image has more shapes?"), a(verdict)]
    if task == "multi_turn":
        shape = s0["objects"][0]["desc"]
        return [u("<image>What is the background color?"), a(s0["background"].capitalize() + "."),
                u("How many shapes are there?"), a(f"{len(s0['objects'])}."),
                u(f"Where is the {shape}? Give its box from 0 to 1000."),
                a(_boxes({**s0, "objects": s0["objects"][:1]}))]
    if task == "second_image":
        same = len(scenes[0]["objects"]) == len(scenes[1]["objects"])
        return [u(rng.choice(CAPTION_PROMPTS)), a(_caption(s0)),
                u("Now this one: <image> Does it have as many shapes as the first?"),
                a(("Yes" if same else "No") + f" - it has {len(scenes[1]['objects'])}:\n- " +
                  "\n- ".join(o["desc"] for o in scenes[1]["objects"]))]
    if task == "text_only":
        return [u("Which shapes appear in these pictures?"), a("Circles, squares, rectangles, triangles and "
                                                               "ellipses, in eight colors.")]
    raise ValueError(f"task: {task!r}")


def _split(out: Path, split: str, n: int, seed: int, quality: int) -> dict:
    rng = random.Random(f"messages:{split}:{seed}")
    lines, tasks, images = [], Counter(), 0
    system_rows = multi_turn_rows = multi_image_rows = 0
    for i in range(n):
        task = "text_only" if split == "train" and i == TEXT_ONLY_ROW else TASKS[i % len(TASKS)]
        count = {"multi_image": 2, "second_image": 2, "text_only": 0}.get(task, 1)
        names, scenes = [], []
        for k in range(count):
            im, scene = _scene(rng, rng.choice(SIZES))
            png = (i + k) % 7 == 3  # a few PNGs next to the JPEGs
            name = f"images/{split}_{i:03d}_{k}.{'png' if png else 'jpg'}"
            buf = io.BytesIO()
            im.save(buf, format="PNG") if png else im.save(buf, format="JPEG", quality=quality)
            atomic_write_bytes(out / name, buf.getvalue())
            names.append(name)
            scenes.append(scene)
        messages = _row(rng, task, scenes)
        if rng.random() < 0.35:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            system_rows += 1
        record = {"messages": messages, "images": names} if names else {"messages": messages}
        lines.append(dump_record(record))
        tasks[task] += 1
        images += count
        multi_turn_rows += sum(m["role"] == "assistant" for m in messages) > 1
        multi_image_rows += count > 1
    atomic_write_text(out / f"{split}.jsonl", "".join(lines))
    return {"records": n, "images": images, "tasks": dict(sorted(tasks.items())), "with_system": system_rows,
            "multi_turn": multi_turn_rows, "multi_image": multi_image_rows}


def encoder_versions() -> dict:
    """JPEG and PNG bytes are reproducible for given encoders; other versions may differ in the bits."""
    from PIL import features

    return {**jpeg_encoder_versions(), "zlib": features.version("zlib")}


def make_messages_sample(out_dir=DEFAULT_MESSAGES_SAMPLE_DIR, *, seed: int = 3, num_train: int = 40,
                         num_val: int = 10, quality: int = 60) -> dict:
    """Write ``train.jsonl``, ``val.jsonl``, ``images/`` and ``MANIFEST.json`` under ``out_dir`` (images/ replaced)."""
    out = Path(out_dir)
    if (out / "images").exists():
        shutil.rmtree(out / "images")  # no stale images from an earlier, larger sample
    stats = {split: _split(out, split, n, seed, quality) for split, n in (("train", num_train), ("val", num_val))}
    stats["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    atomic_write_text(out / "MANIFEST.json", json.dumps(
        {"generator": "public_data/scripts/make_messages_sample.py", "seed": seed, "quality": quality,
         "encoder": encoder_versions(), "stats": stats}, indent=1, ensure_ascii=False) + "\n")
    return stats


def main_messages_sample(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description="Write the bundled messages-format sample (deterministic).")
    p.add_argument("--out", default=str(DEFAULT_MESSAGES_SAMPLE_DIR), help="output folder")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--num_train", type=int, default=40)
    p.add_argument("--num_val", type=int, default=10)
    p.add_argument("--quality", type=int, default=60, help="JPEG quality")
    a = p.parse_args(argv)
    stats = make_messages_sample(a.out, seed=a.seed, num_train=a.num_train, num_val=a.num_val, quality=a.quality)
    print(json.dumps(stats, indent=1))
    return 0
