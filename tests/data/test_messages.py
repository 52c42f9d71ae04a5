"""Messages records: one exact message per problem kind, kind detection, the ms-swift row."""
import json

import pytest

from helpers import GOOD, first_error, msg, save_image, write_lines
from swift_plugins.data import (RECORD_FORMATS, RecordError, image_paths, iter_records, messages_to_swift_row,
                                record_kind, swift_row, to_swift_row, validate_record)

U, A, S = (lambda c: msg("user", c)), (lambda c: msg("assistant", c)), (lambda c: msg("system", c))
MGOOD = {"messages": [U("<image>Hi"), A("Yes")], "images": ["img.png"]}


def m(*messages, images=("img.png",), **extra):
    rec = {"messages": list(messages), "images": list(images)}
    rec.update(extra)
    return rec


ORDER_FIX = ("turns alternate user, assistant, user, ... after the optional system message; merge consecutive "
             "turns of one role")
MESSAGE_FIX = 'write {"role": "user" | "assistant" | "system", "content": "..."}'
UNSUPPORTED_FIX = "drop the key, or train this data with plain ms-swift"

# One case per kind (and per distinct message): (record line, kind, field, message)
CASES = [
    ('{"messages": [{"role": "user"', "invalid_json", "<json>",
     "invalid JSON: Expecting ',' delimiter at column 30 (write exactly one JSON object per line)"),
    (m(), "bad_messages", "messages", 'expected a non-empty list of messages, got an empty list (write "messages": '
     '[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}])'),
    ({"messages": "hi"}, "bad_messages", "messages", 'expected a non-empty list of messages, got "hi" (write '
     '"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}])'),
    (m(5, A("x")), "bad_message", "messages[0]", f"expected an object, got 5 ({MESSAGE_FIX})"),
    (m({"content": "<image>"}, A("x")), "bad_message", "messages[0].role", f"missing ({MESSAGE_FIX})"),
    (m(U("<image>"), {"role": "assistant"}), "bad_message", "messages[1].content", f"missing ({MESSAGE_FIX})"),
    (m({"role": 3, "content": "<image>"}, A("x")), "bad_message", "messages[0].role",
     "expected a string, got 3 (use system, user or assistant)"),
    (m(msg("human", "<image>"), A("x")), "unknown_role", "messages[0].role",
     "unknown role \"human\" (use system, user or assistant; sharegpt's human / gpt are not read here)"),
    (m(U("<image>"), A("x"), msg("tool", "42"), A("y")), "unsupported_role", "messages[2].role",
     '"tool": tool turns are not supported yet (drop tool calls and results; use system, user and assistant turns)'),
    (m(U("<image>"), {"role": "assistant", "content": "x", "loss": False}), "unsupported_field", "messages[1].loss",
     "not supported yet (drop the key; every assistant turn is trained on, every other turn is not)"),
    (m({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}, A("x")),
     "unsupported_content", "messages[0].content", 'a list of content parts is not supported yet (write the turn as '
     'one string with <image> tags and list the images in "images")'),
    (m(U("<image>"), msg("assistant", None)), "unsupported_content", "messages[1].content",
     'expected a string, got null (write the turn as one string with <image> tags and list the images in "images")'),
    (m(U("<image>"), A("x"), S("late"), U("y"), A("z")), "role_order", "messages[2].role",
     "a system message after the first message (only the first message may be the system prompt; move or merge it)"),
    (m(S("sys"), images=()), "role_order", "messages",
     "only a system message (add a user turn and the assistant's answer)"),
    (m(A("x"), U("<image>")), "role_order", "messages[0].role", f"expected user, got assistant ({ORDER_FIX})"),
    (m(S("s"), U("<image>"), U("more"), A("x")), "role_order", "messages[2].role",
     f"expected assistant, got user ({ORDER_FIX})"),
    (m(U("<image>"), A("x"), U("and?")), "role_order", "messages[2].role",
     "the conversation ends with a user turn (end with the assistant's answer; drop the unanswered user turn)"),
    (m(U("<image>"), A("")), "empty_response", "messages[1].content", "empty assistant turn (write the answer the "
     "model should learn, or drop this turn and the user turn before it)"),
    (m(U("<image>"), A(" \n\t")), "empty_response", "messages[1].content", "whitespace-only assistant turn (write "
     "the answer the model should learn, or drop this turn and the user turn before it)"),
    (m(U("<image><video>"), A("x")), "unsupported_tag", "messages[0].content",
     "<video> tag: video inputs are not supported yet (remove the <video> tag)"),
    (m(U("<image>"), A("hear <audio>")), "unsupported_tag", "messages[1].content",
     "<audio> tag: audio inputs are not supported yet (remove the <audio> tag)"),
    (m(U("see <img>cat.png</img>"), A("x"), images=()), "unsupported_tag", "messages[0].content",
     '<img>...</img> in a record without images: ms-swift would read it as an image (list the image in "images" '
     'and write an <image> tag)'),
    (m(U("<image>"), A("done<|im_end|>")), "reserved_text", "messages[1].content",
     "contains <|im_end|>, which ms-swift does not encode as text (remove or rewrite <|im_end|>)"),
    (m(U("<image><|image_pad|>"), A("x")), "reserved_text", "messages[0].content",
     "contains <|image_pad|>, which ms-swift does not encode as text (remove or rewrite <|image_pad|>)"),
    (m(U("<image>round {{ROUND0}}"), A("x")), "reserved_text", "messages[0].content",
     "contains {{ROUND0}}, which ms-swift does not encode as text (remove or rewrite {{ROUND0}})"),
    (m(S("look: <image>"), U("x"), A("y")), "image_tag_position", "messages[0].content",
     "an <image> tag in the system prompt (put <image> tags in user turns only)"),
    (m(U("x"), A("here <image>")), "image_tag_position", "messages[1].content",
     "an <image> tag in an assistant turn (put <image> tags in user turns only)"),
    ({"messages": [U("<image>"), A("x")], "images": "img.png"}, "bad_images", "images",
     'expected a list of image paths, got "img.png" (write "images": ["path/to/image.jpg", ...])'),
    (m(U("<image>"), A("x"), images=[""]), "bad_images", "images[0]",
     'expected an image path (a non-empty string), got "" (write the path relative to the JSONL\'s folder or absolute)'),
    (m(U("<image><image>"), A("x"), images=["img.png", {"bytes": None}]), "bad_images", "images[1]",
     "expected an image path (a non-empty string), got an object (write the path relative to the JSONL's folder "
     "or absolute)"),
    (m(U("<image>"), A("x"), images=["https://x.org/a.jpg"]), "unsupported_field", "images[0]",
     '"https://x.org/a.jpg": remote or inline images are not supported (store the image as a file and give its path)'),
    (m(U("<image> and <image>"), A("x")), "image_count", "images",
     "2 <image> tags in the user turns but 1 image (give one image per <image> tag, in the order of the tags)"),
    (m(U("no tag"), A("x")), "image_count", "images",
     "0 <image> tags in the user turns but 1 image (give one image per <image> tag, in the order of the tags)"),
    (m(U("<image>"), A("x"), images=()), "image_count", "images",
     "1 <image> tag in the user turns but 0 images (give one image per <image> tag, in the order of the tags)"),
    (m(U("<image>"), A("x"), videos=["v.mp4"]), "unsupported_field", "videos",
     f"video inputs are not supported yet ({UNSUPPORTED_FIX})"),
    (m(U("<image>"), A("x"), audios=["a.wav"]), "unsupported_field", "audios",
     f"audio inputs are not supported yet ({UNSUPPORTED_FIX})"),
    (m(U("<image>"), A("x"), tools='[{"name": "f"}]'), "unsupported_field", "tools",
     f"tool / agent conversations are not supported yet ({UNSUPPORTED_FIX})"),
    (m(U("<image>"), A("x"), objects={"ref": ["cat"], "bbox": [[1, 2, 3, 4]]}), "unsupported_field", "objects",
     "ms-swift grounding objects (<ref-object> / <bbox>) are not supported yet (drop the key and write the boxes "
     "as text in the assistant turn)"),
    (m(U("<image>"), A("x"), system="Be brief."), "unsupported_field", "system",
     'a top-level system prompt is not read here (make it the first message: {"role": "system", "content": ...})'),
    (m(U("Hi"), A("x"), images=(), image="img.png"), "unsupported_field", "image",
     'a singular "image" key is not read here (write "images": ["path/to/image.jpg", ...])'),
    ({"conversations": [], "image": "img.png"}, "unknown_format", "<record>",
     'fits neither record format: a messages record has "messages", "images"; an LVIS record has "images", '
     '"width", "height", "objects"; got keys "conversations", "image" (write one of the two formats, see '
     'public_data/README.md)'),
    ({}, "unknown_format", "<record>",
     'fits neither record format: a messages record has "messages", "images"; an LVIS record has "images", '
     '"width", "height", "objects"; got keys none (write one of the two formats, see public_data/README.md)'),
    ({**GOOD, "messages": MGOOD["messages"]}, "ambiguous_format", "<record>",
     'has both "messages" and the LVIS keys "width", "height", "objects" (keep one format per record, or set '
     'record_format to lvis or messages)'),
]


