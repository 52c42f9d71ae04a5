"""Template calibration for messages records: the chat layout is read off the real template, checked, cached."""
from __future__ import annotations

import copy
import json

import pytest

from PIL import Image

from helpers import msg
from swift_plugins.data import DEFAULT_PROMPT
from swift_plugins.lengths import dataset as dataset_mod
from swift_plugins.training import calibration
from swift_plugins.training.calibration import counter_from_template, load_counter

PIL_IMAGE = Image.new("RGB", (64, 64), (127, 127, 127))
CONV = [msg("system", "Be brief."), msg("user", "<image>\nWhat?"), msg("assistant", "\nA cat."),
        msg("user", "And <image>?"), msg("assistant", " A dog. ")]


def test_chat_layout_comes_from_the_template_meta(tiny_template):
    from swift.template.template_inputs import StdTemplateInputs
    from PIL import Image

    chat = counter_from_template(tiny_template).chat
    meta = tiny_template.template_meta
    for name in ("prefix", "system_prefix", "prompt", "chat_sep", "suffix"):
        assert getattr(chat, name) == "".join(getattr(meta, name)), name
    inputs = StdTemplateInputs(messages=[], images=[Image.new("RGB", (64, 64))])
    assert [chat.image] == tiny_template.replace_tag("image", 0, inputs)
    assert chat.image_pad == "<|image_pad|>" and chat.default_system is None
    assert (chat.frame_loss, chat.history_loss, chat.last_loss) == calibration.LOSS_LAYOUTS["default"]
    # the heads: what the tokenizer joins with the content after it (text after the last added token)
    assert (chat.system_head, chat.user_head, chat.assistant_head) == ("system\n", "user\n", "assistant\n")
    # measured constants (qwen3_vl, tiny tokenizer): <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n
    # ... <|im_end|> \n without the "user\n" head = 8; system: <|im_start|> <|im_end|> \n = 3; image: start + end = 2
    assert (chat.first_turn, chat.next_turn, chat.system, chat.per_image) == (8, 8, 3, 2)


def test_unsupported_template_settings_leave_lvis_counting_intact(tiny_template):
    template = copy.copy(tiny_template)
    template.template_backend = "jinja"
    counter = counter_from_template(template)
    assert counter.chat is None
    assert counter.chat_error == "template qwen3_vl: template_backend is 'jinja'"
    with pytest.raises(ValueError, match="messages records cannot be counted with this template: template qwen3_vl: "
                                         "template_backend is 'jinja'"):
        counter.count_messages(CONV, [(64, 64), (64, 64)])
    assert counter.frame("<image>" + DEFAULT_PROMPT, 1) > 0  # LVIS records still count


def test_token_id_pieces_and_a_failed_check_are_layout_errors(tiny_template, monkeypatch):
    template = copy.copy(tiny_template)
    template.template_meta = copy.deepcopy(tiny_template.template_meta)
    template.template_meta.chat_sep = [[151645], "\n"]
    with pytest.raises(calibration.ChatLayoutError, match=r"template meta chat_sep holds token ids, not text"):
        calibration.chat_frame(template, counter_from_template(tiny_template))
    # a layout the counter gets wrong is refused at calibration: here the template drops the system
    # prompt, so a long system prompt is counted but never encoded
    real_encode = tiny_template.encode

    def encode_without_system(row, **kwargs):
        return real_encode(dict(row, messages=[m for m in row["messages"] if m["role"] != "system"]), **kwargs)

    monkeypatch.setattr(template, "encode", encode_without_system)
    template.template_meta = tiny_template.template_meta
    with pytest.raises(calibration.ChatLayoutError, match=r"calibration conversation .* encodes to \d+ tokens, "
                                                          r"counted \d+ \(fast\) / \d+ \(exact\)"):
        calibration.chat_frame(template, counter_from_template(tiny_template))


