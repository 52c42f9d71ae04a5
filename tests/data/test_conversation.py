"""swift_plugins.data.conversation: record -> ms-swift row, object order, coordinates."""
import json
import os
import random
import subprocess
import sys

import pytest

from swift_plugins.data import (DEFAULT_PROMPT, DEFAULT_PROMPT_NORM1000, ConversationOptions,
                                OptionNotImplementedError, emit_coords, order_objects, to_swift_row)

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


