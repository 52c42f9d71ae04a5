"""The real Qwen byte-level BPE for the tiny checkpoints, converted offline at build time.

The ranks come from the installed ``dashscope`` package (``dashscope/resources/qwen.tiktoken``:
151,643 byte-level BPE tokens, the vocabulary of Qwen, Qwen2, Qwen2.5, Qwen3 and their VL models).
transformers' ``TikTokenConverter`` turns them into a ``tokenizers`` BPE model (vocab + merges);
around it we put what Qwen's published ``tokenizer.json`` has: NFC normalizer, the split regex +
byte-level pre-tokenizer, byte-level decoder, and the special tokens on their real ids.

    Qwen2/2.5/3 (VL):  regular ids 0..151642, specials from 151643, 151,936 embedding rows
    Qwen3.5:           the same BPE, regular ids filled with unreachable placeholders up to 248043,
                       specials from 248044, 248,320 embedding rows, split regex with \\p{M}

A ``tokenizers`` added token is renumbered to follow the model vocabulary, so specials on ids above
the BPE's last id need the regular ids filled up to there (placeholders no merge produces).
Worked example: "Hello, world!" -> [9707, 11, 1879, 0], as with the published Qwen tokenizers.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import pathlib

# Qwen2/2.5/3 split: contractions | letters | single digit | punctuation | newlines | spaces.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5: combining marks (\p{M}) join the letter runs (transformers models/qwen3_5/tokenization_qwen3_5.py).
QWEN3_5_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen's special tokens in their published order (Qwen2.5 / Qwen3 / Qwen3-VL / Qwen3.5 alike).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
# Tokens that are not "special" in Qwen's tokenizer (they may appear in normal text).
NON_SPECIAL = frozenset({
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
})
QWEN_BPE_SIZE = 151643  # regular tokens in qwen.tiktoken (ids 0..151642)
PLACEHOLDER = "<|swiftpack_unused_{}|>"


def qwen_tiktoken_path() -> pathlib.Path:
    """``qwen.tiktoken`` of the installed dashscope package (found without importing dashscope)."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dashscope package is not installed (pip install dashscope==2.0.2): "
                           "its resources/qwen.tiktoken is the real Qwen vocabulary")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"


@functools.lru_cache(maxsize=1)
def _converted_model_json() -> str:
    """The BPE model of ``qwen.tiktoken`` as TikTokenConverter builds it (JSON; cached per process)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(qwen_tiktoken_path()), pattern=QWEN_SPLIT_PATTERN).converted()
    model = json.loads(tok.to_str())["model"]
    if len(model["vocab"]) != QWEN_BPE_SIZE:
        raise RuntimeError(f"{qwen_tiktoken_path()}: {len(model['vocab'])} tokens, expected {QWEN_BPE_SIZE}")
    return json.dumps(model, ensure_ascii=False)


def _byte_level(**extra) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False, **extra}


def tokenizer_json(first_special_id: int = QWEN_BPE_SIZE, pattern: str = QWEN_SPLIT_PATTERN) -> dict:
    """``tokenizer.json`` content: the real Qwen BPE, specials from ``first_special_id`` in Qwen's order.

    Ids between the BPE's last regular id and ``first_special_id`` are unreachable placeholders.
    """
    if first_special_id < QWEN_BPE_SIZE:
        raise ValueError(f"first_special_id {first_special_id} < {QWEN_BPE_SIZE} regular tokens")
    model = json.loads(_converted_model_json())
    model["ignore_merges"] = False  # as Qwen's published tokenizer.json (and transformers rebuilds it so)
    vocab = model["vocab"]
    for i in range(QWEN_BPE_SIZE, first_special_id):
        vocab[PLACEHOLDER.format(i)] = i
    added = [{"id": first_special_id + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t not in NON_SPECIAL} for k, t in enumerate(SPECIAL_TOKENS)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            _byte_level()]},
        "post_processor": _byte_level(),
        "decoder": _byte_level(),
        "model": model,
    }


def special_ids(first_special_id: int) -> dict[str, int]:
    """Each special token's id when the specials start at ``first_special_id``."""
    return {t: first_special_id + k for k, t in enumerate(SPECIAL_TOKENS)}


def tokenizer_config(first_special_id: int, tokenizer_class: str, model_max_length: int) -> dict:
    """``tokenizer_config.json`` matching :func:`tokenizer_json` (eos <|im_end|>, pad <|endoftext|>)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": t not in NON_SPECIAL} for t, i in special_ids(first_special_id).items()
        },
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }
