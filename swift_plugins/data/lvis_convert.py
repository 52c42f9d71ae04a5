"""LVIS v1 instances JSON + images -> ``rescale_32_768_poly_20``-style JSONL + resized JPEGs.

Per image (sorted by image id)::

    source image (w0 x h0) --smart_resize(factor 32, max 786,432 px)--> w1 x h1, JPEG q95
    annotation (category_id, segmentation = [part, part, ...])
      each part = one object {"desc": category name with "_" -> " ", ...}:
        < 3 points              -> dropped (counted: parts_dropped.under_3_points)
        > max_poly_points (20)  -> {"bbox_2d": bbox of the mapped part} (counted: parts_replaced_by_bbox)
        otherwise               -> {"poly": mapped points}
      mapping: x1 = floor(x * w1 / w0 + 0.5), y1 = floor(y * h1 / h0 + 0.5), clamped to [0, w1] x [0, h1]

The annotation's own ``bbox`` is not used: a multi-part annotation gets one object per part, each
with its own geometry. Objects follow annotation id, then part order (``to_swift_row`` orders
them for training). An image with no object left is not written (counted: images_without_objects).

``smart_resize`` (``swift_plugins.data.image_size``) is qwen-vl-utils 0.0.14's rule (the resize
ms-swift runs for Qwen3-VL), so training re-resizes a stored image to the same size (a no-op):
round each side to a multiple of ``factor`` (Python ``round``: halves to even, at least
``factor``); above ``max_pixels`` scale both sides by ``sqrt(h*w/max_pixels)`` and floor to the
factor; below ``min_pixels`` scale up and ceil. Example: 640x427 -> 640x416; 1000x700 -> 992x704.

Restartable: images are cut into shards of ``--shard_size`` in image-id order; a finished shard is
a JSON file in ``OUT/.work_<split>/`` written atomically after its images. A rerun skips shards
whose file exists, has no failed image and whose output images all exist (a failed image is
retried), then merges every shard in order into ``OUT/<split>.jsonl`` - so the output does not
depend on ``--num_workers``. The work folder's ``options.json`` refuses a rerun with other options.

Outputs: ``OUT/<split>.jsonl``, ``OUT/images/<image id, 12 digits>.jpg``,
``OUT/<split>.convert_summary.json`` (also printed) and ``OUT/<split>.convert_report.jsonl``
(failed images and dropped annotations, one JSON per line, ``--on_error skip``).
Invariant checked before writing: images_in = records + images_without_objects + images_failed.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Optional

from swift_plugins.data.reader import dump_record
from swift_plugins.data.records import ON_ERROR_CHOICES, RecordError, validate_record
from swift_plugins.errors import UserError, run_main
from swift_plugins.files import atomic_write_bytes, atomic_write_text
from swift_plugins.data.image_size import (MAX_ASPECT_RATIO, RESCALE_FACTOR, RESCALE_MAX_PIXELS, RESCALE_MIN_PIXELS,
                                           smart_resize)

__all__ = ["ConvertError", "ConvertOptions", "convert_lvis", "main"]


class ConvertError(UserError):
    """``{instances}: {where}: {field}: what is wrong (fix)`` - where = images[id=...] / annotations[id=...]."""

    def __init__(self, source: str, where: str, field: str, message: str, kind: str):
        self.source, self.where, self.field, self.message, self.kind = source, where, field, message, kind
        super().__init__(f"{source}: {where}: {field}: {message}")

    def __reduce__(self):
        return (ConvertError, (self.source, self.where, self.field, self.message, self.kind))

    def to_dict(self) -> dict:
        return {"where": self.where, "field": self.field, "kind": self.kind, "reason": self.message}


@dataclass(frozen=True)
class ConvertOptions:
    factor: int = RESCALE_FACTOR
    max_pixels: int = RESCALE_MAX_PIXELS
    min_pixels: int = RESCALE_MIN_PIXELS
    max_poly_points: int = 20
    jpeg_quality: int = 95
    shard_size: int = 64
    on_error: str = "raise"

    def __post_init__(self):
        problems = [f"{k}: expected a positive integer, got {getattr(self, k)!r}"
                    for k in ("factor", "max_pixels", "min_pixels", "max_poly_points", "shard_size")
                    if type(getattr(self, k)) is not int or getattr(self, k) <= 0]
        if not (type(self.jpeg_quality) is int and 1 <= self.jpeg_quality <= 100):
            problems.append(f"jpeg_quality: expected 1..100, got {self.jpeg_quality!r}")
        if self.on_error not in ON_ERROR_CHOICES:
            problems.append(f"on_error: {self.on_error!r} is not one of {list(ON_ERROR_CHOICES)}")
        if not problems and self.min_pixels > self.max_pixels:
            problems.append(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if problems:
            raise UserError("invalid convert options: " + "; ".join(problems))


# ------------------------------------------------------------------------------ one image
def _image_name(image_id: int) -> str:
    return f"images/{image_id:012d}.jpg"


def _find_source(info: dict, image_dir: str) -> list[str]:
    """Candidate source paths: file_name, the last two parts of coco_url (train2017/x.jpg), its name."""
    cands = []
    if info.get("file_name"):
        cands.append(os.path.join(image_dir, info["file_name"]))
    url = info.get("coco_url") or info.get("flickr_url")
    if url:
        parts = url.rstrip("/").split("/")
        cands += [os.path.join(image_dir, *parts[-2:]), os.path.join(image_dir, parts[-1])]
    return list(dict.fromkeys(cands))


def _round_clamp(v: float, hi: int) -> int:
    return min(hi, max(0, math.floor(v + 0.5)))


class _ImageProblem(Exception):
    """Why an image cannot be used: ``(field, message, kind)``, turned into a ConvertError by
    :meth:`_Outcome.fail_image`."""


class _Outcome:
    """What converting one image produced: counts and problems, and the policy for bad input."""

    def __init__(self, source: str, on_error: str):
        self.source, self.on_error = source, on_error
        self.counts: Counter = Counter()
        self.problems: list[dict] = []

    def result(self, record: Optional[dict] = None) -> dict:
        return {"record": record, "counts": dict(self.counts), "problems": self.problems}

    def fail_image(self, where: str, field: str, message: str, kind: str) -> dict:
        """A bad image: raise, or (skip) a result that holds only this failure."""
        err = ConvertError(self.source, where, field, message, kind)
        if self.on_error == "raise":
            raise err
        self.counts.clear()  # a failed image contributes nothing but its failure
        self.problems[:] = [err.to_dict()]
        self.counts[f"images_failed.{kind}"] += 1
        return self.result()

    def drop_annotation(self, where: str, field: str, message: str, kind: str) -> None:
        """A bad annotation: raise, or (skip) leave it out and report it."""
        err = ConvertError(self.source, where, field, message, kind)
        if self.on_error == "raise":
            raise err
        self.counts[f"annotations_dropped.{kind}"] += 1
        self.problems.append(err.to_dict())


def convert_image(info: dict, anns: list, categories: dict, opts: ConvertOptions, image_dir: str, out_dir: str,
                  source: str) -> dict:
    """One image -> ``{"record": record or None, "counts": Counter-like dict, "problems": [...]}``.

    Raises ConvertError (on_error raise) for a bad image or annotation; with skip, a bad image
    gives record None + a problem, a bad annotation is dropped + a problem.
    """
    out = _Outcome(source, opts.on_error)
    where = f"images[id={info['id']}]"
    try:
        path, (w0, h0) = _check_source(info, image_dir)
    except _ImageProblem as e:
        return out.fail_image(where, *e.args)
    h1, w1 = smart_resize(h0, w0, opts.factor, opts.min_pixels, opts.max_pixels)
    objects = []
    for ann in anns:
        objects += _annotation_objects(ann, categories, (w1 / w0, h1 / h0), (w1, h1), opts.max_poly_points, out)
    if not objects:
        out.counts["images_without_objects"] += 1
        return out.result()
    try:
        _write_resized(path, (w0, h0), (w1, h1), opts.jpeg_quality, os.path.join(out_dir, _image_name(info["id"])))
    except _ImageProblem as e:
        return out.fail_image(where, *e.args)
    record = {"images": [_image_name(info["id"])], "width": w1, "height": h1, "objects": objects}
    try:  # self-check with the project's one validator
        validate_record(record, path=source, line=0, check_images=False)
    except RecordError as e:  # pragma: no cover - a converter bug, never bad input
        raise AssertionError(f"converter produced an invalid record for {where}: {e}") from e
    out.counts["records"] += 1
    out.counts["objects"] += len(objects)
    return out.result(record)


def _check_source(info: dict, image_dir: str) -> tuple[str, tuple[int, int]]:
    """``(path, (w, h))`` of the image's source file, read from its header; raises
    :class:`_ImageProblem` when it cannot be used (missing, unreadable, size mismatch, aspect ratio)."""
    cands = _find_source(info, image_dir)
    path = next((c for c in cands if os.path.isfile(c)), None)
    if path is None:
        raise _ImageProblem("file_name" if info.get("file_name") else "coco_url",
                            f"image not found; tried {', '.join(cands) or 'nothing (no file_name or coco_url)'}",
                            "image_missing")
    from PIL import Image
    try:
        with Image.open(path) as src:  # header only; pixels are decoded once objects remain
            w0, h0 = src.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise _ImageProblem("file_name", f"cannot read {path}: {type(e).__name__}: {e}", "image_unreadable") from e
    if (info.get("width"), info.get("height")) != (w0, h0):
        raise _ImageProblem("width/height", f"the file is {w0}x{h0} but the instances file says "
                            f"{info.get('width')}x{info.get('height')} (annotations would be in another frame)",
                            "image_size_mismatch")
    if max(w0, h0) > MAX_ASPECT_RATIO * min(w0, h0):
        raise _ImageProblem("width/height", f"aspect ratio {max(w0, h0) / min(w0, h0):.1f} exceeds "
                            f"{MAX_ASPECT_RATIO} (Qwen-VL cannot resize it)", "aspect_ratio")
    return path, (w0, h0)


def _annotation_objects(ann: dict, categories: dict, scale: tuple, size: tuple, max_poly_points: int,
                        out: _Outcome) -> list[dict]:
    """The objects of one annotation (one per polygon part), mapped by ``scale`` and clamped to
    ``size``; a bad annotation gives none (``out`` raises or reports it)."""
    where = f"annotations[id={ann.get('id')}]"
    cat = categories.get(ann.get("category_id"))
    if cat is None:
        out.drop_annotation(where, "category_id", f"{ann.get('category_id')!r} is not in categories (fix the "
                            "instances file)", "unknown_category")
        return []
    seg = ann.get("segmentation")
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        out.drop_annotation(where, "segmentation", "not a list of polygon parts (RLE masks are not supported; "
                            "convert them to polygons first)", "not_polygons")
        return []
    bad = next((k for k, p in enumerate(seg) if len(p) % 2 or not all(
        type(v) in (int, float) and math.isfinite(v) for v in p)), None)
    if bad is not None:
        out.drop_annotation(where, f"segmentation[{bad}]", "odd length or non-numeric values (fix the instances "
                            "file)", "malformed_part")
        return []
    desc, (sx, sy), (w1, h1) = cat.replace("_", " "), scale, size
    objects = []
    for part in seg:
        if len(part) // 2 < 3:
            out.counts["parts_dropped.under_3_points"] += 1
            continue
        pts = [_round_clamp(v * (sx if i % 2 == 0 else sy), w1 if i % 2 == 0 else h1) for i, v in enumerate(part)]
        if len(part) // 2 > max_poly_points:
            xs, ys = pts[0::2], pts[1::2]
            objects.append({"desc": desc, "bbox_2d": [min(xs), min(ys), max(xs), max(ys)]})
            out.counts["parts_replaced_by_bbox"] += 1
        else:
            objects.append({"desc": desc, "poly": pts})
    return objects


def _write_resized(path: str, size0: tuple, size1: tuple, quality: int, dest: str) -> None:
    """Decode, resize and write the JPEG atomically; :class:`_ImageProblem` if the pixels
    cannot be decoded."""
    from PIL import Image
    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated / corrupt pixel data
        raise _ImageProblem("file_name", f"cannot decode {path}: {type(e).__name__}: {e}", "image_unreadable") from e
    if size1 != size0:
        im = im.resize(size1, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(dest, buf.getvalue())


# ------------------------------------------------------------------------------------ shards
def _shard_path(work: str, k: int) -> str:
    return os.path.join(work, f"shard_{k:06d}.json")


def _run_shard(task) -> tuple[int, int]:
    k, infos, anns_by_image, categories, opts, image_dir, out_dir, work, source = task
    results = [convert_image(info, anns_by_image.get(info["id"], []), categories, opts, image_dir, out_dir, source)
               for info in infos]
    shard = {"shard": k, "image_ids": [i["id"] for i in infos],
             "records": [r["record"] for r in results if r["record"] is not None],
             "counts": dict(sum((Counter(r["counts"]) for r in results), Counter())),
             "problems": [p for r in results for p in r["problems"]],
             "failed": sum(1 for r in results for key in r["counts"] if key.startswith("images_failed."))}
    atomic_write_text(_shard_path(work, k), json.dumps(shard, ensure_ascii=False))
    return k, len(infos)


def _shard_done(work: str, out_dir: str, k: int, ids: list) -> Optional[dict]:
    try:
        with open(_shard_path(work, k), encoding="utf-8") as f:
            shard = json.load(f)
    except (OSError, ValueError):
        return None
    if shard.get("image_ids") != ids or shard.get("failed"):
        return None
    if not all(os.path.isfile(os.path.join(out_dir, r["images"][0])) for r in shard["records"]):
        return None
    return shard


def convert_lvis(instances: str, image_dir: str, out_dir: str, *, split: str = "train",
                 options: Optional[ConvertOptions] = None, num_workers: int = 0, progress: bool = True) -> dict:
    """Convert; return the summary dict (also written to ``OUT/<split>.convert_summary.json``)."""
    opts = options or ConvertOptions()
    instances = os.fspath(instances)
    infos, anns_by_image, categories = _load_instances(instances)
    work = os.path.join(out_dir, f".work_{split}")
    _check_work_folder(work, {"options": asdict(opts), "instances": os.path.abspath(instances),
                              "image_dir": os.path.abspath(image_dir), "num_images": len(infos)})
    shards = [infos[i:i + opts.shard_size] for i in range(0, len(infos), opts.shard_size)]
    todo = [k for k, s in enumerate(shards) if _shard_done(work, out_dir, k, [i["id"] for i in s]) is None]
    skipped_done = len(infos) - sum(len(shards[k]) for k in todo)
    tasks = [(k, shards[k], {i["id"]: anns_by_image.get(i["id"], []) for i in shards[k]}, categories, opts,
              image_dir, out_dir, work, instances) for k in todo]
    _run_tasks(tasks, num_workers, total=len(infos), initial=skipped_done, desc=f"convert {split}",
               progress=progress)
    counts, problems, lines = _merge_shards(work, out_dir, shards)
    summary = _summary(counts, instances, split, out_dir, len(infos), skipped_done, opts)
    atomic_write_text(os.path.join(out_dir, f"{split}.jsonl"), "".join(lines))
    atomic_write_text(os.path.join(out_dir, f"{split}.convert_report.jsonl"),
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems))
    atomic_write_text(os.path.join(out_dir, f"{split}.convert_summary.json"), json.dumps(summary, indent=1) + "\n")
    return summary


def _load_instances(instances: str) -> tuple[list, dict, dict]:
    """(images sorted by id, image id -> annotations sorted by id, category id -> name)."""
    with open(instances, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ConvertError(instances, "<file>", key, "missing or not a list (give an LVIS v1 instances JSON)",
                               "bad_instances")
    anns_by_image: dict[Any, list] = defaultdict(list)
    for ann in sorted(data["annotations"], key=lambda a: a.get("id", 0)):
        anns_by_image[ann.get("image_id")].append(ann)
    categories = {c["id"]: c["name"] for c in data["categories"]}
    return sorted(data["images"], key=lambda i: i["id"]), anns_by_image, categories


def _check_work_folder(work: str, fingerprint: dict) -> None:
    """Create the restart folder with the run's fingerprint, or refuse one made with other inputs."""
    os.makedirs(work, exist_ok=True)
    fp_path = os.path.join(work, "options.json")
    if not os.path.exists(fp_path):
        atomic_write_text(fp_path, json.dumps(fingerprint, indent=1))
        return
    with open(fp_path, encoding="utf-8") as f:
        old = json.load(f)
    if old != fingerprint:
        raise UserError(f"{work}: made by a run with other inputs or options ({old}); "
                        f"delete {work} to start over, or rerun with the same options")


