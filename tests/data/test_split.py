"""swift_plugins.data.split: dense records -> pieces that fit, every object kept."""
import random

import pytest

from swift_plugins.data import RecordError, split_record

REC = {"images": ["pics/a.jpg"], "width": 100, "height": 50, "objects": [
    {"desc": "cat", "poly": [10, 20, 30, 20, 20, 40]},
    {"desc": "box", "bbox_2d": [5, 5, 15, 10]},
    {"desc": "dog", "poly": [60.5, 5, 99.49, 5, 70, 30]},
    {"desc": "ant", "bbox_2d": [60, 5, 61, 6]},
]}


def counted(fn):
    calls = []

    def wrapper(record):
        calls.append(len(record["objects"]))
        return fn(record)
    wrapper.calls = calls
    return wrapper


def ten_per_object(record):
    return 10 + 10 * len(record["objects"])


def boxes(n):
    return {**REC, "objects": [{"desc": f"o{i}", "bbox_2d": [0, i, 1, i]} for i in range(n)]}


def descs(pieces):
    return [[o["desc"] for o in p["objects"]] for p in pieces]


def test_split_record_fits_returns_one_piece_in_conversation_order():
    length = counted(ten_per_object)
    pieces = split_record(REC, max_length=50, length_of=length)
    assert descs(pieces) == [["box", "ant", "dog", "cat"]] and length.calls == [4]
    assert {k: v for k, v in pieces[0].items() if k != "objects"} == {k: v for k, v in REC.items() if k != "objects"}


def test_split_record_exact_pieces():
    pieces = split_record(boxes(5), max_length=45, length_of=ten_per_object, object_ordering="none")
    assert descs(pieces) == [["o0", "o1", "o2"], ["o3", "o4"]]
    pieces = split_record(boxes(5), max_length=35, length_of=ten_per_object, object_ordering="none")
    assert descs(pieces) == [["o0", "o1"], ["o2", "o3"], ["o4"]]
    assert all(ten_per_object(p) <= 35 for p in pieces)


def test_split_record_respects_sorted_order():
    rec = {**REC, "objects": [{"desc": f"o{i}", "bbox_2d": [0, 9 - i, 1, 9 - i]} for i in range(5)]}
    assert descs(split_record(rec, max_length=35, length_of=ten_per_object)) == [["o4", "o3"], ["o2", "o1"], ["o0"]]


def test_split_record_uneven_lengths_and_call_count():
    rng = random.Random(0)
    rec = {**REC, "objects": [{"desc": "x" * rng.randint(1, 60), "bbox_2d": [0, 0, 1, 1]} for _ in range(600)]}

    def length_of(r):
        return 100 + sum(len(o["desc"]) for o in r["objects"])
    length = counted(length_of)
    pieces = split_record(rec, max_length=2000, length_of=length, object_ordering="none")
    # greedy: every piece fits and the next object would not have fit
    assert [o for p in pieces for o in p["objects"]] == rec["objects"]
    for p, nxt in zip(pieces, pieces[1:]):
        assert length_of(p) <= 2000 < length_of({**p, "objects": p["objects"] + nxt["objects"][:1]})
    assert length_of(pieces[-1]) <= 2000
    assert len(pieces) == 10
    assert len(length.calls) <= 1 + len(pieces) * (1 + 2 * 10)  # O(pieces * log n), not O(n)


def test_split_record_object_too_long_names_stored_index():
    rec = {**REC, "objects": [{"desc": "a", "bbox_2d": [0, 5, 1, 5]}, {"desc": "huge", "bbox_2d": [0, 1, 1, 1]}]}

    def length_of(r):
        return 10 + sum(100 if o["desc"] == "huge" else 5 for o in r["objects"])
    with pytest.raises(RecordError) as info:
        split_record(rec, max_length=50, length_of=length_of, path="t.jsonl", line=9)
    assert str(info.value) == ('t.jsonl:9: objects[1]: object "huge" alone makes a 110-token sample, over max_length 50 '
                               "(raise max_length or simplify/drop the object)")
    assert info.value.kind == "object_too_long"

