"""swift_plugins.data: validator messages, skip policy, record -> conversation, dense-scene split."""
import json
import os
import random
import subprocess
import sys

import pytest
from PIL import Image

from swift_plugins.data import (DEFAULT_PROMPT, DEFAULT_PROMPT_NORM1000, ConversationOptions,
                                OptionNotImplementedError, RecordError, dump_record, emit_coords, iter_records,
                                order_objects, split_record, to_swift_row)

GOOD = {"images": ["img.png"], "width": 40, "height": 20, "objects": [{"desc": "cat", "poly": [1, 2, 10, 2, 5, 8]}]}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "img.png")
    return tmp_path


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


# One case per kind: (record line, kind, field, message)
CASES = [
    ('{"images": [', "invalid_json", "<json>",
     "invalid JSON: Expecting value at column 13 (write exactly one JSON object per line)"),
    (b'{"images": ["\xff"]}', "invalid_json", "<json>",
     "not valid UTF-8 (invalid start byte at byte 13) (save the file as UTF-8)"),
    ("[1, 2]", "not_an_object", "<record>", "expected a JSON object, got a list (write exactly one JSON object per line)"),
    (with_(images=...), "missing_images", "images",
     "missing (add \"images\": [\"path/to/image.jpg\"], relative to the JSONL's folder)"),
    (with_(images=["a.png", "b.png"]), "bad_images", "images",
     "expected a list of exactly one image path, got a list with 2 entries (write \"images\": [\"path/to/image.jpg\"])"),
    (with_(width=...), "missing_size", "width", "missing (add the stored image's width in pixels as an integer)"),
    (with_(height=20.5), "bad_size", "height",
     "expected a positive integer, got 20.5 (write the stored image's height in pixels as an integer)"),
    (with_(width=0), "bad_size", "width",
     "expected a positive integer, got 0 (write the stored image's width in pixels as an integer)"),
    (with_(width=4020), "aspect_ratio", "width/height",
     "aspect ratio 201.0 (4020x20) exceeds 200 (the Qwen-VL resize refuses it; crop or pad the image)"),
    (with_(objects=...), "missing_objects", "objects",
     'missing (add "objects": [{"desc": ..., "poly": [...]}, ...])'),
    (with_(objects={"desc": "x"}), "missing_objects", "objects",
     'expected a list, got an object (add "objects": [{"desc": ..., "poly": [...]}, ...])'),
    (with_(objects=[]), "no_objects", "objects", "empty list (a record needs at least one object; drop the record)"),
    (with_(objects=[GOOD["objects"][0], 5]), "bad_object", "objects[1]",
     'expected an object, got 5 (write {"desc": ..., "poly": [...]} or {"desc": ..., "bbox_2d": [...]})'),
    (obj(desc=" ", poly=[1, 2, 3, 4, 5, 6]), "missing_desc", "objects[0].desc",
     'expected a non-empty string, got " " (give the object\'s category name)'),
    (obj(poly=[1, 2, 3, 4, 5, 6]), "missing_desc", "objects[0].desc", "missing (give the object's category name)"),
    (obj(desc="cat"), "missing_geometry", "objects[0]",
     'has neither "poly" nor "bbox_2d" (give exactly one geometry per object)'),
    (obj(desc="cat", poly=[1, 2, 3, 4, 5, 6], bbox_2d=[1, 2, 3, 4]), "ambiguous_geometry", "objects[0]",
     'has both "poly" and "bbox_2d" (give exactly one geometry per object)'),
    (obj(desc="cat", poly=[1, 2, 3, 4, 5, 6, 7]), "poly_odd_length", "objects[0].poly",
     "odd number of values (7); a polygon is x1, y1, x2, y2, ... (give every point both coordinates)"),
    (obj(desc="cat", poly=[1, 2, 3, "4", 5, 6]), "poly_non_numeric", "objects[0].poly",
     'value 3 is "4", not a finite number (write coordinates as plain JSON numbers)'),
    (obj(desc="cat", poly=[1, 2, 3, 4, True, 6]), "poly_non_numeric", "objects[0].poly",
     "value 4 is true, not a finite number (write coordinates as plain JSON numbers)"),
    ('{"images": ["img.png"], "width": 40, "height": 20, "objects": [{"desc": "cat", "poly": [1, NaN, 3, 4, 5, 6]}]}',
     "poly_non_numeric", "objects[0].poly", "value 1 is NaN, not a finite number (write coordinates as plain JSON numbers)"),
    (obj(desc="cat", poly=12), "poly_non_numeric", "objects[0].poly",
     "expected a list of numbers, got 12 (write the polygon as [x1, y1, x2, y2, ...])"),
    (obj(desc="cat", poly=[1, 2, 3, 4]), "poly_too_few_points", "objects[0].poly",
     "2 point(s); a polygon needs at least 3 (drop the object or give it a bbox_2d)"),
    (obj(desc="cat", bbox_2d=[1, 2, 3]), "bbox_arity", "objects[0].bbox_2d",
     "expected 4 values [x1, y1, x2, y2], got 3 values (write the box as [x1, y1, x2, y2] in pixels "
     "(convert [x, y, w, h] first))"),
    (obj(desc="cat", bbox_2d=[1, None, 3, 4]), "bbox_non_numeric", "objects[0].bbox_2d",
     "value 1 is null, not a finite number (write coordinates as plain JSON numbers)"),
    (obj(desc="cat", bbox_2d=[10, 2, 3, 4]), "bbox_inverted", "objects[0].bbox_2d",
     "x2 < x1 or y2 < y1 in [10, 2, 3, 4] (write the box as [x1, y1, x2, y2] with the top-left corner first)"),
    (obj(desc="cat", bbox_2d=[1, 5, 3, 4]), "bbox_inverted", "objects[0].bbox_2d",
     "x2 < x1 or y2 < y1 in [1, 5, 3, 4] (write the box as [x1, y1, x2, y2] with the top-left corner first)"),
    (obj(desc="cat", poly=[1, 2, 40, 20, 5, 20.5]), "coord_out_of_range", "objects[0].poly",
     "y = 20.5 (value 5) is outside the image [0, 20] (clamp coordinates to the image or fix width/height)"),
    (obj(desc="cat", bbox_2d=[-1, 2, 3, 4]), "coord_out_of_range", "objects[0].bbox_2d",
     "x = -1 (value 0) is outside the image [0, 40] (clamp coordinates to the image or fix width/height)"),
]


