"""swift_plugins.lengths.chat: turns, ms-swift's segments, fast-count pieces and constants on a hand-made frame."""
import dataclasses

import pytest

from helpers import msg
from swift_plugins.lengths.chat import ChatFrame, content_pieces, frame_tokens, render_segments, split_turns

V = "<|vision_start|><|image_pad|><|vision_end|>"
# qwen3_vl's layout and the tiny model's constants (calibration.chat_frame's docstring), default loss scale
QWEN = ChatFrame(prefix="", system_prefix="<|im_start|>system\n{{SYSTEM}}<|im_end|>\n",
                 prompt="<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n", chat_sep="<|im_end|>\n",
                 suffix="<|im_end|>\n", image=V, image_pad="<|image_pad|>", default_system=None,
                 frame_loss=0.0, history_loss=1.0, last_loss=1.0, system_head="system\n", user_head="user\n",
                 assistant_head="assistant\n", first_turn=8, next_turn=8, system=3, per_image=2)
LAST_ROUND = dataclasses.replace(QWEN, history_loss=0.0)
ALL = dataclasses.replace(QWEN, frame_loss=1.0)

s, u, a = (lambda c: msg("system", c)), (lambda c: msg("user", c)), (lambda c: msg("assistant", c))
HI = [u("<image>Hi"), a("\nYes")]
CONVO = [s("Be brief."), u("Compare <image> and <image>."), a("Left."), u("Now<image>"), a("Done.")]


def test_split_turns_without_and_with_system():
    assert split_turns(HI) == [("<image>Hi", "\nYes")]
    assert split_turns(CONVO) == [("Compare <image> and <image>.", "Left."), ("Now<image>", "Done.")]
    assert split_turns([]) == []


def test_system_text_message_default_and_empty():
    with_default = dataclasses.replace(QWEN, default_system="You are helpful.")
    assert QWEN.system_text(CONVO) == "Be brief."
    assert QWEN.system_text(HI) == ""
    assert with_default.system_text(HI) == "You are helpful."
    assert with_default.system_text([s(""), *HI]) == ""  # an empty system message replaces the default


def test_to_dict_has_every_field():
    d = QWEN.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(ChatFrame)]
    assert (d["prompt"], d["per_image"], d["default_system"]) == (QWEN.prompt, 2, None)
    assert ChatFrame(**d) == QWEN


def test_render_segments_worked_example_of_the_docstring():
    assert render_segments(QWEN, HI) == [
        "<|im_start|>user\n" + V + "Hi<|im_end|>\n<|im_start|>assistant\n", "\nYes<|im_end|>\n"]


def test_render_segments_system_multi_turn_several_images():
    assert render_segments(QWEN, CONVO) == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare " + V + " and " + V
        + ".<|im_end|>\n<|im_start|>assistant\n",
        "Left.",
        "<|im_end|>\n<|im_start|>user\nNow" + V + "<|im_end|>\n<|im_start|>assistant\n",
        "Done.<|im_end|>\n"]


def test_render_segments_last_round_joins_history_responses_to_the_frame():
    assert render_segments(LAST_ROUND, CONVO) == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare " + V + " and " + V
        + ".<|im_end|>\n<|im_start|>assistant\nLeft.<|im_end|>\n<|im_start|>user\nNow" + V
        + "<|im_end|>\n<|im_start|>assistant\n",
        "Done.<|im_end|>\n"]


def test_render_segments_all_loss_cuts_at_each_image():
    assert render_segments(ALL, CONVO) == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare ", V, " and ", V,
        ".<|im_end|>\n<|im_start|>assistant\nLeft.<|im_end|>\n<|im_start|>user\nNow", V,
        "<|im_end|>\n<|im_start|>assistant\nDone.<|im_end|>\n"]


def test_render_segments_default_system_and_prefix():
    frame = dataclasses.replace(QWEN, prefix="<s>", default_system="Sys")
    assert render_segments(frame, HI) == [
        "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\n" + V + "Hi<|im_end|>\n<|im_start|>assistant\n",
        "\nYes<|im_end|>\n"]
    assert render_segments(frame, [s(""), *HI]) == [  # empty system: the prefix instead
        "<s><|im_start|>user\n" + V + "Hi<|im_end|>\n<|im_start|>assistant\n", "\nYes<|im_end|>\n"]


def test_content_pieces_worked_example_of_the_docstring():
    assert content_pieces(QWEN, HI) == (["user\n", "Hi", "\nYes"], 1)


def test_content_pieces_system_multi_turn_several_images():
    assert content_pieces(QWEN, CONVO) == (
        ["system\nBe brief.", "user\nCompare ", " and ", ".", "Left.", "user\nNow", "", "Done."], 3)


def test_content_pieces_joins_responses_where_the_loss_equals_the_frame_loss():
    assert content_pieces(LAST_ROUND, CONVO)[0][4:] == ["assistant\nLeft.", "user\nNow", "", "Done."]
    assert content_pieces(ALL, CONVO)[0][4:] == ["assistant\nLeft.", "user\nNow", "", "assistant\nDone."]


def test_content_pieces_text_only_and_default_system():
    frame = dataclasses.replace(QWEN, default_system="Sys")
    assert content_pieces(frame, [u("2+2?"), a("4")]) == (["system\nSys", "user\n2+2?", "4"], 0)
    assert content_pieces(frame, [s(""), u("2+2?"), a("4")]) == (["user\n2+2?", "4"], 0)


@pytest.mark.parametrize("messages, images, expected", [
    (HI, 1, 8 + 2),
    ([u("2+2?"), a("4")], 0, 8),
    (CONVO, 3, 8 + 8 + 3 + 3 * 2),
    ([s(""), *HI], 1, 8 + 2),                                   # an empty system is no system
    ([u("a"), a("b"), u("c"), a("d"), u("e"), a("f")], 0, 8 + 2 * 8),
])
def test_frame_tokens(messages, images, expected):
    assert frame_tokens(QWEN, messages, images) == expected


def test_frame_tokens_counts_the_default_system():
    assert frame_tokens(dataclasses.replace(QWEN, default_system="Sys"), HI, 1) == 8 + 3 + 2


def test_prepared_trims_rewraps_thinking_and_prefixes_responses():
    from swift_plugins.lengths.chat import prepared

    frame = dataclasses.replace(QWEN, trim=True, response_prefix="<think>\n\n</think>\n\n")
    messages = [msg("system", " s \n"), msg("user", "\n q "), msg("assistant", " a "),
                msg("user", "r"), msg("assistant", "\n<think>\n\n x \n</think>\n\n\nb ")]
    assert [m["content"] for m in prepared(frame, messages)] == [
        "s", "q", "<think>\n\n</think>\n\na", "r", "<think>\nx\n</think>\n\nb"]
    assert prepared(QWEN, messages) is messages  # a template that does neither: untouched
    assert render_segments(frame, messages[1:3])[-1] == "<think>\n\n</think>\n\na" + QWEN.suffix