def _run_tasks(tasks: list, num_workers: int, *, total: int, initial: int, desc: str, progress: bool) -> None:
    """Convert the shards still to do, in a process pool when ``num_workers > 1``."""
    from tqdm import tqdm
    bar = tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not progress)
    try:
        if num_workers and num_workers > 1 and len(tasks) > 1:
            import multiprocessing
            with multiprocessing.Pool(min(num_workers, len(tasks))) as pool:
                for _, n in pool.imap_unordered(_run_shard, tasks):
                    bar.update(n)
        else:
            for task in tasks:
                bar.update(_run_shard(task)[1])
    finally:
        bar.close()


def _merge_shards(work: str, out_dir: str, shards: list) -> tuple[Counter, list, list]:
    """Every shard in order: (counts, problems, record lines); shards with failed images are
    merged too (and retried by the next run)."""
    counts: Counter = Counter()
    problems, lines = [], []
    for k, s in enumerate(shards):
        shard = _shard_done(work, out_dir, k, [i["id"] for i in s])
        if shard is None:  # has failed images (skip policy)
            with open(_shard_path(work, k), encoding="utf-8") as f:
                shard = json.load(f)
        counts.update(shard["counts"])
        problems += shard["problems"]
        lines += [dump_record(r) for r in shard["records"]]
    return counts, problems, lines


