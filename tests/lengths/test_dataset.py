"""swift_plugins.lengths.dataset: count_dataset on messages records and on a mixed LVIS + messages file: exact, cached, self-checking."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from helpers import GOOD, awkward_messages_records, msg, save_corrupt_png, save_image, write_lines
from swift_plugins.data import RecordError, iter_records, record_kind, swift_row
from swift_plugins.lengths import KIND_CODES, LengthCounter, count_dataset, messages_record_length
from swift_plugins.lengths import dataset as dataset_mod

ONE = {"messages": [msg("user", "<image>Hi"), msg("assistant", "Yes")], "images": ["img.png"]}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A file mixing LVIS records (img.png, 40x20) and the awkward messages records, with a blank line."""
    folder = tmp_path_factory.mktemp("mixed")
    save_image(folder / "img.png", (40, 20))
    msgs = awkward_messages_records(folder)
    lines = [GOOD, msgs[0], msgs[1], "", {**GOOD, "objects": [{"desc": "dog", "bbox_2d": [0, 0, 40, 20]}] * 3}]
    lines += msgs[2:] + [GOOD]
    return write_lines(folder, lines, "train.jsonl")


def test_mixed_file_in_one_call_equals_template_encode(tiny_template, counter, mixed):
    res = count_dataset(mixed, counter)
    records = list(iter_records(mixed))
    assert res.line.tolist() == [n for n, _ in records] and len(res) == 16 and res.summary.blank_lines == 1
    kinds = [record_kind(r) for _, r in records]
    assert res.kind.dtype == np.int8 and res.kind.tolist() == [KIND_CODES[k] for k in kinds]
    assert res.kind.tolist() == [0, 1, 1, 0] + [1] * 11 + [0]
    assert res.num_images.tolist() == [1 if k == "lvis" else len(r.get("images", [])) for k, (_, r) in
                                       zip(kinds, records)]
    assert res.num_objects.tolist() == [len(r["objects"]) if k == "lvis" else 0 for k, (_, r) in zip(kinds, records)]
    for (line, rec), kind, text, image in zip(records, kinds, res.text_tokens, res.image_tokens):
        ids = tiny_template.encode(swift_row(rec, kind, base_dir=mixed.parent, sample_key=line))["input_ids"]
        assert (int(text) + int(image), int(image)) == (len(ids), ids.count(tiny_template.image_token_id)), line
        if kind == "messages":
            assert messages_record_length(rec, counter, mixed.parent) == len(ids)


