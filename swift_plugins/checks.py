"""Up-front checks every command runs before any work: paths, numbers, environment overrides.

Each check returns ``None`` or the problem as ``place: what is wrong (fix)``; a command joins the
problems into one :class:`~swift_plugins.errors.UserError` (one ``error:`` line each, exit 2)
before it loads a model or reads a record::

    writable_dir_problem("--output_dir", "notes.txt")   # notes.txt is a file
    -> "--output_dir: notes.txt is a file, not a folder (give a folder path)"
    env_problems({"MAX_PIXELS": "abc"})
    -> ["environment: MAX_PIXELS: expected a positive integer, got 'abc' (unset it or give e.g. MAX_PIXELS=1003520)"]

The environment variables are the ones ms-swift and qwen-vl-utils read with ``int(...)`` when a
Qwen-VL template is loaded (``swift/model/models/qwen.py``: ``compat_qwen_vl_utils``,
``patch_qwen_vl_utils``); a bad value there is a ``ValueError`` traceback deep inside the load.
"""
from __future__ import annotations

import json
import os
from typing import List, Mapping, Optional

from swift_plugins.errors import UserError
from swift_plugins.files import probe_writable

__all__ = ["INT_ENV_VARS", "env_problems", "jsonl_problems", "model_context_length", "model_dir_problem",
           "number_problem", "raise_problems", "writable_dir_problem"]

# Read as integers by ms-swift / qwen-vl-utils when the template or model is loaded.
INT_ENV_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "IMAGE_FACTOR",
                "SPATIAL_MERGE_SIZE", "MAX_RATIO", "VIDEO_MAX_PIXELS", "VIDEO_MIN_PIXELS", "VIDEO_MAX_TOKEN_NUM",
                "VIDEO_MIN_TOKEN_NUM")
_ENV_EXAMPLE = {"MAX_PIXELS": "1003520", "MIN_PIXELS": "3136", "IMAGE_MAX_TOKEN_NUM": "1280"}


def env_problems(environ: Mapping[str, str]) -> List[str]:
    """Set :data:`INT_ENV_VARS` whose value is not a positive integer (empty counts as unset, as in ms-swift).

    >>> env_problems({"MAX_PIXELS": "1003520", "IMAGE_MAX_TOKEN_NUM": "-5", "HOME": "x"})
    ["environment: IMAGE_MAX_TOKEN_NUM: expected a positive integer, got '-5' (unset it or give e.g. IMAGE_MAX_TOKEN_NUM=1280)"]
    """
    out = []
    for name in INT_ENV_VARS:
        raw = environ.get(name)
        if not raw:
            continue
        if not (raw.strip().isdigit() and int(raw) > 0):
            out.append(f"environment: {name}: expected a positive integer, got {raw!r} (unset it or give e.g. "
                       f"{name}={_ENV_EXAMPLE.get(name, '2')})")
    return out


def number_problem(flag: str, value, *, minimum=None, maximum=None, above=None, below=None) -> Optional[str]:
    """``flag`` out of range: ``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive; None when fine or unset.

    >>> number_problem("--num_workers", 0, minimum=1)
    '--num_workers: must be at least 1, got 0'
    >>> number_problem("--memory_headroom", 1.0, minimum=0, below=1)
    '--memory_headroom: must be below 1, got 1.0'
    """
    if value is None:
        return None
    if minimum is not None and value < minimum:
        return f"{flag}: must be at least {minimum}, got {value}"
    if above is not None and value <= above:
        return f"{flag}: must be above {above}, got {value}"
    if maximum is not None and value > maximum:
        return f"{flag}: must be at most {maximum}, got {value}"
    if below is not None and value >= below:
        return f"{flag}: must be below {below}, got {value}"
    return None


def model_dir_problem(flag: str, path: str) -> Optional[str]:
    """A model folder must exist and hold ``config.json`` (the analysis and training read it)."""
    if not os.path.isdir(path):
        return (f"{flag}: {path}: no such directory (give a local model folder with config.json, tokenizer.json "
                f"and preprocessor_config.json; paths are relative to {os.getcwd()})")
    if not os.path.isfile(os.path.join(path, "config.json")):
        return (f"{flag}: {path}: no config.json in the folder (give the checkpoint folder itself, the one with "
                f"config.json, tokenizer.json and preprocessor_config.json)")
    return None


def model_context_length(path: str) -> Optional[int]:
    """``max_position_embeddings`` of a checkpoint's config.json (its ``text_config`` for a VL model), or None.

    Qwen3-VL-8B-Instruct: 262144. A packed row longer than it has positions the model never saw.
    """
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    for section in (cfg.get("text_config"), cfg):
        if isinstance(section, dict) and isinstance(section.get("max_position_embeddings"), int):
            return int(section["max_position_embeddings"])
    return None


def jsonl_problems(flag: str, paths) -> List[str]:
    """Each data file exists, holds at least one non-blank line, and is listed once.

    >>> jsonl_problems("--train_jsonl", ["a.jsonl", "./a.jsonl"])[-1]  # doctest: +SKIP
    "--train_jsonl: ./a.jsonl is listed twice (also as a.jsonl); give each file once (it would be counted and trained twice)"
    """
    out, seen = [], {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            out.append(f"{flag}: {path} is listed twice (also as {seen[real]}); give each file once (it would be "
                       f"counted and trained twice)")
            continue
        seen[real] = path
        if not os.path.isfile(path):
            out.append(f"{flag}: {path}: no such file (paths are relative to the working directory {os.getcwd()})")
        elif not _has_record(path):
            out.append(f"{flag}: {path}: empty (no record, only blank lines or nothing); give a JSONL with one "
                       f"record per line")
    return out


def _has_record(path: str) -> bool:
    """True at the first non-blank line (usually the first: cheap on a large file)."""
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def writable_dir_problem(flag: str, path: str, *, create: bool = True) -> Optional[str]:
    """``path`` is, or can be made, a folder this process writes into.

    A file in the way is named; with ``create`` the folder is made and a probe file written and
    removed (so a read-only or foreign folder is found now, not after an hour of counting).
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = path if probe == os.path.abspath(path) else f"{path} (its parent {probe})"
        return f"{flag}: {where} is a file, not a folder (give a folder path)"
    if not create:
        return None
    try:
        probe_writable(path)
    except OSError as e:
        return f"{flag}: {path}: cannot write there ({e.strerror}; choose a folder you can write to)"
    return None


def writable_file_problem(flag: str, path: str) -> Optional[str]:
    """``path`` can be written as a file: not a folder, and its folder is (or can be made) writable."""
    if os.path.isdir(path):
        return f"{flag}: {path} is a folder (give a file path)"
    return writable_dir_problem(flag, os.path.dirname(os.path.abspath(path)))


def raise_problems(problems) -> None:
    """Raise one UserError with every non-None problem, one line each."""
    lines = [p for p in problems if p]
    if lines:
        raise UserError("\n".join(lines))
