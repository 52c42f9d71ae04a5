"""swift_plugins.data.problems: RecordError, Problem, json_type, show_value and image_header_size."""
import os
import pickle

import pytest

from helpers import save_corrupt_png, save_image
from swift_plugins.data.problems import (OptionNotImplementedError, Problem, RecordError, image_header_size,
                                         json_type, show_value)
from swift_plugins.errors import UserError


def test_record_error_str_and_attributes():
    e = RecordError("data/train.jsonl", 7, "objects[2].bbox_2d", "x2 < x1 (swap them)", "bbox_inverted")
    assert str(e) == "data/train.jsonl:7: objects[2].bbox_2d: x2 < x1 (swap them)"
    assert (e.path, e.line, e.field, e.message, e.kind) == (
        "data/train.jsonl", 7, "objects[2].bbox_2d", "x2 < x1 (swap them)", "bbox_inverted")
    assert isinstance(e, UserError)


def test_record_error_path_becomes_a_string(tmp_path):
    e = RecordError(tmp_path / "d.jsonl", 1, "width", "missing (add it)", "missing")
    assert e.path == str(tmp_path / "d.jsonl")
    assert str(e) == f"{tmp_path / 'd.jsonl'}:1: width: missing (add it)"


def test_record_error_pickles_round_trip():
    e = RecordError("a.jsonl", 3, "images[0]", "file not found: x.png (fix the path)", "image_missing")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is RecordError
    assert (back.path, back.line, back.field, back.message, back.kind) == (
        "a.jsonl", 3, "images[0]", "file not found: x.png (fix the path)", "image_missing")
    assert str(back) == str(e) == "a.jsonl:3: images[0]: file not found: x.png (fix the path)"


def test_option_not_implemented_error_is_both_kinds():
    assert issubclass(OptionNotImplementedError, UserError)
    assert issubclass(OptionNotImplementedError, NotImplementedError)


def test_problem_kind_field_and_message():
    p = Problem("bbox_inverted", "objects[2].bbox_2d", "x2 < x1 or y2 < y1 in [5, 5, 1, 9]",
                "write the box as [x1, y1, x2, y2]")
    assert (p.kind, p.field) == ("bbox_inverted", "objects[2].bbox_2d")
    assert p.message == "x2 < x1 or y2 < y1 in [5, 5, 1, 9] (write the box as [x1, y1, x2, y2])"
    assert not isinstance(p, UserError)


def test_json_type_of_every_json_type():
    assert [json_type(v) for v in ({}, [], "s", True, False, 3, 2.5, None)] == [
        "an object", "a list", "a string", "a boolean", "a boolean", "a number", "a number", "null"]


def test_json_type_of_a_non_json_value_is_its_type_name():
    assert json_type((1, 2)) == "tuple"
    assert json_type(b"x") == "bytes"


def test_show_value_short_values_as_json():
    assert show_value("cat") == '"cat"'
    assert show_value("café") == '"café"'  # not escaped
    assert show_value(7) == "7"
    assert show_value(2.5) == "2.5"
    assert show_value(True) == "true"
    assert show_value(None) == "null"


def test_show_value_long_string_cut_to_40_chars():
    s = show_value("x" * 100)
    assert s == '"' + "x" * 36 + "..."
    assert len(s) == 40
    exact = "y" * 38  # 40 chars with its quotes: not cut
    assert show_value(exact) == f'"{exact}"'
    assert show_value(exact + "y") == '"' + "y" * 36 + "..."


def test_show_value_list_and_dict_as_their_type_word():
    assert show_value([1, 2, 3]) == "a list"
    assert show_value({"a": 1}) == "an object"


def test_image_header_size_of_a_real_png(tmp_path):
    path = save_image(tmp_path / "a.png", (37, 21))
    assert image_header_size(str(path), "/nowhere", "images[0]") == (37, 21)  # absolute: base_dir unused


def test_image_header_size_resolves_a_relative_path_against_base_dir(tmp_path):
    save_image(tmp_path / "img" / "b.png", (50, 8), "L")
    assert image_header_size("img/b.png", str(tmp_path), "images[0]") == (50, 8)


def test_image_header_size_missing_file(tmp_path):
    with pytest.raises(Problem) as info:
        image_header_size("img/none.png", str(tmp_path), "images[1]")
    p = info.value
    assert (p.kind, p.field) == ("image_missing", "images[1]")
    assert p.message == (f"file not found: {os.path.join(str(tmp_path), 'img/none.png')} "
                         "(fix the path; relative paths resolve against the JSONL's folder)")


def test_image_header_size_a_folder_is_missing(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(Problem) as info:
        image_header_size("dir.png", str(tmp_path), "images[0]")
    assert info.value.kind == "image_missing"


def test_image_header_size_garbage_bytes_is_unreadable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all\x00\x01\x02")
    with pytest.raises(Problem) as info:
        image_header_size("bad.png", str(tmp_path), "images[0]")
    p = info.value
    full = os.path.join(str(tmp_path), "bad.png")
    assert (p.kind, p.field) == ("image_unreadable", "images[0]")
    assert p.message.startswith(f"cannot read the image header of {full}: UnidentifiedImageError: ")
    assert p.message.endswith(" (re-encode the image as JPEG or PNG)")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_image_header_size_decodes_the_pixel_data_when_asked(tmp_path):
    bad = save_corrupt_png(tmp_path / "bad.png", (40, 20))
    assert image_header_size(str(bad), "/nowhere", "images[0]") == (40, 20)  # the header is fine
    with pytest.raises(Problem) as info:
        image_header_size(str(bad), "/nowhere", "images[0]", decode=True)
    p = info.value
    assert (p.kind, p.field) == ("image_undecodable", "images[0]")
    assert p.message == (f"the pixel data of {bad} cannot be decoded: OSError: broken data stream when reading image "
                         f"file (re-encode or replace the image, or drop the record)")
    jpeg = save_image(tmp_path / "ok.jpg", (333, 97))  # decoded at 1/8 scale: the size is the stored one
    assert image_header_size(str(jpeg), "/nowhere", "images[0]", decode=True) == (333, 97)