def test_load_counter_caches_the_chat_layout(tiny_model_dir, tiny_template, tmp_path, monkeypatch):
    fresh = load_counter(tiny_model_dir, cache_dir=tmp_path, user_texts=("<image>" + DEFAULT_PROMPT,))
    (entry,) = tmp_path.glob("counter-*.json")
    state = json.loads(entry.read_text())
    assert state["chat"] == fresh.chat.to_dict() and state["chat_error"] is None
    monkeypatch.setattr(calibration, "load_template", lambda *a, **k: pytest.fail("cache not used"))
    cached = load_counter(tiny_model_dir, cache_dir=tmp_path, user_texts=("<image>" + DEFAULT_PROMPT,))
    assert cached.chat == fresh.chat == counter_from_template(tiny_template).chat
    sizes = [(641, 479), (10, 10)]
    assert cached.count_messages(CONV, sizes) == fresh.count_messages(CONV, sizes)
    assert cached.count_messages(CONV, sizes) == cached.count_messages_exact(CONV, sizes)


def test_cache_format_is_part_of_both_cache_keys(tiny_model_dir, monkeypatch):
    assert dataset_mod.CACHE_FORMAT == 2
    kwargs = dict(model_type="qwen3_vl", template_type="qwen3_vl", max_pixels=None, user_texts=())
    key = calibration.counter_cache_key(tiny_model_dir, **kwargs)
    monkeypatch.setattr(calibration, "CACHE_FORMAT", 3)
    assert calibration.counter_cache_key(tiny_model_dir, **kwargs) != key


def test_the_image_rule_is_the_family_row_checked_against_ms_swift(tiny_template, monkeypatch):
    """The rule comes from swift_plugins.families; a qwen-vl-utils set up otherwise in this process, or a
    template expanding another image token id, is a RuntimeError, never a silent miscount."""
    from qwen_vl_utils import vision_process as vp

    from swift_plugins.families import FAMILIES, image_rule

    rule = calibration.image_rule_from_template(tiny_template)
    assert rule == image_rule(FAMILIES["qwen3_vl"], {}, processor_patch=16, processor_merge=2)
    assert calibration.template_family(tiny_template) is FAMILIES["qwen3_vl"]
    monkeypatch.setattr(vp, "IMAGE_MAX_TOKEN_NUM", 1280)
    with pytest.raises(RuntimeError, match=r"qwen-vl-utils resizes with \(merge, min_pixels, max_pixels, max_ratio\) "
                                           r"\(2, 4096, 1310720, 200.0\) in this process, the Qwen3-VL rule under this "
                                           r"environment says \(2, 4096, 16777216, 200.0\)"):
        calibration.image_rule_from_template(tiny_template)
    monkeypatch.undo()
    template = copy.copy(tiny_template)
    template.image_token_id = 151654
    with pytest.raises(RuntimeError, match="expands image token id 151654, the Qwen3-VL row says 151655"):
        calibration.image_rule_from_template(template)


def test_a_qwen2_5_vl_checkpoint_gets_its_template_and_default_system(tiny_family_dir):
    """load_template picks ms-swift's qwen2_5_vl template from config.json; its default system prompt is
    counted (an empty system message is no system: the calibration probes say so explicitly)."""
    template = calibration.load_template(tiny_family_dir("qwen2_5_vl"))
    assert type(template).__name__ == "Qwen2_5VLTemplate"
    counter = counter_from_template(template)
    assert (counter.family, counter.chat.default_system, counter.rule.patch_size) == (
        "qwen2_5_vl", "You are a helpful assistant.", 14)
    conversations = [CONV[1:], [msg("system", "")] + CONV[1:], CONV]
    for conv in conversations:
        encoded = template.encode({"messages": conv, "images": [PIL_IMAGE, PIL_IMAGE]})["input_ids"]
        assert counter.count_messages(conv, [(64, 64)] * 2).total_tokens == len(encoded), conv[0]


def test_layout_problems_lists_every_unsupported_setting_at_once(tiny_template):
    assert calibration._layout_problems(tiny_template) == []
    template = copy.copy(tiny_template)
    template.template_meta = copy.deepcopy(tiny_template.template_meta)
    template.use_chat_template, template.template_backend = False, "jinja"
    template.template_meta.auto_add_bos, template.template_meta.support_multi_round = True, False
    template.template_meta.system_prefix = None
    assert calibration._layout_problems(template) == [
        "use_chat_template is off", "template_backend is 'jinja'", "a BOS token is added (auto_add_bos)",
        "the template keeps only the last round", "the template has no system prompt"]
