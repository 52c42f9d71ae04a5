"""swift_plugins.families: the family table, its refusal of other models and its image rule, exactly."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from swift_plugins.errors import UserError, run_main
from swift_plugins.families import (FAMILIES, counting_template, family_for_config, family_of_model, image_rule,
                                    image_token_limits)

SUPPORTED = "qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe"


def test_rows_are_keyed_by_their_model_type_and_name_ms_swift_templates():
    assert list(FAMILIES) == SUPPORTED.split(", ")
    assert all(key == f.model_type for key, f in FAMILIES.items())
    assert {k: (f.swift_model_type, f.template, f.packing_template) for k, f in FAMILIES.items()} == {
        "qwen2_vl": ("qwen2_vl", "qwen2_vl", "qwen2_vl_packing"),
        "qwen2_5_vl": ("qwen2_5_vl", "qwen2_5_vl", "qwen2_5_vl_packing"),
        "qwen3_vl": ("qwen3_vl", "qwen3_vl", "qwen3_vl_packing"),
        "qwen3_vl_moe": ("qwen3_vl_moe", "qwen3_vl", "qwen3_vl_packing"),
        "qwen3_5": ("qwen3_5", "qwen3_5", "qwen3_5_packing"),
        "qwen3_5_moe": ("qwen3_5_moe", "qwen3_5", "qwen3_5_packing")}
    assert [f.default_system for f in FAMILIES.values()] == ["You are a helpful assistant."] * 2 + [None] * 4
    assert [(f.tokens.image_pad, f.tokens.video_pad, f.tokens.vision_start) for f in FAMILIES.values()] == \
        [(151655, 151656, 151652)] * 4 + [(248056, 248057, 248053)] * 2
    assert [f.model_type for f in FAMILIES.values() if "linear_attention" in f.hooks] == ["qwen3_5", "qwen3_5_moe"]


def test_qwen3_5_token_ids_are_ms_swift_templates_and_the_tokenizers(tiny_family_dir):
    """The row's ids equal what ms-swift's Qwen3_5Template hard-codes and the Qwen3.5 tokenizer's specials."""
    from swift.template.templates.qwen import Qwen3_5Template
    from transformers import AutoTokenizer

    tokens = FAMILIES["qwen3_5"].tokens
    assert (Qwen3_5Template.image_token_id, Qwen3_5Template.video_token_id) == (tokens.image_pad, tokens.video_pad)
    tok = AutoTokenizer.from_pretrained(tiny_family_dir("qwen3_5"))
    names = {"endoftext": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>",
             "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>", "image_pad": "<|image_pad|>",
             "video_pad": "<|video_pad|>"}
    assert {k: tok.convert_tokens_to_ids(v) for k, v in names.items()} == dataclasses.asdict(tokens)


@pytest.mark.parametrize("config, shown", [({"model_type": "llava"}, "'llava'"), ({}, "None"),
                                           ({"model_type": ["qwen3_vl"]}, "['qwen3_vl']")])
def test_an_unsupported_model_type_is_one_line_naming_the_supported_ones(tmp_path, capsys, config, shown):
    (tmp_path / "config.json").write_text(json.dumps(config))

    def main(argv):
        family_of_model(tmp_path)
        return 0

    assert run_main(main) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}/config.json: model_type: {shown} is not supported "
                                       f"(supported: {SUPPORTED}); point model.model at a checkpoint of one of "
                                       "these families\n")


def test_a_missing_or_broken_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"config.json: not found \(give a local model folder"):
        family_of_model(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match=r"config.json: invalid JSON at line 1"):
        family_of_model(tmp_path)
    assert family_for_config({"model_type": "qwen3_vl_moe"}) is FAMILIES["qwen3_vl_moe"]


@pytest.mark.parametrize("family, size, resized, tokens", [
    ("qwen2_vl", (640, 480), (644, 476), 391),     # factor 28: 480 / 28 = 17.1 -> 476, 640 / 28 = 22.9 -> 644
    ("qwen2_5_vl", (100, 80), (112, 84), 12),      # 80 / 28 = 2.86 -> 84, 100 / 28 = 3.57 -> 112
    ("qwen2_5_vl", (10, 10), (56, 56), 4),         # below min 4 * 28^2 = 3,136 px: scaled up
    ("qwen3_vl", (640, 480), (640, 480), 300),     # factor 32
    ("qwen3_vl_moe", (100, 80), (96, 64), 6),
])
def test_image_rule_per_family(family, size, resized, tokens):
    patch = 14 if family.startswith("qwen2") else 16
    rule = image_rule(FAMILIES[family], {}, processor_patch=patch, processor_merge=2)
    assert (rule.resized_size(*size), rule.tokens(*size)) == (resized, tokens)