@pytest.mark.parametrize("line,kind,field,message", CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_messages_validator_message_per_kind(folder, line, kind, field, message):
    e = first_error(folder, line)
    assert (e.kind, e.field, e.message) == (kind, field, message)


def test_image_missing_unreadable_and_aspect_ratio(folder):
    e = first_error(folder, m(U("<image><image>"), A("x"), images=["img.png", "sub/none.png"]))
    assert (e.kind, e.field, e.message) == ("image_missing", "images[1]", f"file not found: {folder / 'sub/none.png'} "
                                            "(fix the path; relative paths resolve against the JSONL's folder)")
    (folder / "bad.png").write_bytes(b"\x89PNG not really")
    e = first_error(folder, m(U("<image>"), A("x"), images=["bad.png"]))
    assert (e.kind, e.field, e.message) == (
        "image_unreadable", "images[0]", f"cannot read the image header of {folder / 'bad.png'}: "
        f"UnidentifiedImageError: cannot identify image file '{folder / 'bad.png'}' (re-encode the image as JPEG or PNG)")
    save_image(folder / "thin.png", (4020, 20))
    e = first_error(folder, m(U("<image>"), A("x"), images=["thin.png"]))
    assert (e.kind, e.field, e.message) == ("aspect_ratio", "images[0]", "aspect ratio 201.0 (4020x20) exceeds 200 "
                                            "(the Qwen-VL resize refuses it; crop or pad the image)")
    # without check_images the disk is not touched: the missing image passes the validator
    path = write_lines(folder, [m(U("<image>"), A("x"), images=["gone.png"])])
    assert [n for n, _ in iter_records(path, check_images=False)] == [1]


def test_valid_records_pass_unchanged(folder):
    save_image(folder / "pics" / "b.jpg", (641, 479))
    good = [
        MGOOD,
        m(S("Be brief."), U("Compare <image> and\n<image>."), A("\n left "), U("Why?"),
          A("{{ROUND0}} <bbox> <ref-object> <|box_start|>(1,2),(3,4)<|box_end|> <think>"),
          images=["img.png", "pics/b.jpg"]),
        m(U("Text only?"), A("ok"), images=[], videos=[], tools=None, system=""),  # empty: no-op keys
        {"messages": [S(""), U("Hi"), A("Yo")]},  # no images key at all; an empty system prompt
        m(U("<image>"), {"role": "assistant", "content": "x", "name": "bot"}, extra=1),  # other keys ignored
    ]
    path = write_lines(folder, good)
    assert [r for _, r in iter_records(path)] == good
    for rec in good:
        assert validate_record(rec, path=str(path), record_format="messages") is rec


def test_record_kind_auto_and_forced_formats(folder):
    assert RECORD_FORMATS == ("auto", "lvis", "messages")
    assert record_kind(MGOOD) == "messages" and record_kind(GOOD) == "lvis"
    assert record_kind({"width": 3}) == "lvis" and record_kind({"messages": 1}) == "messages"
    assert record_kind({**GOOD, "messages": []}, "lvis") == "lvis"  # forced: the extra key is ignored, as before
    assert record_kind({**GOOD, "messages": []}, "messages") == "messages"
    with pytest.raises(RecordError) as info:
        record_kind(GOOD, "messages", path="t.jsonl", line=4)
    assert str(info.value) == (
        't.jsonl:4: <record>: record_format is messages but the record has no "messages"; a messages record has '
        '"messages", "images"; an LVIS record has "images", "width", "height", "objects"; got keys "images", "width", '
        '"height", "objects" (write the conversation as "messages", or set record_format to lvis or auto)')
    assert info.value.kind == "unknown_format"
    with pytest.raises(RecordError) as info:
        record_kind(MGOOD, "lvis", path="t.jsonl", line=5)
    assert str(info.value) == (
        't.jsonl:5: <record>: record_format is lvis but this is a messages record; a messages record has "messages", '
        '"images"; an LVIS record has "images", "width", "height", "objects"; got keys "messages", "images" (set '
        'record_format to messages or auto)')
    with pytest.raises(RecordError, match="expected a JSON object, got a list") as info:
        record_kind([MGOOD])
    assert info.value.kind == "not_an_object"
    with pytest.raises(ValueError, match=r"record_format: 'jsonl' is not one of \['auto', 'lvis', 'messages'\]"):
        record_kind(MGOOD, "jsonl")
    # the validator's default stays lvis (compatibility); the reader's is auto
    with pytest.raises(RecordError, match="record_format is lvis"):
        validate_record(MGOOD, path=str(folder / "x.jsonl"))
    path = write_lines(folder, [GOOD, MGOOD])
    assert [record_kind(r) for _, r in iter_records(path)] == ["lvis", "messages"]
    with pytest.raises(RecordError, match=r":2: <record>: record_format is lvis"):
        list(iter_records(path, record_format="lvis"))
    with pytest.raises(RecordError, match=r":1: <record>: record_format is messages"):
        list(iter_records(path, record_format="messages"))
    with pytest.raises(ValueError, match="record_format: 'x' is not one of"):
        iter_records(path, record_format="x")


def test_mixed_file_skip_report_counts_every_record(folder):
    bad_msg = m(U("<image>"), A(""))
    path = write_lines(folder, [GOOD, MGOOD, "", bad_msg, {"conversations": []}, {**GOOD, "width": 0}, MGOOD])
    report = folder / "skipped.jsonl"
    stream = iter_records(path, on_error="skip", report_path=report)
    assert [n for n, _ in stream] == [1, 2, 7]
    s = stream.summary
    assert (s.read, s.valid, s.skipped, s.blank_lines) == (6, 3, 3, 1)
    assert s.skipped_by_kind == {"bad_size": 1, "empty_response": 1, "unknown_format": 1}
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(r["line"], r["field"], r["kind"]) for r in rows] == [
        (4, "messages[1].content", "empty_response"), (5, "<record>", "unknown_format"), (6, "width", "bad_size")]
    assert rows[0]["raw"] == json.dumps(bad_msg)


