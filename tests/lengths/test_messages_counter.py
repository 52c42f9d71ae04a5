"""Messages conversations: our count equals len(template.encode(row)['input_ids']) of ms-swift's qwen3_vl.

Real template on the tiny model, whose tokenizer is Qwen's real BPE with its whitespace merges
(seams: joining "user\\n" with "\\n\\nLook" changes the count), and on a control without them; real
image files of awkward sizes, and each image's size read from its header only.
"""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from helpers import awkward_messages_records, msg
from swift_plugins.data import iter_records, messages_image_sizes, messages_to_swift_row
from swift_plugins.lengths import LengthCounter, SampleLength
from swift_plugins.lengths.chat import render_segments
from swift_plugins.training.calibration import counter_from_template, load_template


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    recs = awkward_messages_records(folder)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    assert [r for _, r in iter_records(path)] == recs  # every hand-made record is valid
    return folder, recs


def encoded(template, row) -> tuple[int, int]:
    ids = template.encode(row)["input_ids"]
    return len(ids), ids.count(template.image_token_id)


def check_exact(template, folder, recs) -> list[int]:
    counter = counter_from_template(template)
    assert counter.chat is not None, counter.chat_error
    totals = []
    for i, rec in enumerate(recs):
        sizes = messages_image_sizes(rec, path="t", line=i, base_dir=str(folder))
        total, pads = encoded(template, messages_to_swift_row(rec, base_dir=folder))
        fast = counter.count_messages(rec["messages"], sizes)
        exact = counter.count_messages_exact(rec["messages"], sizes)
        assert fast == exact, i
        assert (fast.total_tokens, fast.image_tokens) == (total, pads), i
        totals.append(total)
    return totals


@pytest.mark.parametrize("which", ["tiny", "plain"])
def test_count_messages_equals_template_encode(request, records, which):
    template = request.getfixturevalue("tiny_template" if which == "tiny" else "plain_template")
    folder, recs = records
    totals = check_exact(template, folder, recs)
    assert len(totals) == 13 and min(totals) > 10
    assert max(totals) > 4000  # the long record


@pytest.mark.parametrize("which", ["tiny", "plain"])
def test_seams_change_counts_only_on_the_seam_tokenizer(request, records, which):
    """The awkward records do exercise seams. Two shortcuts - tokenizing each conversation as one
    string (what a chat-template counter does) and tokenizing each content apart from the "user\n" /
    "system\n" before it - agree with ms-swift on the plain control (whitespace never merges there)
    and disagree on the tiny model's real Qwen BPE, where only ms-swift's own layout is exact."""
    template = request.getfixturevalue("tiny_template" if which == "tiny" else "plain_template")
    folder, recs = records
    counter = counter_from_template(template)
    tok = template.processor.tokenizer.backend_tokenizer
    chat = counter.chat
    head = {k: len(tok.encode(getattr(chat, k), add_special_tokens=False).ids) for k in ("user_head", "system_head")}
    apart_chat = dataclasses.replace(chat, user_head="", system_head="", first_turn=chat.first_turn + head["user_head"],
                                     next_turn=chat.next_turn + head["user_head"],
                                     system=chat.system + head["system_head"])
    apart = LengthCounter(tok, counter.rule, chat=apart_chat)
    one_string_off, apart_off = 0, 0
    for rec in recs:
        sizes = messages_image_sizes(rec, path="t", line=0, base_dir=str(folder))
        ours = counter.count_messages(rec["messages"], sizes)
        joined = "".join(render_segments(chat, rec["messages"]))
        one_string = len(tok.encode(joined, add_special_tokens=False).ids) - len(sizes) + ours.image_tokens
        one_string_off += one_string != ours.total_tokens
        apart_off += apart.count_messages(rec["messages"], sizes) != ours
    if which == "plain":
        assert (one_string_off, apart_off) == (0, 0)
    else:
        assert one_string_off >= 2 and apart_off >= 2, (one_string_off, apart_off)


def template_with(model_dir, **kwargs):
    from swift import get_model_processor, get_template

    _, processor = get_model_processor(str(model_dir), model_type="qwen3_vl", load_model=False, download_model=False)
    template = get_template(processor, template_type="qwen3_vl", **kwargs)
    template.set_mode("train")
    return template


