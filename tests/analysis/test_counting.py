"""swift_plugins.analysis.counting: two hand-made JSONL files (LVIS, messages) counted, split and summed per file."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from helpers import GOOD, msg, save_image, with_, write_lines
from swift_plugins.analysis.counting import count_files, file_rows, split_files
from swift_plugins.data import swift_row
from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.lengths import count_dataset

OPTIONS = ConversationOptions()
OBJ = GOOD["objects"][0]  # every LVIS object identical: each adds the same answer tokens
LONG_DESC = {**OBJ, "desc": "very long " * 60}  # too long alone for the split lengths below


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """a.jsonl: LVIS records of 1, 2, (bad line), 10 and 1 long object; b.jsonl: messages, (blank line), long text."""
    folder = tmp_path_factory.mktemp("counting")
    save_image(folder / "img.png", (40, 20))
    a = write_lines(folder, [with_(objects=[OBJ]), with_(objects=[OBJ] * 2), "{not json", with_(objects=[OBJ] * 10),
                             with_(objects=[LONG_DESC])], "a.jsonl")
    b = write_lines(folder, [{"messages": [msg("user", "<image>Hi"), msg("assistant", "Yes")], "images": ["img.png"]},
                             "", {"messages": [msg("user", "Tell"), msg("assistant", "word " * 200)]}], "b.jsonl")
    return str(a), str(b)


@pytest.fixture(scope="module")
def counted(files, counter):
    calls = []
    return count_files(files, counter, OPTIONS, on_error="skip", progress=calls.append), calls


def test_records_of_both_files_in_file_order(counted, files, counter):
    c, _ = counted
    assert len(c) == 6 and c.paths == list(files)
    assert c.file.tolist() == [0, 0, 0, 0, 1, 1]
    assert c.line.tolist() == [1, 2, 4, 5, 1, 3]  # a.jsonl line 3 is skipped, b.jsonl line 2 is blank
    assert c.kind.tolist() == [0, 0, 0, 0, 1, 1]
    assert c.num_objects.tolist() == [1, 2, 10, 1, 0, 0]
    assert c.num_images.tolist() == [1, 1, 1, 1, 1, 0]
    assert all(getattr(c, n).dtype == np.int64 for n in ("file", "line", "kind", "text_tokens", "image_tokens"))
    one = [count_dataset(p, counter, OPTIONS, on_error="skip") for p in files]  # each file alone
    assert c.text_tokens.tolist() == one[0].text_tokens.tolist() + one[1].text_tokens.tolist()
    assert c.image_tokens.tolist() == one[0].image_tokens.tolist() + one[1].image_tokens.tolist()
    assert c.image_tokens[:5].tolist() == [c.image_tokens[0]] * 5 and c.image_tokens[0] > 0 and c.image_tokens[5] == 0
    assert c.total_tokens.tolist() == (c.text_tokens + c.image_tokens).tolist()
    assert c.has_detection_records() and not c.from_cache


def test_lengths_equal_the_template_encoding(counted, files, tiny_template):
    c, _ = counted
    for f, line, kind, total in zip(c.file, c.line, c.kind, c.total_tokens):
        path = pathlib.Path(files[f])
        record = json.loads(path.read_text().splitlines()[line - 1])
        row = swift_row(record, ("lvis", "messages")[kind], base_dir=path.parent, sample_key=int(line))
        assert len(tiny_template.encode(row)["input_ids"]) == total, (path.name, line)


def test_summary_and_skips_add_up_over_the_files(counted, files):
    c, calls = counted
    assert c.summary() == {"read": 7, "valid": 6, "skipped": 1, "blank_lines": 1,
                           "skipped_by_kind": {"invalid_json": 1}}
    assert [(s.path, s.line, s.kind) for s in c.skipped] == [(files[0], 3, "invalid_json")]
    assert calls == [5, 8]  # lines done: a.jsonl's 5, then b.jsonl's 3 on top (its blank line counts)


def test_a_second_count_reads_the_cache(files, counter, tmp_path):
    first = count_files(files, counter, OPTIONS, on_error="skip", cache_dir=tmp_path)
    again = count_files(files, counter, OPTIONS, on_error="skip", cache_dir=tmp_path)
    assert (first.from_cache, again.from_cache) == (False, True)
    for name in ("file", "line", "kind", "text_tokens", "image_tokens", "num_objects", "num_images"):
        assert getattr(again, name).tolist() == getattr(first, name).tolist(), name
    assert again.summary() == first.summary()
    messages_only = count_files(files[1:], counter, OPTIONS, cache_dir=tmp_path)
    assert not messages_only.has_detection_records() and messages_only.file.tolist() == [0, 0]


def test_split_cuts_detection_records_into_pieces_and_keeps_messages_rows_whole(counted, counter):
    c, _ = counted
    t = c.total_tokens.tolist()
    one, per_object = t[0], t[1] - t[0]
    assert t[2] == one + 9 * per_object  # 10 identical objects: the length grows by the same step each
    L = one + 3 * per_object  # 4 objects fit, 5 do not
    assert t[3] > L and t[5] > L >= t[4]
    lengths, records_split, unsplittable = split_files(c, counter, OPTIONS, L)
    # a.jsonl: 1 object, 2 objects, the 10 as pieces of 4 + 4 + 2, the long desc alone too long (in no sample);
    # b.jsonl: both messages rows whole, the one over L too (the plan drops it)
    assert lengths.tolist() == [one, one + per_object, L, L, one + per_object, t[4], t[5]]
    assert (records_split, unsplittable) == (1, 1)
    whole, records_split, unsplittable = split_files(c, counter, OPTIONS, max(t))
    assert whole.tolist() == t and (records_split, unsplittable) == (0, 0)


def test_one_row_per_file(counted, files):
    c, _ = counted
    rows = file_rows(c)
    t = c.total_tokens
    assert [list(r)[:6] for r in rows] == [["jsonl", "records_read", "records_skipped", "num_samples", "lvis",
                                            "messages"]] * 2
    for row, path, counts, lengths in zip(rows, files, [(5, 1, 4, 4, 0), (2, 0, 2, 0, 2)], (t[:4], t[4:])):
        assert row["jsonl"] == path
        assert (row["records_read"], row["records_skipped"], row["num_samples"], row["lvis"], row["messages"]) == counts
        assert (row["min_total_tokens"], row["max_total_tokens"], row["sum_total_tokens"]) == (
            int(lengths.min()), int(lengths.max()), int(lengths.sum()))
        assert row["mean_total_tokens"] == round(float(lengths.mean()), 2)
        assert row["median_total_tokens"] == float(np.median(lengths))
        assert row["p95_total_tokens"] == round(float(np.percentile(lengths, 95)), 2)
    assert sum(r["sum_total_tokens"] for r in rows) == int(t.sum())


def test_no_files_give_empty_arrays(counter):
    c = count_files([], counter, OPTIONS)
    assert len(c) == 0 and c.file.dtype == np.int64 and c.total_tokens.tolist() == []
    assert c.summary() == {"read": 0, "valid": 0, "skipped": 0, "blank_lines": 0, "skipped_by_kind": {}}
    assert not c.has_detection_records() and file_rows(c) == []
    lengths, records_split, unsplittable = split_files(c, counter, OPTIONS, 100)
    assert lengths.tolist() == [] and (records_split, unsplittable) == (0, 0)
