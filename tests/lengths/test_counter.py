"""Exact lengths: our count equals len(template.encode(row)['input_ids']) of ms-swift's qwen3_vl template."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from swift_plugins import data
from swift_plugins.lengths import DetectionAnswerCounter
from swift_plugins.training.calibration import counter_from_template, load_template


AWKWARD = [(640, 480), (641, 479), (33, 33), (10, 10), (100, 80), (4000, 3000), (2000, 11), (11, 2000),
           (32, 2048), (1000, 1000), (5000, 5000), (31, 33)]


@pytest.mark.parametrize("max_pixels", [None, 786432, 100000])
def test_counter_equals_template_encode_on_awkward_images(tiny_model_dir, tmp_path, max_pixels):
    template = load_template(tiny_model_dir, max_pixels=max_pixels)
    counter = counter_from_template(template)
    for w, h in AWKWARD:
        image = tmp_path / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (1, 2, 3)).save(image)
        row = {"messages": [{"role": "user", "content": "<image>Detect all objects. Output JSON."},
                            {"role": "assistant", "content": '[{"desc":"hot dog (food)","poly":[%d,2,30,40,5,6]}]' % w}],
               "images": [str(image)]}
        (ours,) = counter.count_rows([row], [[(w, h)]])
        encoded = template.encode(row)
        assert ours.total_tokens == len(encoded["input_ids"]), (w, h)
        assert ours.image_tokens == encoded["input_ids"].count(151655), (w, h)


def test_counter_equals_template_encode_on_bundled_sample(tiny_template, sample_dir):
    counter = counter_from_template(tiny_template)
    answers = DetectionAnswerCounter(counter.text_tokens)
    records = list(data.iter_records(sample_dir / "train.jsonl"))
    assert len(records) >= 100
    for line, record in records:
        row = data.to_swift_row(record, base_dir=sample_dir, sample_key=line)
        encoded = tiny_template.encode(row)
        (ours,) = counter.count_rows([row], [[(record["width"], record["height"])]])
        assert ours.total_tokens == len(encoded["input_ids"]), line
        objects = [(o["desc"], "poly" if "poly" in o else "bbox_2d", o.get("poly", o.get("bbox_2d")))
                   for o in record["objects"]]
        fast = counter.frame(row["messages"][0]["content"], 1) + answers.count(
            [(d, k, data.emit_coords(c, record["width"], record["height"])) for d, k, c in objects])
        assert fast == ours.text_tokens, line


def test_answer_counter_handles_punctuation_and_unicode_descs(tiny_template):
    counter = counter_from_template(tiny_template)
    answers = DetectionAnswerCounter(counter.text_tokens)
    objects = [("bow (weapon)", "poly", [0, 10, 200, 3, 45, 999]), ('say "hi"', "bbox_2d", [1, 2, 3, 4]),
               ("t-shirt", "poly", [5, 5, 6, 6, 7, 7]), ("crème brûlée", "bbox_2d", [0, 0, 1000, 1000]),
               ("teddy's bear", "poly", [1, 1, 2, 2, 3, 3])]
    text = json.dumps([{"desc": d, k: c} for d, k, c in objects], separators=(",", ":"), ensure_ascii=False)
    assert answers.count(objects) == counter.text_tokens([text])[0]
    assert answers.count(objects[:1]) == counter.text_tokens([text.split(',{"desc":"say')[0] + "]"])[0]


def test_qwen3_5_counter_equals_template_encode(tiny_family_dir, sample_dir, tmp_path):
    """ms-swift's qwen3_5 template (content trimmed, the empty think block before each answer, image 248056):
    the bundled LVIS records and awkward image sizes count exactly."""
    template = load_template(tiny_family_dir("qwen3_5"))
    assert template.template_meta.template_type == "qwen3_5" and template.image_token_id == 248056
    counter = counter_from_template(template)
    rows = [(data.to_swift_row(record, base_dir=sample_dir, sample_key=line), (record["width"], record["height"]))
            for line, record in list(data.iter_records(sample_dir / "train.jsonl"))[:15]]
    for w, h in AWKWARD[:6]:
        image = tmp_path / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (1, 2, 3)).save(image)
        rows.append(({"messages": [{"role": "user", "content": "<image>Detect all objects.\n"},
                                   {"role": "assistant", "content": '[{"desc":"a","bbox_2d":[%d,2,3,4]}]' % w}],
                      "images": [str(image)]}, (w, h)))
    tok = template.processor.tokenizer
    think, head = (tok.encode(t, add_special_tokens=False) for t in ("<think>\n\n</think>\n\n", "assistant\n"))
    for row, size in rows:
        encoded = template.encode(row)["input_ids"]
        (ours,) = counter.count_rows([row], [[size]])
        assert (ours.total_tokens, ours.image_tokens) == (len(encoded), encoded.count(248056)), size
        start = len(encoded) - encoded[::-1].index(248045) + len(head)  # after "<|im_start|>assistant\n"
        assert think == encoded[start:start + len(think)]
