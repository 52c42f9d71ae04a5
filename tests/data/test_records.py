"""swift_plugins.data.records: one message per problem kind, ``path:line: field: what (fix)``."""
import json

import pytest
from PIL import Image

from helpers import GOOD, first_error, obj, with_, write_lines
from swift_plugins.data import RecordError, iter_records

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