@pytest.mark.parametrize("line,kind,field,message", CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_validator_message_per_kind(folder, line, kind, field, message):
    e = first_error(folder, line)
    assert (e.kind, e.field, e.message) == (kind, field, message)


def test_image_missing(folder):
    e = first_error(folder, with_(images=["sub/none.png"]))
    assert (e.kind, e.field) == ("image_missing", "images[0]")
    assert e.message == (f"file not found: {folder / 'sub' / 'none.png'} "
                         "(fix the path; relative paths resolve against the JSONL's folder)")


def test_image_unreadable(folder):
    (folder / "bad.png").write_bytes(b"not an image")
    e = first_error(folder, with_(images=["bad.png"]))
    assert (e.kind, e.field) == ("image_unreadable", "images[0]")
    assert e.message == (f"cannot read the image header of {folder / 'bad.png'}: UnidentifiedImageError: "
                         f"cannot identify image file '{folder / 'bad.png'}' (re-encode the image as JPEG or PNG)")


def test_image_size_mismatch(folder):
    e = first_error(folder, with_(width=41))
    assert (e.kind, e.field, e.message) == (
        "image_size_mismatch", "images[0]",
        "the image is 40x20 but the record says width=41, height=20 (set width/height to the stored image's size)")


def test_absolute_image_path_and_check_images_false(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    path = write_lines(other, [with_(images=[str(folder / "img.png")]), with_(images=["nowhere.png"], width=41)])
    with pytest.raises(RecordError, match=r":2: images\[0\]: file not found"):
        list(iter_records(path))
    # check_images=False never touches the disk: the missing file and the size mismatch pass
    assert [n for n, _ in iter_records(path, check_images=False)] == [1, 2]


def test_raise_stops_at_first_bad_record_after_yielding_earlier_ones(folder):
    path = write_lines(folder, [GOOD, with_(objects=[]), with_(width=0)])
    seen = []
    with pytest.raises(RecordError) as info:
        for n, rec in iter_records(path):
            seen.append(n)
    assert seen == [1] and info.value.line == 2 and info.value.kind == "no_objects"


def test_skip_policy_report_and_summary(folder):
    long_bad = with_(objects=[{"desc": "x" * 300, "poly": [1, 2, 3]}])
    path = write_lines(folder, [GOOD, "", "   ", "{oops", GOOD, long_bad, with_(objects=[])])
    report = folder / "out" / "skipped.jsonl"
    stream = iter_records(path, on_error="skip", report_path=report)
    assert stream.summary.complete is False
    got = [(n, r) for n, r in stream]
    assert [n for n, _ in got] == [1, 5] and got[0][1] == GOOD
    s = stream.summary
    assert s.to_dict() == {"path": str(path), "read": 5, "valid": 2, "skipped": 3, "blank_lines": 2,
                           "skipped_by_kind": {"invalid_json": 1, "no_objects": 1, "poly_odd_length": 1},
                           "report_path": str(report), "complete": True}
    assert s.log_line() == (f"{path}: samples in 5 = valid 2 + skipped 3 (invalid_json 1, no_objects 1, "
                            f"poly_odd_length 1); 2 blank lines (not records); skip report: {report}")
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    raw_long = json.dumps(long_bad)
    assert rows == [
        {"path": str(path), "line": 4, "field": "<json>", "kind": "invalid_json",
         "reason": "invalid JSON: Expecting property name enclosed in double quotes at column 2 "
                   "(write exactly one JSON object per line)", "raw": "{oops"},
        {"path": str(path), "line": 6, "field": "objects[0].poly", "kind": "poly_odd_length",
         "reason": "odd number of values (3); a polygon is x1, y1, x2, y2, ... (give every point both coordinates)",
         "raw": raw_long[:200] + f"...(+{len(raw_long) - 200} chars)"},
        {"path": str(path), "line": 7, "field": "objects", "kind": "no_objects",
         "reason": "empty list (a record needs at least one object; drop the record)", "raw": json.dumps(with_(objects=[]))},
    ]
    assert s.read == s.valid + s.skipped


def test_skip_report_written_even_when_nothing_skipped_and_reject(folder):
    path = write_lines(folder, [GOOD, GOOD])
    stream = iter_records(path, on_error="skip")
    for n, rec in stream:
        if n == 2:
            stream.reject(RecordError(str(path), 2, "objects[0]", "too long (fix)", "object_too_long"), dump_record(rec))
    assert (stream.summary.valid, stream.summary.skipped, stream.summary.skipped_by_kind) == (1, 1, {"object_too_long": 1})
    stream.write_report(folder / "r.jsonl")
    assert [json.loads(x)["line"] for x in (folder / "r.jsonl").read_text().splitlines()] == [2]
    empty = iter_records(path, on_error="skip", report_path=folder / "empty.jsonl")
    assert len(list(empty)) == 2 and (folder / "empty.jsonl").read_text() == ""


def test_on_error_choice_is_checked(folder):
    with pytest.raises(ValueError, match=r"on_error: 'ignore' is not one of \('raise', 'skip'\)"):
        iter_records(folder / "x.jsonl", on_error="ignore")


# --------------------------------------------------------------------------- conversation
REC = {"images": ["pics/a.jpg"], "width": 100, "height": 50, "objects": [
    {"desc": "cat", "poly": [10, 20, 30, 20, 20, 40]},
    {"desc": "box", "bbox_2d": [5, 5, 15, 10]},
    {"desc": "dog", "poly": [60.5, 5, 99.49, 5, 70, 30]},
    {"desc": "ant", "bbox_2d": [60, 5, 61, 6]},
]}


def answer(row):
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    return row["messages"][1]["content"]


def test_to_swift_row_sorted_pixels(tmp_path):
    row = to_swift_row(REC, base_dir=tmp_path)
    assert row == {
        "messages": [
            {"role": "user", "content": "<image>" + DEFAULT_PROMPT},
            {"role": "assistant", "content":
                '[{"desc":"box","bbox_2d":[5,5,15,10]},{"desc":"ant","bbox_2d":[60,5,61,6]},'
                '{"desc":"dog","poly":[61,5,99,5,70,30]},{"desc":"cat","poly":[10,20,30,20,20,40]}]'},
        ],
        "images": [str(tmp_path / "pics" / "a.jpg")],
    }


def test_to_swift_row_none_norm1000(tmp_path):
    row = to_swift_row(REC, base_dir=tmp_path, object_ordering="none", emit_norm="norm1000")
    assert row["messages"][0]["content"] == "<image>" + DEFAULT_PROMPT_NORM1000
    assert answer(row) == ('[{"desc":"cat","poly":[100,400,300,400,200,800]},{"desc":"box","bbox_2d":[50,100,150,200]},'
                           '{"desc":"dog","poly":[605,100,994,100,700,600]},{"desc":"ant","bbox_2d":[600,100,610,120]}]')


def test_to_swift_row_random_is_seeded_by_seed_and_sample_key(tmp_path):
    objs = [{"desc": f"o{i}", "bbox_2d": [i, 0, i, 0]} for i in range(6)]
    rec = {**REC, "objects": objs}
    descs = [o["desc"] for o in json.loads(answer(to_swift_row(rec, base_dir=tmp_path, object_ordering="random",
                                                                seed=1, sample_key=7)))]
    assert descs == ["o2", "o0", "o5", "o1", "o4", "o3"]  # random.Random("1:7").shuffle
    other = [o["desc"] for o in json.loads(answer(to_swift_row(rec, base_dir=tmp_path, object_ordering="random",
                                                                seed=1, sample_key=8)))]
    assert other != descs and sorted(other) == sorted(descs)
    # same order in another process with another hash seed (string seeds use SHA-512, not hash())
    code = ("import json; from swift_plugins.data import to_swift_row; "
            f"r = to_swift_row({rec!r}, base_dir='.', object_ordering='random', seed=1, sample_key=7); "
            "print(r['messages'][1]['content'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert [o["desc"] for o in json.loads(out)] == descs


def test_to_swift_row_custom_prompt_absolute_image_and_unicode(tmp_path):
    rec = {**REC, "images": ["/data/x.jpg"], "objects": [{"desc": "café", "bbox_2d": [0, 0, 1, 1]}]}
    row = to_swift_row(rec, base_dir=tmp_path, prompt="Find things.")
    assert row == {"messages": [{"role": "user", "content": "<image>Find things."},
                                {"role": "assistant", "content": '[{"desc":"café","bbox_2d":[0,0,1,1]}]'}],
                   "images": ["/data/x.jpg"]}


def test_to_swift_row_accepts_options_dict(tmp_path):
    opts = ConversationOptions(object_ordering="none", emit_norm="norm1000", prompt="P")
    assert to_swift_row(REC, base_dir=tmp_path, **opts.to_dict()) == to_swift_row(
        REC, base_dir=tmp_path, object_ordering="none", emit_norm="norm1000", prompt="P")


def test_sorted_ties_break_on_desc_then_stored_order():
    objs = [{"desc": "b", "bbox_2d": [3, 1, 4, 2]}, {"desc": "a", "poly": [3, 1, 9, 9, 5, 5]},
            {"desc": "b", "poly": [5, 5, 3, 1, 4, 4]}, {"desc": "z", "bbox_2d": [0, 2, 1, 3]}]
    assert order_objects(objs, "sorted") == [objs[1], objs[0], objs[2], objs[3]]


def test_emit_coords_rounding():
    assert emit_coords([10.5, 3.49, 2.5, 0.5, 7], 100, 50) == [11, 3, 3, 1, 7]
    assert emit_coords([0, 50, 100, 25, 99, 49], 100, 50, "norm1000") == [0, 999, 999, 500, 990, 980]
    assert emit_coords([0.29, 0.5, 0.0999], 1, 1, "norm1000") == [290, 500, 99]


@pytest.mark.parametrize("key", ["coord_tokens", "coord_offset"])
def test_coord_options_are_refused_not_ignored(tmp_path, key):
    with pytest.raises(OptionNotImplementedError) as info:
        to_swift_row(REC, base_dir=tmp_path, **{key: True})
    assert str(info.value) == (f"{key}: true is accepted by the config schema but not implemented "
                               f"(set {key} to false; coordinates are emitted as numeric text)")
    assert isinstance(info.value, ValueError) and isinstance(info.value, NotImplementedError)
    ConversationOptions(**{key: True})  # the schema itself accepts it


def test_conversation_options_validation_lists_every_problem():
    with pytest.raises(ValueError) as info:
        ConversationOptions(object_ordering="size", emit_norm="norm100", seed="1", coord_tokens=1)
    assert str(info.value) == (
        "invalid conversation options: object_ordering: 'size' is not one of ['sorted', 'random', 'none']; "
        "emit_norm: 'norm100' is not one of ['none', 'norm1000']; seed: expected an integer, got '1'; "
        "coord_tokens: expected true or false, got 1")
    import dataclasses
    for f in dataclasses.fields(ConversationOptions):
        assert f.metadata["help"]
    assert ConversationOptions(emit_norm="norm1000").resolved_prompt == DEFAULT_PROMPT_NORM1000


# ------------------------------------------------------------------------------------ split
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
