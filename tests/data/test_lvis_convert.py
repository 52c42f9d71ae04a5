"""swift_plugins.lvis_convert on a small LVIS-format fixture generated here (images drawn with PIL)."""
import json
import os

import pytest
from PIL import Image, ImageDraw

from swift_plugins.data import iter_records
from swift_plugins.data.lvis_convert import ConvertError, ConvertOptions, convert_lvis, main

# a 22-point part (> 20 points -> bbox): points on the edges of x 100..160, y 20..80
BIG_PART = [100, 20, 130, 20, 160, 20, 160, 35, 160, 50, 160, 65, 160, 80, 150, 80, 140, 80, 130, 80, 120, 80,
            110, 80, 100, 80, 100, 70, 100, 60, 100, 50, 100, 40, 100, 30, 110, 30, 120, 40, 130, 50, 140, 60]


def make_fixture(root, with_missing=True):
    img_dir = root / "coco"
    (img_dir / "train2017").mkdir(parents=True)
    im = Image.new("RGB", (200, 100), (200, 200, 200))
    ImageDraw.Draw(im).polygon([(10, 10), (50, 10), (50, 40), (10, 40)], fill=(255, 0, 0))
    im.save(img_dir / "train2017" / "000000000007.jpg", quality=95)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(img_dir / "000000000003.png")
    Image.new("RGB", (50, 40), (0, 255, 0)).save(img_dir / "000000000009.jpg")
    images = [
        {"id": 7, "width": 200, "height": 100, "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg"},
        {"id": 3, "width": 64, "height": 64, "file_name": "000000000003.png"},
        {"id": 9, "width": 50, "height": 40, "coco_url": "http://images.cocodataset.org/val2017/000000000009.jpg"},
    ]
    if with_missing:
        images.append({"id": 11, "width": 640, "height": 480,
                       "coco_url": "http://images.cocodataset.org/train2017/000000000011.jpg"})
    anns = [
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 160, 80],
         "segmentation": [[0, 0, 5, 5], BIG_PART]},
        {"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 10, 40, 30],
         "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]]},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [150, 50, 55, 40],
         "segmentation": [[150, 50, 205, 60, 180, 90]]},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [1.5, 2, 58.5, 61.9],
         "segmentation": [[1.5, 2.5, 60, 2, 30, 63.9]]},
        {"id": 5, "image_id": 9, "category_id": 2, "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 2]]},
        {"id": 6, "image_id": 11, "category_id": 2, "bbox": [0, 0, 9, 9], "segmentation": [[0, 0, 9, 0, 9, 9]]},
    ]
    cats = [{"id": 1, "name": "baseball_bat"}, {"id": 2, "name": "dog"}]
    instances = root / "lvis_v1_train.json"
    instances.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return instances, img_dir


# Image 7: 200x100 -> smart_resize -> 192x96 (scale 0.96 both ways); image 3: 64x64 unchanged.
EXPECTED_RECORDS = [
    {"images": ["images/000000000003.jpg"], "width": 64, "height": 64,
     "objects": [{"desc": "baseball bat", "poly": [2, 3, 60, 2, 30, 64]}]},  # 1.5 -> 2, 2.5 -> 3, 63.9 -> 64
    {"images": ["images/000000000007.jpg"], "width": 192, "height": 96,
     "objects": [
         {"desc": "dog", "poly": [10, 10, 48, 10, 48, 38, 10, 38]},         # 9.6 -> 10, 38.4 -> 38
         {"desc": "baseball bat", "bbox_2d": [96, 19, 154, 77]},            # 22 points -> bbox; [0,0,5,5] dropped
         {"desc": "dog", "poly": [144, 48, 192, 58, 173, 86]},             # x 205 * 0.96 = 196.8 clamped to 192
     ]},
]


