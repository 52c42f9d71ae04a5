"""The real Qwen BPE of the tiny checkpoints equals tiktoken over dashscope's qwen.tiktoken."""
from __future__ import annotations

import pathlib
import unicodedata

import pytest

from swift_plugins.dev import tiny_tokenizer
from swift_plugins.dev.tiny_tokenizer import QWEN_SPLIT_PATTERN, SPECIAL_TOKENS

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLE_FILES = sorted(REPO.glob("public_data/*/sample/*.jsonl"))


def test_split_patterns_are_transformers_qwen_patterns():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5

    assert (tiny_tokenizer.QWEN_SPLIT_PATTERN, tiny_tokenizer.QWEN3_5_SPLIT_PATTERN) == (QWEN2, QWEN3_5)


def test_tiktoken_file_comes_from_the_installed_dashscope():
    path = tiny_tokenizer.qwen_tiktoken_path()
    assert path.name == "qwen.tiktoken" and path.parent.parent.name == "dashscope"
    assert sum(1 for line in path.read_bytes().splitlines() if line) == tiny_tokenizer.QWEN_BPE_SIZE


@pytest.fixture(scope="module")
def tiktoken_qwen():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tiny_tokenizer.qwen_tiktoken_path()))
    return tiktoken.Encoding("qwen", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="module")
def qwen3_vl_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_hello_world_is_the_published_qwen_encoding(qwen3_vl_tokenizer, tiktoken_qwen):
    assert qwen3_vl_tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tiktoken_qwen.encode_ordinary("Hello, world!") == [9707, 11, 1879, 0]
    pieces = qwen3_vl_tokenizer.convert_ids_to_tokens(qwen3_vl_tokenizer("at 512,384").input_ids)
    assert pieces == ["at", "Ġ", "5", "1", "2", ",", "3", "8", "4"]  # each digit its own token, like Qwen


def test_every_line_of_the_bundled_samples_encodes_as_tiktoken(qwen3_vl_tokenizer, tiktoken_qwen):
    lines = [line for f in SAMPLE_FILES for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(SAMPLE_FILES) == 4 and len(lines) >= 250
    ours = [qwen3_vl_tokenizer(line, add_special_tokens=False).input_ids for line in lines]
    theirs = [tiktoken_qwen.encode_ordinary(unicodedata.normalize("NFC", line)) for line in lines]
    assert ours == theirs
    assert qwen3_vl_tokenizer.decode(ours[0]) == lines[0]


def test_special_tokens_on_their_real_qwen_ids(qwen3_vl_tokenizer):
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                "<|video_pad|>": 151656, "<tool_call>": 151657, "</think>": 151668}
    assert {t: qwen3_vl_tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(qwen3_vl_tokenizer) == 151643 + len(SPECIAL_TOKENS) == 151669
    assert qwen3_vl_tokenizer("<|im_start|>user\n<|image_pad|>").input_ids == [151644, 872, 198, 151655]
    assert (qwen3_vl_tokenizer.eos_token, qwen3_vl_tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_specials_above_the_bpe_fill_the_gap_with_unreachable_placeholders():
    data = tiny_tokenizer.tokenizer_json(first_special_id=151650)
    vocab = data["model"]["vocab"]
    assert len(vocab) == 151650 and vocab["<|swiftpack_unused_151649|>"] == 151649
    assert [a["id"] for a in data["added_tokens"]][:2] == [151650, 151651]
    with pytest.raises(ValueError, match="first_special_id"):
        tiny_tokenizer.tokenizer_json(first_special_id=100)


def test_special_ids_and_tokenizer_config_agree():
    ids = tiny_tokenizer.special_ids(248044)
    assert (ids["<|endoftext|>"], ids["<|vision_start|>"], ids["<|image_pad|>"], ids["<|video_pad|>"]) == \
        (248044, 248053, 248056, 248057)
    cfg = tiny_tokenizer.tokenizer_config(248044, "Qwen3_5Tokenizer", 262144)
    assert cfg["added_tokens_decoder"]["248056"]["content"] == "<|image_pad|>"
    assert cfg["added_tokens_decoder"]["248069"] == {"content": "</think>", "lstrip": False, "normalized": False,
                                                     "rstrip": False, "single_word": False, "special": False}


@pytest.fixture(scope="module")
def qwen3_5_tokenizer(tiny_family_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_family_dir("qwen3_5"))


def test_qwen3_5_specials_on_their_real_ids_above_placeholders(qwen3_5_tokenizer):
    tok = qwen3_5_tokenizer
    assert type(tok).__name__ == "Qwen3_5Tokenizer"
    expected = {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
                "<|vision_end|>": 248054, "<|image_pad|>": 248056, "<|video_pad|>": 248057, "</think>": 248069}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(tok) == 248044 + len(SPECIAL_TOKENS) == 248070
    assert tok.convert_ids_to_tokens([151642, 151643, 248043]) == [
        tok.convert_ids_to_tokens(151642), "<|swiftpack_unused_151643|>", "<|swiftpack_unused_248043|>"]
    assert tok("<|im_start|>user\nHello, world!<|vision_start|><|image_pad|>").input_ids == [
        248045, 872, 198, 9707, 11, 1879, 0, 248053, 248056]


def test_qwen3_5_split_joins_combining_marks_to_letters(qwen3_5_tokenizer, qwen3_vl_tokenizer):
    text = "x\u0301y ok"  # x + COMBINING ACUTE ACCENT (no precomposed form: NFC keeps it)
    split = qwen3_5_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    assert [piece for piece, _ in split(text)] == ["xÌģy", "Ġok"]
    qwen2_split = qwen3_vl_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    assert [piece for piece, _ in qwen2_split(text)] == ["x", "Ìģy", "Ġok"]  # the mark starts the next run


def test_qwen3_5_encodes_the_samples_as_tiktoken_with_its_pattern(qwen3_5_tokenizer):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tiny_tokenizer.qwen_tiktoken_path()))
    enc = tiktoken.Encoding("qwen3_5", pat_str=tiny_tokenizer.QWEN3_5_SPLIT_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    lines = [line for f in SAMPLE_FILES for line in f.read_text(encoding="utf-8").splitlines()]
    assert [qwen3_5_tokenizer(line, add_special_tokens=False).input_ids for line in lines] == \
        [enc.encode_ordinary(unicodedata.normalize("NFC", line)) for line in lines]
