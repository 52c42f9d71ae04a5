"""Generated LVIS-like data: the bundled sample (drawn JPEGs) and the full-scale synthetic set.

Both follow the ``rescale_32_768_poly_20`` rules: stored sizes come from COCO-like source sizes
through :func:`swift_plugins.data.image_size.smart_resize` (factor 32, <= 786,432 px), polygons have
3-20 points, some objects are ``bbox_2d``. Objects per record are heavy-tailed like LVIS (seed
notes: 99,388 records, median 9, mean ~16.6): ``max(1, round(lognormal(ln 9, 1.11)))`` capped at
1,200. Measured on the default synthetic set (seed 0, 99,388 records): median 9, mean 16.748,
max 893, 1,513 records with 100+ objects; 20% bbox_2d, 8.95 points per polygon (the file's size:
public_data/README.md).

- :func:`make_sample` -> ``public_data/lvis/sample/``: 200 train + 40 val records with real JPEGs
  whose shapes are the objects (desc = "<color> <shape>"), plus awkward sizes (64x64, 32x2048,
  2048x32, 6400x32 = aspect ratio exactly 200, 1024x768 = exactly 786,432 px) and dense scenes
  of 100+ objects. Deterministic: ``random.Random(seed)`` and PIL's JPEG encoder give the same
  bytes every run; ``MANIFEST.json`` records the encoder versions (another Pillow / libjpeg-turbo
  may encode the same pixels into other bytes).
- :func:`make_synthetic_lvis` -> ``public_data/lvis/synthetic/train.jsonl`` (git-ignored):
  99,388 records by default, width/height only (image paths point to files that do not exist:
  read it with ``check_images=False``). numpy-vectorised per chunk of records.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

from swift_plugins.data.reader import dump_record
from swift_plugins.files import atomic_open, atomic_write_bytes, atomic_write_text
from swift_plugins.data.image_size import smart_resize

__all__ = ["LVIS_LIKE_CATEGORIES", "jpeg_encoder_versions", "make_sample", "make_synthetic_lvis", "main_sample", "main_synthetic",
           "object_count_stats"]

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLE_DIR = _REPO / "public_data" / "lvis" / "sample"
DEFAULT_SYNTHETIC_DIR = _REPO / "public_data" / "lvis" / "synthetic"

COUNT_MU, COUNT_SIGMA, COUNT_MAX = math.log(9), 1.11, 1200
BBOX_FRACTION = 0.2

# LVIS-style category names (desc = name with "_" -> " "), most frequent first (Zipf weights).
LVIS_LIKE_CATEGORIES = [
    "person", "car_(automobile)", "chair", "bottle", "cup", "book", "bowl", "banana", "umbrella", "handbag",
    "pole", "sign", "window", "wheel", "lamp", "plate", "napkin", "spoon", "fork", "knife", "cellular_telephone",
    "traffic_light", "bench", "clock", "vase", "pillow", "cushion", "flower_arrangement", "tree", "jacket",
    "baseball_cap", "hat", "shoe", "sunglasses", "backpack", "tennis_racket", "baseball_bat", "baseball_glove",
    "kite", "skateboard", "surfboard", "ski", "frisbee", "dog", "cat", "horse", "sheep", "cow", "elephant",
    "giraffe", "zebra", "bird", "bicycle", "motorcycle", "bus_(vehicle)", "truck", "boat", "airplane",
    "train_(railroad_vehicle)", "fire_hydrant", "parking_meter", "stop_sign", "street_sign", "streetlight",
    "orange_(fruit)", "apple", "broccoli", "carrot", "pizza", "doughnut", "cake", "sandwich", "hot_dog_(sausage)",
    "wineglass", "beer_bottle", "water_bottle", "glass_(drink_container)", "teapot", "mug", "jar", "tray",
    "laptop_computer", "computer_keyboard", "mouse_(computer_equipment)", "remote_control", "television_set",
    "monitor_(computer_equipment)", "speaker_(stereo_equipment)", "toilet", "sink", "faucet", "towel",
    "toothbrush", "refrigerator", "oven", "microwave_oven", "cabinet", "drawer", "shelf", "curtain", "painting",
    "poster", "magazine", "newspaper", "paper_plate", "box", "basket", "bucket", "flowerpot", "bracelet",
    "necklace", "wristwatch", "belt", "necktie", "glove", "sock", "boot", "scarf", "blanket", "teddy_bear",
    "balloon", "flag", "tag", "label", "license_plate", "headlight", "taillight", "windshield_wiper",
    "rearview_mirror", "tinfoil", "lettuce", "tomato", "onion", "cucumber", "lemon", "lime", "strawberry",
]

_SAMPLE_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
                  "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (250, 250, 250),
                  "black": (20, 20, 20)}
# shape -> number of polygon points (None: axis-aligned rectangle, emitted as bbox_2d; 0: blob of
# 7-20 jittered points)
_SAMPLE_SHAPES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "star": 10, "circle": 16,
                  "ellipse": 20, "blob": 0, "rectangle": None}


# ------------------------------------------------------------------------------- shared pieces
def _source_size(rng: random.Random) -> tuple[int, int]:
    """A COCO-like original (width, height): long side mostly 640, common aspect ratios."""
    long_side = rng.choices([640, 500, 427, 1024, 1280, 333], weights=[85, 5, 3, 3, 2, 2])[0]
    ratio = rng.choices([4 / 3, 3 / 2, 1.0, 16 / 9, None], weights=[45, 20, 8, 7, 20])[0]
    if ratio is None:
        ratio = rng.uniform(1.0, 2.2)
    short = max(1, round(long_side / ratio))
    return (long_side, short) if rng.random() < 0.7 else (short, long_side)


def _stored_size(rng: random.Random) -> tuple[int, int]:
    w, h = _source_size(rng)
    h1, w1 = smart_resize(h, w, 32, 4 * 32 * 32, 768 * 32 * 32)
    return w1, h1


def _object_count(rng: random.Random) -> int:
    return min(COUNT_MAX, max(1, round(rng.lognormvariate(COUNT_MU, COUNT_SIGMA))))


def _polygon(rng: random.Random, cx: float, cy: float, rx: float, ry: float, n: int, w: int, h: int,
             regular: bool) -> list[int]:
    """A star-shaped (never self-intersecting) polygon of n points around (cx, cy), clamped to the image."""
    phase = rng.uniform(0, 2 * math.pi)
    pts = []
    for k in range(n):
        a = phase + 2 * math.pi * (k + (0 if regular else rng.uniform(-0.3, 0.3))) / n
        r = 1.0 if regular else rng.uniform(0.6, 1.0)
        if regular and n == 10 and k % 2:  # star: alternate inner radius
            r = 0.45
        pts += [min(w, max(0, round(cx + r * rx * math.cos(a)))), min(h, max(0, round(cy + r * ry * math.sin(a))))]
    return pts


def object_count_stats(counts: list[int]) -> dict:
    return {"records": len(counts), "objects": sum(counts), "median": statistics.median(counts),
            "mean": round(sum(counts) / len(counts), 3), "max": max(counts),
            "records_100_plus": sum(c >= 100 for c in counts)}


# ------------------------------------------------------------------------------------ sample
SAMPLE_AWKWARD_SIZES = {  # record index -> (width, height)
    3: (64, 64), 11: (32, 2048), 19: (2048, 32), 27: (6400, 32), 35: (1024, 768)}
SAMPLE_DENSE = {7: 110, 58: 145, 120: 180}  # record index -> object count (train)
VAL_DENSE = {5: 105}


def _sample_record(rng: random.Random, image_name: str, size, n_objects: int):
    from PIL import Image, ImageDraw
    w, h = size
    colors = list(_SAMPLE_COLORS)
    bg_name = rng.choice(colors)
    bg = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in _SAMPLE_COLORS[bg_name])
    im = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(im)
    objects = []
    for _ in range(n_objects):
        shape = rng.choice(list(_SAMPLE_SHAPES))
        color = rng.choice([c for c in colors if c != bg_name])
        # object size: small objects dominate dense scenes, like LVIS
        scale = rng.uniform(0.02, 0.08) if n_objects > 50 else rng.uniform(0.06, 0.3)
        rx = max(2.0, scale * min(w, h) * (1 if min(w, h) > 64 else 2) + 2)
        ry = rx * (rng.uniform(0.5, 0.8) if shape in ("ellipse", "rectangle") else 1.0)
        rx, ry = min(rx, (w - 1) / 2), min(ry, (h - 1) / 2)
        cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
        n = _SAMPLE_SHAPES[shape]
        desc = f"{color} {shape}"
        if n is None:
            box = [round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry)]
            box = [min(w, max(0, box[0])), min(h, max(0, box[1])), min(w, max(0, box[2])), min(h, max(0, box[3]))]
            draw.rectangle(box, fill=_SAMPLE_COLORS[color])
            objects.append({"desc": desc, "bbox_2d": box})
        else:
            regular = n > 0
            pts = _polygon(rng, cx, cy, rx, ry, n if regular else rng.randint(7, 20), w, h, regular=regular)
            draw.polygon(list(zip(pts[0::2], pts[1::2])), fill=_SAMPLE_COLORS[color])
            objects.append({"desc": desc, "poly": pts})
    record = {"images": [image_name], "width": w, "height": h, "objects": objects}
    return record, im


def _sample_split(out: Path, split: str, n: int, seed: int, quality: int, awkward: dict, dense: dict) -> list[int]:
    import io
    rng = random.Random(f"sample:{split}:{seed}")
    lines, counts = [], []
    for i in range(n):
        size = awkward.get(i) or _stored_size(rng)
        n_obj = dense.get(i) or min(60, _object_count(rng))  # the tail is given by `dense`
        name = f"images/{split}_{i:04d}.jpg"
        record, im = _sample_record(rng, name, size, n_obj)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        atomic_write_bytes(out / name, buf.getvalue())
        lines.append(dump_record(record))
        counts.append(n_obj)
    atomic_write_text(out / f"{split}.jsonl", "".join(lines))
    return counts


def make_sample(out_dir=DEFAULT_SAMPLE_DIR, *, seed: int = 2, num_train: int = 200, num_val: int = 40,
                quality: int = 60) -> dict:
    """Write ``train.jsonl``, ``val.jsonl``, ``images/`` under ``out_dir`` (images/ is replaced)."""
    out = Path(out_dir)
    if (out / "images").exists():
        shutil.rmtree(out / "images")  # no stale images from an earlier, larger sample
    stats = {}
    for split, n, awkward, dense in (("train", num_train, SAMPLE_AWKWARD_SIZES, SAMPLE_DENSE),
                                     ("val", num_val, {}, VAL_DENSE)):
        stats[split] = object_count_stats(_sample_split(out, split, n, seed, quality, awkward, dense))
    stats["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    atomic_write_text(out / "MANIFEST.json", json.dumps(
        {"generator": "public_data/scripts/make_sample.py", "seed": seed, "quality": quality,
         "encoder": jpeg_encoder_versions(), "stats": stats}, indent=1) + "\n")
    return stats


def jpeg_encoder_versions() -> dict:
    """JPEG bytes are reproducible for a given encoder; other versions may differ in the last bits."""
    import PIL
    from PIL import features
    return {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo")}


def main_sample(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description="Write the bundled LVIS-like sample (deterministic).")
    p.add_argument("--out", default=str(DEFAULT_SAMPLE_DIR), help="output folder")
    p.add_argument("--seed", type=int, default=2, help="2: the seed whose train/val medians (9/9) match LVIS")
    p.add_argument("--num_train", type=int, default=200)
    p.add_argument("--num_val", type=int, default=40)
    p.add_argument("--quality", type=int, default=60, help="JPEG quality")
    a = p.parse_args(argv)
    stats = make_sample(a.out, seed=a.seed, num_train=a.num_train, num_val=a.num_val, quality=a.quality)
    print(json.dumps(stats, indent=1))
    return 0


# ------------------------------------------------------------------------------ full synthetic
def make_synthetic_lvis(out_dir=DEFAULT_SYNTHETIC_DIR, *, num_records: int = 99_388, seed: int = 0,
                        chunk: int = 4096) -> dict:
    """Write ``out_dir/train.jsonl`` (no images) and ``out_dir/stats.json``; return the stats.

    Deterministic for a seed (and ``chunk``): sizes come from ``random.Random``, objects from one
    numpy Generator, drawn chunk by chunk in a fixed order.
    """
    import numpy as np
    out = Path(out_dir)
    rng = random.Random(f"synthetic:{seed}")
    nrng = np.random.default_rng(seed)
    cat_names = [c.replace("_", " ") for c in LVIS_LIKE_CATEGORIES]
    cat_p = 1.0 / np.arange(1, len(cat_names) + 1)
    cat_p /= cat_p.sum()
    counts_all, npoly, nbox, points = [], 0, 0, 0
    t0 = time.perf_counter()
    with atomic_open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for start in range(0, num_records, chunk):
            sizes = [_stored_size(rng) for _ in range(min(chunk, num_records - start))]
            c = _chunk_objects(nrng, sizes, cat_p)
            for i, objs in enumerate(_record_objects(c, cat_names)):
                w, h = sizes[i]
                f.write(dump_record({"images": [f"images/{start + i:012d}.jpg"], "width": w, "height": h,
                                     "objects": objs}))
            counts_all += c["counts"]
            nbox += sum(c["is_box"])
            npoly += len(c["is_box"]) - sum(c["is_box"])
            points += sum(c["npts"])
    stats = object_count_stats(counts_all)
    stats.update({"seed": seed, "polygons": npoly, "bboxes": nbox, "mean_points_per_polygon": round(points / npoly, 3),
                  "seconds": round(time.perf_counter() - t0, 2), "path": str(out / "train.jsonl")})
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    return stats


def _chunk_objects(nrng, sizes: list, cat_p) -> dict:
    """The objects of one chunk of records (stored ``sizes``), all drawn at once from ``nrng``:
    per record ``counts``; per object ``is_box``, ``npts`` (0 for a box), ``cats``, ``boxes`` and
    its polygon points at ``flat[offs[j]:offs[j] + 2 * npts[j]]``; plain lists."""
    import numpy as np
    m = len(sizes)
    counts = np.clip(np.rint(nrng.lognormal(COUNT_MU, COUNT_SIGMA, m)), 1, COUNT_MAX).astype(np.int64)
    n = int(counts.sum())
    rec_of = np.repeat(np.arange(m), counts)
    W = np.array([s[0] for s in sizes])[rec_of]
    H = np.array([s[1] for s in sizes])[rec_of]
    mins = np.minimum(W, H)
    # object radius: log-uniform 1.5% .. 35% of the short side, at least 2 px
    r = np.maximum(2.0, mins * np.exp(nrng.uniform(np.log(0.015), np.log(0.35), n)))
    rx, ry = np.minimum(r, W / 2), np.minimum(r * nrng.uniform(0.5, 1.0, n), H / 2)
    cx = rx + nrng.random(n) * (W - 2 * rx)
    cy = ry + nrng.random(n) * (H - 2 * ry)
    is_box = nrng.random(n) < BBOX_FRACTION
    npts = 3 + nrng.binomial(17, 0.35, n)
    npts[is_box] = 0
    cats = nrng.choice(len(cat_p), size=n, p=cat_p)
    # all polygon points of the chunk at once
    obj_of_pt = np.repeat(np.arange(n), npts)
    k = np.arange(obj_of_pt.size) - np.repeat(np.cumsum(npts) - npts, npts)
    ang = (nrng.uniform(0, 2 * np.pi, n)[obj_of_pt]
           + 2 * np.pi * (k + nrng.uniform(-0.3, 0.3, k.size)) / npts[obj_of_pt])
    rad = nrng.uniform(0.6, 1.0, k.size)
    flat = np.empty(2 * k.size, dtype=np.int64)
    flat[0::2] = np.clip(np.rint(cx[obj_of_pt] + rad * rx[obj_of_pt] * np.cos(ang)), 0, W[obj_of_pt])
    flat[1::2] = np.clip(np.rint(cy[obj_of_pt] + rad * ry[obj_of_pt] * np.sin(ang)), 0, H[obj_of_pt])
    boxes = np.stack([np.clip(np.rint(cx - rx), 0, W), np.clip(np.rint(cy - ry), 0, H),
                      np.clip(np.rint(cx + rx), 0, W), np.clip(np.rint(cy + ry), 0, H)], 1)
    return {"counts": counts.tolist(), "is_box": is_box.tolist(), "npts": npts.tolist(), "cats": cats.tolist(),
            "boxes": boxes.astype(np.int64).tolist(), "flat": flat.tolist(),
            "offs": (2 * (np.cumsum(npts) - npts)).tolist()}


def _record_objects(c: dict, cat_names: list):
    """Yield each record's object list from :func:`_chunk_objects`' arrays."""
    o = 0
    flat, offs, npts = c["flat"], c["offs"], c["npts"]
    for count in c["counts"]:
        objs = []
        for j in range(o, o + count):
            if c["is_box"][j]:
                objs.append({"desc": cat_names[c["cats"][j]], "bbox_2d": c["boxes"][j]})
            else:
                objs.append({"desc": cat_names[c["cats"][j]], "poly": flat[offs[j]:offs[j] + 2 * npts[j]]})
        o += count
        yield objs


def main_synthetic(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description="Write the full-scale synthetic LVIS-like JSONL (no images).")
    p.add_argument("--out", default=str(DEFAULT_SYNTHETIC_DIR), help="output folder (git-ignored by default)")
    p.add_argument("--num_records", type=int, default=99_388)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    stats = make_synthetic_lvis(a.out, num_records=a.num_records, seed=a.seed)
    print(json.dumps(stats, indent=1))
    return 0