def read_jsonl(path):
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def test_convert_exact_records_images_summary_report(tmp_path):
    instances, img_dir = make_fixture(tmp_path)
    out = tmp_path / "out"
    summary = convert_lvis(instances, img_dir, out, options=ConvertOptions(on_error="skip", shard_size=1),
                           progress=False)
    assert read_jsonl(out / "train.jsonl") == EXPECTED_RECORDS
    with Image.open(out / "images" / "000000000007.jpg") as im:
        assert (im.size, im.format) == ((192, 96), "JPEG")
    with Image.open(out / "images" / "000000000003.jpg") as im:
        assert (im.size, im.format) == ((64, 64), "JPEG")
    assert sorted(os.listdir(out / "images")) == ["000000000003.jpg", "000000000007.jpg"]
    missing = os.path.join(img_dir, "train2017", "000000000011.jpg")
    expected = {
        "instances": str(instances), "split": "train", "out_jsonl": os.path.join(out, "train.jsonl"),
        "images_in": 4, "images_processed_this_run": 4, "images_skipped_done": 0,
        "records": 2, "images_without_objects": 1, "images_failed": {"image_missing": 1},
        "objects": 4, "parts_replaced_by_bbox": 1, "parts_dropped": {"under_3_points": 2},
        "annotations_dropped": {}, "options": {"factor": 32, "max_pixels": 786432, "min_pixels": 4096,
                                               "max_poly_points": 20, "jpeg_quality": 95, "shard_size": 1,
                                               "on_error": "skip"}}
    assert summary == expected
    assert json.loads((out / "train.convert_summary.json").read_text()) == expected
    assert read_jsonl(out / "train.convert_report.jsonl") == [
        {"where": "images[id=11]", "field": "coco_url", "kind": "image_missing",
         "reason": f"image not found; tried {missing}, {os.path.join(img_dir, '000000000011.jpg')}"}]
    # the output is valid for the project's reader, images included
    stream = iter_records(out / "train.jsonl")
    assert [r for _, r in stream] == EXPECTED_RECORDS and stream.summary.skipped == 0


def test_restart_skips_finished_images_and_redoes_the_rest(tmp_path):
    instances, img_dir = make_fixture(tmp_path)
    out = tmp_path / "out"
    opts = ConvertOptions(on_error="skip", shard_size=1)
    convert_lvis(instances, img_dir, out, options=opts, progress=False)
    first = (out / "train.jsonl").read_bytes()
    mtime7 = os.stat(out / "images" / "000000000007.jpg").st_mtime_ns

    again = convert_lvis(instances, img_dir, out, options=opts, progress=False)
    # the failed image (id 11) is retried every run; the three finished ones are skipped
    assert (again["images_processed_this_run"], again["images_skipped_done"]) == (1, 3)
    assert (out / "train.jsonl").read_bytes() == first
    assert os.stat(out / "images" / "000000000007.jpg").st_mtime_ns == mtime7

    # a lost output image makes its shard unfinished; fixing the missing source converts it
    os.remove(out / "images" / "000000000003.jpg")
    Image.new("RGB", (640, 480)).save(img_dir / "train2017" / "000000000011.jpg")
    third = convert_lvis(instances, img_dir, out, options=opts, progress=False)
    assert (third["images_processed_this_run"], third["images_skipped_done"]) == (2, 2)
    assert (third["records"], third["images_failed"]) == (3, {})
    assert [r["images"][0] for r in read_jsonl(out / "train.jsonl")] == [
        "images/000000000003.jpg", "images/000000000007.jpg", "images/000000000011.jpg"]
    assert (out / "images" / "000000000003.jpg").exists()

    with pytest.raises(ValueError, match=r"made by a run with other inputs or options"):
        convert_lvis(instances, img_dir, out, options=ConvertOptions(on_error="skip", shard_size=2), progress=False)


