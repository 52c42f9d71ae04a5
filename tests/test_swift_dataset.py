"""ms-swift's own dataset loading (swift.dataset.load_dataset, the path of `swift sft --dataset`) with
swift_plugins.swift_dataset registration gives exactly the rows of data.to_swift_row."""
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from swift_plugins.data import ConversationOptions, OptionNotImplementedError, RecordError, iter_records, to_swift_row
from swift_plugins.swift_dataset import DEFAULT_JSONL_PATHS, load_summaries, register, register_jsonl

SAMPLE = Path(__file__).resolve().parents[1] / "public_data" / "lvis" / "sample"

import swift.dataset as swift_dataset  # needs torchvision importable (guarded on CPU by make install)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    # ms-swift writes its preprocessing map cache under MODELSCOPE_CACHE
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path_factory.mktemp("ms_cache")))


@pytest.fixture
def val_copy(tmp_path):
    shutil.copy(SAMPLE / "val.jsonl", tmp_path / "val.jsonl")
    os.symlink(SAMPLE / "images", tmp_path / "images")
    return tmp_path / "val.jsonl"


def expected_rows(path, options: ConversationOptions, dataset_tag: str):
    stream = iter_records(path)
    rows = []
    for line_no, record in stream:
        row = to_swift_row(record, base_dir=path.parent, sample_key=line_no, **options.to_dict())
        # ms-swift's standard normalisation (RowPreprocessor._cast_mm_data) of image paths
        rows.append({"messages": row["messages"], "images": [{"bytes": None, "path": p} for p in row["images"]],
                     "dataset": dataset_tag})
    return rows


def load(path):
    train, val = swift_dataset.load_dataset([str(path)])
    assert val is None
    return [dict(r) for r in train]


@pytest.mark.parametrize("options", [ConversationOptions(),
                                     ConversationOptions(object_ordering="random", emit_norm="norm1000", seed=3)],
                         ids=["sorted-pixels", "random-norm1000"])
def test_swift_loader_rows_equal_to_swift_row(val_copy, options):
    register_jsonl(val_copy, options)
    rows = load(val_copy)
    assert len(rows) == 40
    assert rows == expected_rows(val_copy, options, str(val_copy))


def test_options_change_is_not_served_from_a_stale_cache(val_copy):
    register_jsonl(val_copy, ConversationOptions())
    first = load(val_copy)
    register_jsonl(val_copy, ConversationOptions(emit_norm="norm1000"))
    second = load(val_copy)
    assert second == expected_rows(val_copy, ConversationOptions(emit_norm="norm1000"), str(val_copy))
    assert first != second


def test_relative_path_as_given_on_the_command_line(val_copy, monkeypatch):
    monkeypatch.chdir(val_copy.parent)
    assert register_jsonl("val.jsonl") == ["val.jsonl", str(val_copy)]
    rows = load("val.jsonl")
    assert rows == expected_rows(val_copy, ConversationOptions(), "val.jsonl")


def bad_file(tmp_path):
    """Lines: 1 good, 2 bad (no objects), 3 blank, 4 good; images by absolute path."""
    good = [json.loads(x) for x in open(SAMPLE / "val.jsonl")][:3]
    for r in good:
        r["images"] = [str(SAMPLE / r["images"][0])]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good[0]), json.dumps(dict(good[1], objects=[])), "",
                               json.dumps(good[2])]) + "\n")
    return path, good


def test_raise_policy_stops_training_data_loading_with_path_line(tmp_path):
    path, _ = bad_file(tmp_path)
    register_jsonl(path)
    with pytest.raises(RecordError) as info:
        load(path)
    assert str(info.value) == f"{path}:2: objects: empty list (a record needs at least one object; drop the record)"


def test_skip_policy_reports_every_skipped_record(tmp_path):
    path, good = bad_file(tmp_path)
    report = tmp_path / "reports" / "mixed.skipped.jsonl"
    register_jsonl(path, on_error="skip", report_path=report)
    rows = load(path)
    assert [r["messages"] for r in rows] == [to_swift_row(good[0], base_dir=tmp_path, sample_key=1)["messages"],
                                              to_swift_row(good[2], base_dir=tmp_path, sample_key=4)["messages"]]
    assert [(x["line"], x["kind"]) for x in map(json.loads, report.read_text().splitlines())] == [(2, "no_objects")]
    s = load_summaries()[str(path)]
    assert (s.read, s.valid, s.skipped, s.blank_lines, s.report_path) == (3, 2, 1, 1, str(report))


def test_dense_records_are_split_and_too_long_objects_reported(tmp_path):
    with open(SAMPLE / "val.jsonl") as f:
        first = json.loads(f.readline())
    base = dict(first, images=[str(SAMPLE / first["images"][0])])
    recs = [dict(base, objects=[{"desc": f"o{i}", "bbox_2d": [0, i, 1, i]} for i in range(7)]),
            dict(base, objects=[{"desc": "x" * 50, "bbox_2d": [0, 0, 1, 1]}])]
    path = tmp_path / "dense.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def length_of(record):  # stand-in for the token counter: 10 per object + desc length
        return sum(10 + len(o["desc"]) for o in record["objects"])
    report = tmp_path / "skipped.jsonl"
    register_jsonl(path, ConversationOptions(object_ordering="random", seed=1), on_error="skip",
                   report_path=report, max_length=40, length_of=length_of)
    rows = load(path)
    answers = [[o["desc"] for o in json.loads(r["messages"][1]["content"])] for r in rows]
    # random order of line 1 first (seeded by "1:1"), then consecutive runs of at most 3 objects (12 each)
    order = [f"o{i}" for i in range(7)]
    random.Random("1:1").shuffle(order)
    assert answers == [order[0:3], order[3:6], order[6:7]]
    assert [(x["line"], x["field"], x["kind"]) for x in map(json.loads, report.read_text().splitlines())] == [
        (2, "objects[0]", "object_too_long")]


def test_register_is_idempotent_and_keeps_explicit_registrations(tmp_path):
    from swift.dataset import DATASET_MAPPING
    custom = ConversationOptions(emit_norm="norm1000")
    register_jsonl(DEFAULT_JSONL_PATHS[0], custom)
    register()
    assert register() == []
    metas = {m.dataset_path: m for m in DATASET_MAPPING.values() if getattr(m, "swiftpack_spec", None)}
    assert metas[DEFAULT_JSONL_PATHS[0]].swiftpack_spec.options == custom
    assert metas[DEFAULT_JSONL_PATHS[1]].swiftpack_spec.options == ConversationOptions()
    register_jsonl(DEFAULT_JSONL_PATHS[0])  # restore the default for other tests in this process


def test_register_jsonl_refuses_unimplemented_or_unreported_settings(tmp_path):
    with pytest.raises(OptionNotImplementedError, match="coord_tokens: true is accepted by the config schema"):
        register_jsonl(tmp_path / "a.jsonl", ConversationOptions(coord_tokens=True))
    with pytest.raises(ValueError, match="on_error='skip' needs a report_path"):
        register_jsonl(tmp_path / "a.jsonl", on_error="skip")
    with pytest.raises(ValueError, match="max_length and length_of go together"):
        register_jsonl(tmp_path / "a.jsonl", max_length=10)
