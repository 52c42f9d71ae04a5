"""Build a tiny, random, fully offline Qwen-VL checkpoint of any supported family.

``python scripts/make_tiny_model.py OUT_DIR [--family qwen2_vl|qwen2_5_vl|qwen3_vl|qwen3_vl_moe|qwen3_5|qwen3_5_moe]``
(default ``qwen3_vl``, the model of every test and the demo). Same bytes on every run (fixed
seeds, sorted JSON, sorted tensors). Real users pass their own checkpoint; these only have to be
*shaped* like the real models where it matters (the per-family table is in
:mod:`swift_plugins.dev.tiny_families`):

    what                        tiny value                          why it must match the real model
    ------------------------    --------------------------------    ------------------------------------
    tokenizer                   the real Qwen BPE (dashscope's      text counts are the real model's
                                qwen.tiktoken, converted at build)
    special tokens              <|endoftext|> 151643 ...            ms-swift hard-codes image/video pad ids
                                (Qwen3.5: 248044 ...)
    vocab (embedding rows)      151,936 (Qwen3.5: 248,320)          as the published checkpoints
    vision patch / merge / T    14 or 16 / 2 / 2                    image token count = (h/f)*(w/f), f = 2*patch
    text                        hidden 64, 2 layers, head 16        fast on CPU (tied lm_head)
                                (Qwen3.5: 4 hybrid layers)
    vision                      hidden 32, depth 2                  exercises the family's tower

Worked example: ``build(d, family_name="qwen2_5_vl")`` writes ``d/config.json`` with ``model_type``
``qwen2_5_vl``, window_size 56 and ``fullatt_block_indexes`` [1]; ``d/tokenizer.json`` encodes
"Hello, world!" to [9707, 11, 1879, 0].
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib

from swift_plugins.dev.tiny_families import (
    DEFAULT_FAMILY, FAMILIES, TinyFamily, chat_template, generation_config, image_processor, video_processor,
)
from swift_plugins.dev.tiny_families import model_config as _family_model_config
from swift_plugins.dev.tiny_tokenizer import SPECIAL_TOKENS, tokenizer_config, tokenizer_json
from swift_plugins.errors import UserError, run_main
from swift_plugins.files import atomic_dir

__all__ = ["FAMILIES", "FIRST_SPECIAL_ID", "SPECIAL_TOKENS", "VOCAB_SIZE", "build", "check_output_dir",
           "family", "main", "model_config"]

FIRST_SPECIAL_ID = FAMILIES[DEFAULT_FAMILY].first_special_id
VOCAB_SIZE = FAMILIES[DEFAULT_FAMILY].vocab_size


def family(model_type: str) -> TinyFamily:
    """The :class:`TinyFamily` of ``model_type``; an unknown one is a :class:`UserError` naming the choices."""
    if model_type not in FAMILIES:
        raise UserError(f"--family: unknown model_type {model_type!r} (choose one of {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def model_config(model_type: str = DEFAULT_FAMILY) -> dict:
    """``config.json`` of the tiny ``model_type`` checkpoint (without transformers_version)."""
    return _family_model_config(family(model_type))


def _write_json(path: pathlib.Path, obj, indent: int | None = 2) -> None:
    path.write_text(json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _model_class(fam: TinyFamily):
    import transformers

    return getattr(transformers, fam.architecture)


def _write_files(tmp: pathlib.Path, fam: TinyFamily) -> None:
    import transformers

    _write_json(tmp / "tokenizer.json", tokenizer_json(fam.first_special_id, fam.split_pattern), indent=None)
    _write_json(tmp / "tokenizer_config.json",
                tokenizer_config(fam.first_special_id, fam.tokenizer_class, fam.max_position_embeddings))
    _write_json(tmp / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    (tmp / "chat_template.jinja").write_text(chat_template(fam) + "\n", encoding="utf-8")
    _write_json(tmp / "preprocessor_config.json", image_processor(fam))
    _write_json(tmp / "video_preprocessor_config.json", video_processor(fam))
    cfg = _family_model_config(fam)
    cfg["transformers_version"] = transformers.__version__  # v5+: skips the hub lookup for mistral regex
    _write_json(tmp / "config.json", cfg)
    _write_json(tmp / "generation_config.json", generation_config(fam))


def build(out_dir: str | os.PathLike, seed: int = 0, family_name: str = DEFAULT_FAMILY) -> pathlib.Path:
    """Write the tiny ``family_name`` checkpoint to ``out_dir`` (built in a temp dir, then renamed)."""
    import torch
    from safetensors.torch import save_file

    fam = family(family_name)
    out = pathlib.Path(out_dir)
    with atomic_dir(out) as tmp:
        _write_files(tmp, fam)
        cls = _model_class(fam)
        torch.manual_seed(seed)
        config = cls.config_class.from_pretrained(tmp)
        with torch.device("cpu"):
            model = cls(config).float().eval()
        # Deterministic, ordered tensors; the tied lm_head is stored once (as the embedding).
        state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())
                 if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return out


def check_output_dir(path: str | os.PathLike) -> pathlib.Path:
    """``path`` as a folder we can (re)place: not a file, its nearest existing parent writable."""
    out = pathlib.Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: out_dir: is a file, not a folder (give a folder path; it is replaced if it exists)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: out_dir: {parent} is not writable (choose a folder you can write to)")
    return out


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a tiny random offline Qwen-VL checkpoint (deterministic bytes) for tests and the demo.")
    parser.add_argument("out_dir", help="output folder (replaced if it exists)")
    parser.add_argument("--family", default=DEFAULT_FAMILY, metavar="MODEL_TYPE",
                        help=f"config.json model_type to build: {', '.join(FAMILIES)} (default {DEFAULT_FAMILY})")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (default 0)")
    args = parser.parse_args(argv)
    family(args.family)
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed: {args.seed} is out of range (give an integer from 0 to {2**32 - 1})")
    out = check_output_dir(args.out_dir)
    path = build(out, seed=args.seed, family_name=args.family)
    print(f"tiny {args.family} written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)