@pytest.mark.parametrize("env, expected", [
    ({}, {"qwen2_5_vl": (2, 4, 16384), "qwen3_vl": (2, 4, 16384)}),
    # MAX_PIXELS / MIN_PIXELS become token numbers with the family's patch: 1,003,520 / 28^2 = 1,280, / 32^2 = 980
    ({"MAX_PIXELS": "1003520", "MIN_PIXELS": "200704"}, {"qwen2_5_vl": (2, 256, 1280), "qwen3_vl": (2, 196, 980)}),
    ({"MAX_PIXELS": "1003520", "IMAGE_MAX_TOKEN_NUM": "77"}, {"qwen2_5_vl": (2, 4, 77), "qwen3_vl": (2, 4, 77)}),
    ({"MAX_PIXELS": "1003520", "IMAGE_MAX_TOKEN_NUM": ""}, {"qwen2_5_vl": (2, 4, 1280), "qwen3_vl": (2, 4, 980)}),
    # SPATIAL_MERGE_SIZE changes the factor of the conversion too: 1,003,520 / (14 * 3)^2 = 568
    ({"SPATIAL_MERGE_SIZE": "3", "MAX_PIXELS": "1003520"}, {"qwen2_5_vl": (3, 4, 568), "qwen3_vl": (3, 4, 435)}),
])
def test_environment_overrides_as_ms_swift_applies_them(env, expected):
    assert {k: image_token_limits(FAMILIES[k], env) for k in expected} == expected


def test_a_resize_the_processor_does_not_cut_is_refused():
    with pytest.raises(ValueError, match=r"Qwen2.5-VL: ms-swift resizes images with patch 14 x merge 2 but the "
                                         r"processor cuts patch 16 x merge 2"):
        image_rule(FAMILIES["qwen2_5_vl"], {}, processor_patch=16, processor_merge=2)
    rule = image_rule(FAMILIES["qwen3_vl"], {"MAX_RATIO": "50"}, processor_patch=16, processor_merge=2,
                      template_max_pixels=786432)
    assert (rule.max_ratio, rule.template_max_pixels, rule.tokens(4000, 3000)) == (50.0, 786432, 768)


def test_counting_template_accepts_the_family_template_or_its_packing_one():
    family = FAMILIES["qwen2_vl"]
    assert [counting_template(family, t, "--template") for t in (None, "qwen2_vl", "qwen2_vl_packing")] == \
        ["qwen2_vl"] * 3
    with pytest.raises(UserError, match=r"^--template: 'qwen3_vl' is not the Qwen2-VL template \(use 'qwen2_vl'"):
        counting_template(family, "qwen3_vl", "--template")


RESIZE_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "SPATIAL_MERGE_SIZE",
               "MAX_RATIO", "VIDEO_MAX_PIXELS", "VIDEO_MIN_PIXELS")


def test_limits_equal_what_ms_swift_sets_in_qwen_vl_utils(monkeypatch):
    """ms-swift's own loader functions (the family's ``compat_qwen_vl_utils`` patch, then
    ``patch_qwen_vl_utils``) on a fresh qwen-vl-utils under each environment; restored afterwards."""
    import importlib

    from qwen_vl_utils import vision_process
    from swift.model.models.qwen import compat_qwen_vl_utils, patch_qwen_vl_utils

    def ms_swift(env, patch):
        for name in RESIZE_VARS:  # compat_qwen_vl_utils writes os.environ: monkeypatch restores it
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        vision_process.__dict__.pop("_patch", None)  # ms-swift patches once per process; reload keeps attributes
        vp = importlib.reload(vision_process)
        compat_qwen_vl_utils(image_patch_size=patch)
        patch_qwen_vl_utils(vp)
        return [vp.SPATIAL_MERGE_SIZE, vp.IMAGE_MIN_TOKEN_NUM, vp.IMAGE_MAX_TOKEN_NUM, vp.MAX_RATIO]

    envs = [{}, {"MAX_PIXELS": "1003520", "MIN_PIXELS": "200704"}, {"IMAGE_MAX_TOKEN_NUM": "77", "MAX_RATIO": "50"},
            {"SPATIAL_MERGE_SIZE": "3", "MAX_PIXELS": "1003520"}]
    # compat_qwen_vl_utils writes IMAGE_*_TOKEN_NUM straight into os.environ; a later delenv then records that
    # value and monkeypatch.undo() would bring it back, so the whole environment is restored by hand as well
    saved_env = dict(os.environ)
    try:
        for env in envs:
            for family in (FAMILIES["qwen2_vl"], FAMILIES["qwen3_vl"]):
                assert ms_swift(env, family.env_patch) == [*image_token_limits(family, env),
                                                           int(env.get("MAX_RATIO", 200))], (family.title, env)
    finally:
        monkeypatch.undo()
        os.environ.clear()
        os.environ.update(saved_env)
        vision_process.__dict__.pop("_patch", None)
        patch_qwen_vl_utils(importlib.reload(vision_process))  # as a normal load in this environment leaves it