def test_parallel_output_equals_serial(tmp_path):
    instances, img_dir = make_fixture(tmp_path, with_missing=False)
    convert_lvis(instances, img_dir, tmp_path / "a", options=ConvertOptions(shard_size=1), progress=False)
    s = convert_lvis(instances, img_dir, tmp_path / "b", options=ConvertOptions(shard_size=1), num_workers=2,
                     progress=False)
    assert s["records"] == 2
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    for name in ("000000000003.jpg", "000000000007.jpg"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_on_error_raise_names_image_and_fix(tmp_path):
    instances, img_dir = make_fixture(tmp_path)
    with pytest.raises(ConvertError) as info:
        convert_lvis(instances, img_dir, tmp_path / "out", progress=False)
    missing = os.path.join(img_dir, "train2017", "000000000011.jpg")
    assert str(info.value) == (f"{instances}: images[id=11]: coco_url: image not found; tried {missing}, "
                               f"{os.path.join(img_dir, '000000000011.jpg')}")


def test_bad_annotations_raise_or_are_dropped_and_reported(tmp_path):
    instances, img_dir = make_fixture(tmp_path, with_missing=False)
    data = json.loads(instances.read_text())
    data["annotations"] += [
        {"id": 20, "image_id": 3, "category_id": 99, "segmentation": [[0, 0, 9, 0, 9, 9]]},
        {"id": 21, "image_id": 3, "category_id": 2, "segmentation": {"counts": "abc", "size": [64, 64]}},
        {"id": 22, "image_id": 3, "category_id": 2, "segmentation": [[0, 0, 9, 0, 9]]},
    ]
    instances.write_text(json.dumps(data))
    with pytest.raises(ConvertError) as info:
        convert_lvis(instances, img_dir, tmp_path / "raise", progress=False)
    assert str(info.value) == (f"{instances}: annotations[id=20]: category_id: 99 is not in categories "
                               "(fix the instances file)")
    s = convert_lvis(instances, img_dir, tmp_path / "skip", options=ConvertOptions(on_error="skip"), progress=False)
    assert s["annotations_dropped"] == {"malformed_part": 1, "not_polygons": 1, "unknown_category": 1}
    assert read_jsonl(tmp_path / "skip" / "train.jsonl") == EXPECTED_RECORDS
    assert [r["where"] for r in read_jsonl(tmp_path / "skip" / "train.convert_report.jsonl")] == [
        "annotations[id=20]", "annotations[id=21]", "annotations[id=22]"]


def test_max_poly_points_and_max_pixels_options(tmp_path):
    instances, img_dir = make_fixture(tmp_path, with_missing=False)
    out = tmp_path / "out"
    s = convert_lvis(instances, img_dir, out, options=ConvertOptions(max_poly_points=3, max_pixels=64 * 64),
                     progress=False)
    assert s["parts_replaced_by_bbox"] == 2  # the 4-point dog and the 22-point bat
    recs = read_jsonl(out / "train.jsonl")
    # 200x100 above 4,096 px: beta = sqrt(20000 / 4096) -> floor to 32: 64x32 (scale 0.32)
    assert (recs[1]["width"], recs[1]["height"]) == (64, 32)
    assert recs[1]["objects"][0] == {"desc": "dog", "bbox_2d": [3, 3, 16, 13]}  # 10*.32=3.2, 50*.32=16, 40*.32=12.8


def test_cli_main(tmp_path, capsys):
    instances, img_dir = make_fixture(tmp_path)
    out = tmp_path / "out"
    assert main(["--instances", str(instances), "--image_dir", str(img_dir), "--out_dir", str(out),
                 "--split", "val", "--num_workers", "0", "--no_progress", "--on_error", "skip"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["split"], printed["records"]) == ("val", 2)
    assert read_jsonl(out / "val.jsonl") == EXPECTED_RECORDS
    assert main(["--instances", str(instances), "--image_dir", str(img_dir), "--out_dir", str(tmp_path / "o2"),
                 "--num_workers", "0", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert main(["--instances", str(tmp_path / "nope.json"), "--image_dir", str(img_dir), "--out_dir",
                 str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err == (f"error: --instances: {tmp_path / 'nope.json'}: no such file (paths are relative "
                                       f"to the working directory {os.getcwd()})\n")
