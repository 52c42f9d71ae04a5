"""ms-swift's own dataset loading (swift.dataset.load_dataset, the path of `swift sft --dataset`) with
swift_plugins.training.datasets registration gives exactly the rows of data.to_swift_row."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from swift_plugins.data import ConversationOptions, OptionNotImplementedError, RecordError, iter_records, to_swift_row
from swift_plugins.training.datasets import conversion_key, register_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "public_data" / "lvis" / "sample"

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


def test_skip_policy_reports_every_skipped_record(tmp_path, caplog):
    path, good = bad_file(tmp_path)
    report = tmp_path / "reports" / "mixed.skipped.jsonl"
    register_jsonl(path, on_error="skip", report_path=report)
    rows = load(path)
    assert [r["messages"] for r in rows] == [to_swift_row(good[0], base_dir=tmp_path, sample_key=1)["messages"],
                                              to_swift_row(good[2], base_dir=tmp_path, sample_key=4)["messages"]]
    assert [(x["line"], x["kind"]) for x in map(json.loads, report.read_text().splitlines())] == [(2, "no_objects")]
    assert (f"{path}: samples in 3 = valid 2 + skipped 1 (no_objects 1); 1 blank line (not records); "
            f"skip report: {report}") in caplog.text


def test_conversion_key_follows_everything_the_rows_depend_on():
    base = conversion_key(ConversationOptions(), "/data")
    assert base == conversion_key(ConversationOptions(), "/data") and len(base) == 16
    assert len({base, conversion_key(ConversationOptions(emit_norm="norm1000"), "/data"),
                conversion_key(ConversationOptions(), "/other")}) == 3


def test_register_jsonl_refuses_unimplemented_or_unreported_settings(tmp_path):
    with pytest.raises(OptionNotImplementedError, match="coord_tokens: true is accepted by the config schema"):
        register_jsonl(tmp_path / "a.jsonl", ConversationOptions(coord_tokens=True))
    with pytest.raises(ValueError, match="on_error='skip' needs a report_path"):
        register_jsonl(tmp_path / "a.jsonl", on_error="skip")