def test_worker_count_does_not_change_results(counter, mixed):
    one = count_dataset(mixed, counter, num_workers=1)
    two = count_dataset(mixed, counter, num_workers=2)
    for name in ("line", "text_tokens", "image_tokens", "num_objects", "kind", "num_images"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert one.summary.to_dict() == two.summary.to_dict()


def test_record_format_is_part_of_the_cache_key(counter, mixed, tmp_path):
    keys = {fmt: dataset_mod.cache_key(str(mixed), counter, {}, on_error="skip", check_images=True, max_records=0,
                                       prompt_frame=1, record_format=fmt) for fmt in ("auto", "lvis", "messages")}
    assert len(set(keys.values())) == 3
    cache = tmp_path / "cache"
    auto = count_dataset(mixed, counter, on_error="skip", cache_dir=cache)
    only_messages = count_dataset(mixed, counter, on_error="skip", cache_dir=cache, record_format="messages")
    only_lvis = count_dataset(mixed, counter, on_error="skip", cache_dir=cache, record_format="lvis")
    assert not (auto.from_cache or only_messages.from_cache or only_lvis.from_cache)
    assert (len(auto), len(only_messages), len(only_lvis)) == (16, 13, 3)
    assert (only_messages.summary.skipped_by_kind, only_lvis.summary.skipped_by_kind) == (
        {"unknown_format": 3}, {"unknown_format": 13})
    again = count_dataset(mixed, counter, on_error="skip", cache_dir=cache, record_format="messages")
    assert again.from_cache and np.array_equal(again.total_tokens, only_messages.total_tokens)
    assert again.kind.dtype == np.int8 and again.num_images.tolist() == only_messages.num_images.tolist()


def test_the_model_family_is_part_of_the_cache_key(counter, mixed):
    """Two families can share tokenizer, image rule and chat layout (Qwen3-VL and its MoE): still two entries."""
    from swift_plugins.lengths.counter import LengthCounter

    assert counter.family == "qwen3_vl" and counter.state()["family"] == "qwen3_vl"
    moe = LengthCounter.from_state({**counter.state(), "family": "qwen3_vl_moe"})
    assert (moe.rule, moe.chat, moe.family) == (counter.rule, counter.chat, "qwen3_vl_moe")
    keys = {c.family: dataset_mod.cache_key(str(mixed), c, {}, on_error="skip", check_images=True, max_records=0,
                                            prompt_frame=1) for c in (counter, moe)}
    assert len(set(keys.values())) == 2


def test_a_changed_image_invalidates_the_cache(counter, tmp_path):
    save_image(tmp_path / "img.png", (64, 64))
    path = write_lines(tmp_path, [ONE])
    first = count_dataset(path, counter, cache_dir=tmp_path / "cache")
    assert count_dataset(path, counter, cache_dir=tmp_path / "cache").from_cache
    save_image(tmp_path / "img.png", (640, 480))  # same JSONL bytes, another image size
    os.utime(tmp_path / "img.png", ns=(1, 1))
    second = count_dataset(path, counter, cache_dir=tmp_path / "cache")
    assert not second.from_cache
    assert (first.image_tokens.tolist(), second.image_tokens.tolist()) == ([4], [300])


def test_messages_images_are_read_even_without_check_images(counter, tmp_path):
    path = write_lines(tmp_path, [ONE])
    with pytest.raises(RecordError) as info:
        count_dataset(path, counter, check_images=False)
    assert (info.value.kind, info.value.field, info.value.line) == ("image_missing", "images[0]", 1)
    skipped = count_dataset(path, counter, check_images=False, on_error="skip", report_path=tmp_path / "skip.jsonl")
    assert len(skipped) == 0 and skipped.summary.skipped_by_kind == {"image_missing": 1}
    assert json.loads((tmp_path / "skip.jsonl").read_text())["field"] == "images[0]"


def test_a_messages_only_file_needs_only_the_chat_layout(counter, tmp_path):
    save_image(tmp_path / "img.png", (64, 64))
    path = write_lines(tmp_path, [ONE, ONE])
    state = counter.state()
    chat_only = LengthCounter(state["tokenizer_json"], counter.rule, chat=counter.chat)  # no LVIS frame measured
    res = count_dataset(path, chat_only, record_format="messages")
    assert res.total_tokens.tolist() == [18, 18]  # 14 text (Qwen's BPE) + 4 image tokens (64x64)
    with pytest.raises(KeyError, match="no calibration for user text"):
        count_dataset(path, chat_only)  # auto may meet LVIS records: their frame is needed
    bare = LengthCounter(state["tokenizer_json"], counter.rule, frames=state["frames"])
    with pytest.raises(KeyError, match="no chat-layout calibration for messages records"):
        count_dataset(path, bare, record_format="messages")


def test_the_self_check_catches_a_wrong_fast_count(counter, tmp_path):
    """Line 997 is also counted by tokenizing ms-swift's own strings; a constant off by one is caught."""
    save_image(tmp_path / "img.png", (64, 64))
    path = write_lines(tmp_path, [ONE] * dataset_mod.VERIFY_EVERY)
    assert count_dataset(path, counter).total_tokens.tolist() == [18] * 997
    state = counter.state()
    off = LengthCounter(state["tokenizer_json"], counter.rule, state["frames"],
                        chat=dataclasses.replace(counter.chat, first_turn=counter.chat.first_turn + 1))
    with pytest.raises(RuntimeError, match=r":997: fast length 15\+4 != tokenizer 14\+4; please report this record"):
        count_dataset(path, off)


def test_resize_refusal_is_a_record_error(counter, tmp_path):
    save_image(tmp_path / "img.png", (64, 64))
    save_image(tmp_path / "thin.png", (1990, 10))  # ratio 199: the validator allows it, a stricter rule may not
    rule = dataclasses.replace(counter.rule, max_ratio=100)
    strict = LengthCounter(counter.state()["tokenizer_json"], rule, chat=counter.chat)
    rec = {"messages": [msg("user", "<image><image>"), msg("assistant", "x")], "images": ["img.png", "thin.png"]}
    path = write_lines(tmp_path, [rec])
    with pytest.raises(RecordError) as info:
        count_dataset(path, strict, record_format="messages")
    assert (info.value.field, info.value.kind) == ("images[1]", "image_size")
    assert info.value.message == ("absolute aspect ratio must be smaller than 100, got 199 for 1990x10 "
                                  "(fix or drop the image)")


def test_bundled_messages_sample_counts_equal_template_encode(tiny_template, counter, repo_root):
    from swift_plugins.data import messages_to_swift_row

    folder = repo_root / "public_data" / "messages" / "sample"
    for split in ("train", "val"):
        res = count_dataset(folder / f"{split}.jsonl", counter, record_format="messages")
        records = list(iter_records(folder / f"{split}.jsonl"))
        assert len(res) == len(records) == {"train": 40, "val": 10}[split]
        for (line, rec), total in zip(records, res.total_tokens.tolist()):
            assert len(tiny_template.encode(messages_to_swift_row(rec, base_dir=folder))["input_ids"]) == total, line


def test_an_undecodable_image_is_a_bad_record_and_a_later_corruption_voids_the_cache(counter, tmp_path):
    """Header fine, pixel data corrupt: path:line under raise, listed under skip (LVIS and messages alike)."""
    save_image(tmp_path / "img.png", (40, 20))
    save_corrupt_png(tmp_path / "bad.png", (40, 20))
    path = write_lines(tmp_path, [GOOD, dict(GOOD, images=["bad.png"]), dict(ONE, images=["bad.png"])])
    with pytest.raises(RecordError) as info:
        count_dataset(path, counter)
    assert (str(info.value).split(": ")[0], info.value.kind) == (f"{path}:2", "image_undecodable")
    skipped = count_dataset(path, counter, on_error="skip", report_path=tmp_path / "skip.jsonl")
    assert len(skipped) == 1 and skipped.summary.skipped_by_kind == {"image_undecodable": 2}
    assert [(r["line"], r["kind"]) for r in map(json.loads, (tmp_path / "skip.jsonl").read_text().splitlines())] == [
        (2, "image_undecodable"), (3, "image_undecodable")]
    assert len(count_dataset(path, counter, check_images=False, on_error="skip")) == 3  # the opt-out: headers only
    good = write_lines(tmp_path, [GOOD], name="good.jsonl")
    assert len(count_dataset(good, counter, cache_dir=tmp_path / "cache")) == 1
    save_corrupt_png(tmp_path / "img.png", (40, 20))  # the image breaks after it was counted
    with pytest.raises(RecordError, match="cannot be decoded"):
        count_dataset(good, counter, cache_dir=tmp_path / "cache")


def test_a_ctrl_c_while_the_workers_start_is_held_back_and_then_raised_not_lost():
    """SIGINT is blocked while the pool starts (the workers inherit the block until their initializer
    ignores it). Before, the parent ignored SIGINT in that window and a Ctrl-C there was dropped."""
    import signal
    import threading

    from swift_plugins.lengths.dataset import _hold_sigint

    # Python's own Ctrl-C handler, as a terminal's run has it: a test run started as a background job of a
    # non-interactive shell inherits SIGINT ignored (POSIX), and a released SIGINT would then be discarded
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        release = _hold_sigint()
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # held: nothing is raised here
        for _ in range(1000):  # the interpreter would raise at its next check
            pass
        assert signal.SIGINT in signal.sigpending()
        with pytest.raises(KeyboardInterrupt):
            release()
            for _ in range(1000):
                pass
        assert signal.SIGINT not in signal.sigpending()
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGINT, previous)
