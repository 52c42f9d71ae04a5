"""The bundled messages-format sample (public_data/messages/sample): valid, covering, reproducible."""
import json
from pathlib import Path

import pytest

from swift_plugins.data import iter_records, record_kind
from swift_plugins.data.messages_sample import TASKS, encoder_versions, make_messages_sample

SAMPLE = Path(__file__).resolve().parents[2] / "public_data" / "messages" / "sample"


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample_records():
    out = {}
    for split in ("train", "val"):
        stream = iter_records(SAMPLE / f"{split}.jsonl", record_format="messages")  # raise policy, headers read
        out[split] = [r for _, r in stream]
        assert (stream.summary.skipped, stream.summary.blank_lines) == (0, 0)
    return out


def test_sample_validates_with_zero_errors_and_no_stray_files(sample_records):
    assert (len(sample_records["train"]), len(sample_records["val"])) == (40, 10)
    recs = sample_records["train"] + sample_records["val"]
    assert {record_kind(r) for r in recs} == {"messages"}  # auto detection agrees
    names = [name for r in recs for name in r.get("images", [])]
    assert len(names) == len(set(names))  # no image shared between rows
    assert set(files(SAMPLE)) == set(names) | {"train.jsonl", "val.jsonl", "MANIFEST.json"}
    assert sum(p.stat().st_size for p in files(SAMPLE).values()) <= 2 * 1024 * 1024


def test_sample_covers_the_tasks_and_shapes_of_conversations(sample_records):
    manifest = json.loads((SAMPLE / "MANIFEST.json").read_text())
    for split, recs in sample_records.items():
        stats = manifest["stats"][split]
        assert set(stats["tasks"]) >= set(TASKS)
        assert stats["with_system"] == sum(r["messages"][0]["role"] == "system" for r in recs) >= 3
        assert stats["multi_turn"] == sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in recs) >= 3
        assert stats["multi_image"] == sum(len(r.get("images", [])) > 1 for r in recs) >= 2
        answers = [m["content"] for r in recs for m in r["messages"] if m["role"] == "assistant"]
        boxes = [json.loads(a) for a in answers if a.startswith('[{"bbox_2d"')]
        assert boxes and all(0 <= v <= 1000 for b in boxes for o in b for v in o["bbox_2d"])
    recs = sample_records["train"]
    assert sum("images" not in r for r in recs) == 1  # the text-only row
    from PIL import Image
    sizes = {Image.open(SAMPLE / n).size for r in recs for n in r.get("images", [])}
    assert {(50, 40), (1000, 200), (300, 301)} <= sizes  # below min pixels, wide, not multiples of 32
    assert any(n.endswith(".png") for r in recs for n in r.get("images", []))
    texts = "".join(m["content"] for r in recs for m in r["messages"])
    assert "é" in texts and "视觉" in texts


def test_make_messages_sample_is_byte_for_byte_reproducible(tmp_path):
    make_messages_sample(tmp_path / "a")
    make_messages_sample(tmp_path / "b")
    a, b, bundled = files(tmp_path / "a"), files(tmp_path / "b"), files(SAMPLE)
    assert list(a) == list(b) == list(bundled)
    assert [k for k in a if a[k].read_bytes() != b[k].read_bytes()] == []
    fix = "regenerate with: python public_data/scripts/make_messages_sample.py"
    for name in ("train.jsonl", "val.jsonl"):
        assert a[name].read_bytes() == bundled[name].read_bytes(), fix
    manifest = json.loads(bundled["MANIFEST.json"].read_text())
    if manifest["encoder"] == encoder_versions():
        assert [k for k in a if a[k].read_bytes() != bundled[k].read_bytes()] == [], fix
    else:  # another JPEG / PNG encoder: same pixels up to encoder rounding
        import numpy as np
        from PIL import Image
        for k in a:
            if k.startswith("images/"):
                x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a[k], bundled[k]))
                assert x.shape == y.shape and np.abs(x - y).mean() < 3.0, k