def _summary(counts: Counter, instances: str, split: str, out_dir: str, images_in: int, skipped_done: int,
             opts: ConvertOptions) -> dict:
    """The summary, after checking images_in = records + without objects + failed."""
    def group(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

    summary = {
        "instances": instances, "split": split, "out_jsonl": os.path.join(out_dir, f"{split}.jsonl"),
        "images_in": images_in,
        "images_processed_this_run": images_in - skipped_done,
        "images_skipped_done": skipped_done,
        "records": counts["records"],
        "images_without_objects": counts["images_without_objects"],
        "images_failed": group("images_failed."),
        "objects": counts["objects"],
        "parts_replaced_by_bbox": counts["parts_replaced_by_bbox"],
        "parts_dropped": group("parts_dropped."),
        "annotations_dropped": group("annotations_dropped."),
        "options": asdict(opts),
    }
    accounted = summary["records"] + summary["images_without_objects"] + sum(summary["images_failed"].values())
    if accounted != images_in:  # pragma: no cover - bookkeeping bug guard
        raise AssertionError(f"images_in {images_in} != records + without objects + failed = {accounted}")
    return summary


def _main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--instances", required=True, help="LVIS v1 instances JSON (e.g. lvis_v1_train.json)")
    p.add_argument("--image_dir", required=True,
                   help="folder with the source images (file_name, or train2017/NAME.jpg / NAME.jpg from coco_url)")
    p.add_argument("--out_dir", required=True, help="output folder: <split>.jsonl, images/, summary, report")
    p.add_argument("--split", default="train", help="output name: <out_dir>/<split>.jsonl")
    d = ConvertOptions()
    p.add_argument("--factor", type=int, default=d.factor, help="each stored side is a multiple of this")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels, help="max stored area (768 * 32 * 32)")
    p.add_argument("--min_pixels", type=int, default=d.min_pixels, help="min stored area (qwen-vl-utils default)")
    p.add_argument("--max_poly_points", type=int, default=d.max_poly_points,
                   help="a polygon part with more points becomes its bbox_2d")
    p.add_argument("--jpeg_quality", type=int, default=d.jpeg_quality)
    p.add_argument("--shard_size", type=int, default=d.shard_size, help="images per restart unit")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="processes (0/1: in-process)")
    p.add_argument("--on_error", choices=ON_ERROR_CHOICES, default=d.on_error,
                   help="raise: stop at the first bad image/annotation; skip: leave it out and report it")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    a = p.parse_args(argv)
    for flag, path, isdir in (("--instances", a.instances, False), ("--image_dir", a.image_dir, True)):
        if not (os.path.isdir(path) if isdir else os.path.isfile(path)):
            raise UserError(f"{flag}: {path}: no such {'directory' if isdir else 'file'} (paths are relative to "
                            f"the working directory {os.getcwd()})")
    opts = ConvertOptions(factor=a.factor, max_pixels=a.max_pixels, min_pixels=a.min_pixels,
                          max_poly_points=a.max_poly_points, jpeg_quality=a.jpeg_quality,
                          shard_size=a.shard_size, on_error=a.on_error)
    summary = convert_lvis(a.instances, a.image_dir, a.out_dir, split=a.split, options=opts,
                           num_workers=a.num_workers, progress=not a.no_progress)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Optional[list] = None) -> int:
    """``public_data/scripts/convert_lvis.py``; user errors are ``error:`` lines and exit status 2."""
    return run_main(_main, argv)