def test_messages_to_swift_row_and_swift_row(tmp_path):
    rec = m(S("sys"), U("<image>a"), {"role": "assistant", "content": "b", "id": 7}, U("<image>"), A("c"),
            images=["x/../a.jpg", "/abs/b.png"], meta={"k": 1})
    row = messages_to_swift_row(rec, base_dir=tmp_path)
    assert row == {"messages": [S("sys"), U("<image>a"), A("b"), U("<image>"), A("c")],
                   "images": [str(tmp_path / "a.jpg"), "/abs/b.png"]}
    assert image_paths(rec, tmp_path) == row["images"] and image_paths({"messages": []}, tmp_path) == []
    assert messages_to_swift_row({"messages": [U("q"), A("a")]}, base_dir=tmp_path)["images"] == []
    assert rec["messages"][2] == {"role": "assistant", "content": "b", "id": 7}  # the record is not modified
    assert swift_row(rec, "messages", base_dir=tmp_path, emit_norm="norm1000", sample_key=3) == row
    assert swift_row(GOOD, "lvis", base_dir=tmp_path, sample_key=3, emit_norm="norm1000") == to_swift_row(
        GOOD, base_dir=tmp_path, sample_key=3, emit_norm="norm1000")
    with pytest.raises(ValueError, match=r"kind: 'sharegpt' is not one of \['lvis', 'messages'\]"):
        swift_row(rec, "sharegpt", base_dir=tmp_path)


def test_system_message_is_what_ms_swift_reads_as_the_system(tiny_template, tmp_path):
    """ms-swift takes a leading system message as the template's system prompt (no default for qwen3_vl)."""
    save_image(tmp_path / "a.png", (64, 64))
    rec = m(S("Be brief."), U("<image>Hi"), A("Yes"), images=["a.png"])
    enc = tiny_template.encode(messages_to_swift_row(rec, base_dir=tmp_path))
    text = tiny_template.processor.tokenizer.decode(enc["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n")