@pytest.mark.parametrize("loss_scale,losses", [("last_round", (0.0, 0.0, 1.0)), ("all", (1.0, 1.0, 1.0))])
def test_other_loss_layouts_are_read_off_the_template(tiny_model_dir, records, loss_scale, losses):
    """last_round joins history responses to "assistant\\n" (both loss 0); all joins everything."""
    template = template_with(tiny_model_dir, loss_scale=loss_scale)
    counter = counter_from_template(template)
    assert (counter.chat.frame_loss, counter.chat.history_loss, counter.chat.last_loss) == losses
    folder, recs = records
    multi_turn = [r for r in recs if sum(m["role"] == "assistant" for m in r["messages"]) > 1]
    assert len(multi_turn) == 3
    check_exact(template, folder, multi_turn)


def test_template_max_pixels_and_state_round_trip(tiny_model_dir, records):
    template = load_template(tiny_model_dir, max_pixels=100_000)
    folder, recs = records
    check_exact(template, folder, recs[:4])
    counter = counter_from_template(template)
    clone = LengthCounter.from_state(pickle.loads(pickle.dumps(counter.state())))
    for rec in recs:
        sizes = messages_image_sizes(rec, path="t", line=0, base_dir=str(folder))
        assert clone.count_messages(rec["messages"], sizes) == counter.count_messages(rec["messages"], sizes)


def test_worked_example_and_mismatched_sizes(tiny_template):
    counter = counter_from_template(tiny_template)
    conv = [msg("user", "<image>Hi"), msg("assistant", "Yes")]
    # <|im_start|> user \n <|vision_start|> <|vision_end|> Hi <|im_end|> \n <|im_start|> assistant \n Yes
    # <|im_end|> \n: 14 text tokens with Qwen's BPE, as len(template.encode(...)["input_ids"]) - 300
    assert counter.count_messages(conv, [(640, 480)]) == SampleLength(text_tokens=14, image_tokens=300)
    assert counter.count_messages_batch([(conv, [(640, 480)]), (conv, [(10, 10)])]) == [
        SampleLength(14, 300), SampleLength(14, 4)]
    with pytest.raises(ValueError, match="1 <image> tags but 2 image sizes"):
        counter.count_messages(conv, [(640, 480), (1, 1)])
    with pytest.raises(ValueError, match="1 image pads in the encoded conversation but 0 image sizes"):
        counter.count_messages_exact(conv, [])


def test_counter_without_chat_layout_says_how_to_get_one(tiny_template):
    counter = counter_from_template(tiny_template)
    bare = LengthCounter(counter.state()["tokenizer_json"], counter.rule)
    with pytest.raises(KeyError, match="no chat-layout calibration for messages records; build it with "
                                       "swift_plugins.training.calibration.counter_from_template"):
        bare.count_messages([msg("user", "a"), msg("assistant", "b")], [])
    failed = LengthCounter(counter.state()["tokenizer_json"], counter.rule, chat_error="template x: reason")
    with pytest.raises(ValueError, match="messages records cannot be counted with this template: template x: reason"):
        failed.count_messages([msg("user", "a"), msg("assistant", "b")], [])


@pytest.mark.parametrize("loss_scale", ["default", "default+ignore_empty_think"])
def test_qwen3_5_messages_count_equals_template_encode(tiny_family_dir, records, loss_scale):
    """ms-swift's qwen3_5 template trims every content, re-wraps <think> blocks and puts the empty think block
    before each response; training adds ``+ignore_empty_think`` (that block at loss 0, tokenized apart): read off
    the template (trim, response_prefix, zero_loss_heads), exact on the awkward records."""
    template = load_template(tiny_family_dir("qwen3_5"))
    template._loss_scale = loss_scale  # what ms-swift's TemplateArguments._set_loss_scale picks for training
    folder, recs = records
    think = msg("assistant", "  <think>\n  because \n</think>\n\n\n It is red. ")
    empty = msg("assistant", "<think> </think> Empty thinking.")
    totals = check_exact(template, folder, recs + [{"messages": [msg("user", "Why?"), think, msg("user", "So?"),
                                                                 empty]}])
    chat = counter_from_template(template).chat
    assert (chat.trim, chat.response_prefix) == (True, "<think>\n\n</think>\n\n")
    assert bool(chat.zero_loss_heads) == (loss_scale != "default")
    assert len(totals) == 14 and max(totals) > 4000
