"""The bundled sample (public_data/lvis/sample) and the synthetic LVIS generator."""
import json
import statistics
from pathlib import Path

import pytest

from swift_plugins.data import iter_records
from swift_plugins.data.synthetic import jpeg_encoder_versions, make_sample, make_synthetic_lvis

SAMPLE = Path(__file__).resolve().parents[2] / "public_data" / "lvis" / "sample"


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample_records():
    out = {}
    for split in ("train", "val"):
        stream = iter_records(SAMPLE / f"{split}.jsonl")  # raise policy, image headers checked
        out[split] = [r for _, r in stream]
        assert (stream.summary.skipped, stream.summary.blank_lines) == (0, 0)
    return out


def test_sample_validates_with_zero_errors(sample_records):
    assert (len(sample_records["train"]), len(sample_records["val"])) == (200, 40)
    names = {r["images"][0] for recs in sample_records.values() for r in recs}
    assert names == {k for k in files(SAMPLE) if k.startswith("images/")}  # no stray or shared image
    assert set(files(SAMPLE)) == names | {"train.jsonl", "val.jsonl", "MANIFEST.json"}


def test_sample_size_budget():
    assert sum(p.stat().st_size for p in files(SAMPLE).values()) <= 5 * 1024 * 1024


def test_sample_follows_the_rescale_rule_with_awkward_sizes(sample_records):
    recs = sample_records["train"] + sample_records["val"]
    sizes = {(r["width"], r["height"]) for r in recs}
    for w, h in sizes:
        assert w % 32 == 0 and h % 32 == 0 and w * h <= 786432 and max(w, h) <= 200 * min(w, h)
    assert {(64, 64), (32, 2048), (2048, 32), (6400, 32), (1024, 768)} <= sizes
    assert len(sizes) >= 15


def test_sample_object_counts_and_geometry_are_lvis_like(sample_records):
    for split, recs in sample_records.items():
        counts = [len(r["objects"]) for r in recs]
        assert 8 <= statistics.median(counts) <= 10, split
    train = [len(r["objects"]) for r in sample_records["train"]]
    assert sum(c >= 100 for c in train) == 3 and max(train) == 180
    objs = [o for recs in sample_records.values() for r in recs for o in r["objects"]]
    polys = [o["poly"] for o in objs if "poly" in o]
    assert {len(p) // 2 for p in polys} == set(range(3, 21))  # every size from 3 to 20 points, no other
    assert 0.05 < sum("bbox_2d" in o for o in objs) / len(objs) < 0.3


def test_make_sample_is_byte_for_byte_deterministic(tmp_path):
    make_sample(tmp_path / "a")
    make_sample(tmp_path / "b")
    a, b, bundled = files(tmp_path / "a"), files(tmp_path / "b"), files(SAMPLE)
    assert list(a) == list(b) == list(bundled)
    assert [k for k in a if a[k].read_bytes() != b[k].read_bytes()] == []
    fix = "regenerate with: python public_data/scripts/make_sample.py"
    for name in ("train.jsonl", "val.jsonl"):
        assert a[name].read_bytes() == bundled[name].read_bytes(), fix
    manifest = json.loads(bundled["MANIFEST.json"].read_text())
    if manifest["encoder"] == jpeg_encoder_versions():
        assert [k for k in a if a[k].read_bytes() != bundled[k].read_bytes()] == [], fix
    else:  # another JPEG encoder: same pixels up to encoder rounding
        import numpy as np
        from PIL import Image
        for k in a:
            if k.startswith("images/"):
                x, y = (np.asarray(Image.open(p), dtype=np.int16) for p in (a[k], bundled[k]))
                assert x.shape == y.shape and np.abs(x - y).mean() < 3.0, k  # q60 vs q95: 5.3; other content: ~88


def test_synthetic_generator_small_run(tmp_path):
    stats = make_synthetic_lvis(tmp_path / "a", num_records=3000, seed=5)
    make_synthetic_lvis(tmp_path / "b", num_records=3000, seed=5)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    stream = iter_records(tmp_path / "a" / "train.jsonl", check_images=False)
    recs = [r for _, r in stream]
    assert stream.summary.valid == 3000 == stats["records"]
    counts = [len(r["objects"]) for r in recs]
    assert stats["median"] == statistics.median(counts) and stats["objects"] == sum(counts)
    assert 8 <= stats["median"] <= 10 and 14 <= stats["mean"] <= 19
    for r in recs:
        w, h = r["width"], r["height"]
        assert w % 32 == 0 and h % 32 == 0 and w * h <= 786432
        assert not (tmp_path / "a" / r["images"][0]).exists()
    polys = [len(o["poly"]) // 2 for r in recs for o in r["objects"] if "poly" in o]
    assert min(polys) == 3 and max(polys) <= 20
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["records"] == 3000
