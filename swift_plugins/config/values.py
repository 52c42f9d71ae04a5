"""Config problems and value checks: an :class:`Issue` per problem, all raised together.

``str(Issue)`` is ``"<source>: <section.key>: <what is wrong (fix)>"``, the source a file with its
line where the key was written (``configs/x.yaml:12``), ``command line`` or ``environment``::

    configs/x.yaml:12: training.learnign_rate: unknown key (did you mean 'learning_rate'?)
    command line: --training.lora_rank: expected int, got 'eight'

YAML 1.1 reads ``1e-4`` as a string; a float key accepts it (``1.0e-4`` is a float already).
"""
from __future__ import annotations

import difflib
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from swift_plugins.config.schema import NODE_TYPES, SCHEMA_LEAVES, Leaf, children
from swift_plugins.errors import UserError

__all__ = ["ConfigError", "Issue", "check_value", "fmt_num", "parse_tokens", "range_problem", "show", "suggest",
           "type_word", "unknown_key_issue"]


@dataclass(frozen=True)
class Issue:
    """``str(issue) == "<source>: <key>: <message>"`` (``"<source>: <message>"`` without a key)."""
    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"


class ConfigError(UserError):
    """All problems of a config at once; ``str`` is one issue per line."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(map(str, self.issues)))


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, default=str)


def type_word(value: Any) -> str:
    return {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


def suggest(word: str, candidates: Iterable[str]) -> Optional[str]:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_issue(source: str, path: Tuple[str, ...], *, flag: bool = False) -> Issue:
    """``configs/x.yaml: training.learnign_rate: unknown key (did you mean 'learning_rate'?)``.

    A name that exists in another section is suggested with its section ('template.max_pixels').
    With ``flag`` (command line) suggestions are full flags ('--training.learning_rate').
    """
    parent, name = path[:-1], path[-1]
    kind = "section" if not parent else "key"
    hint = None
    if parent in NODE_TYPES:
        same = suggest(name, children(parent))
        if same is not None:
            hint = ".".join(parent + (same,)) if flag else same
    if hint is None:
        elsewhere = [leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == name and leaf.path[:-1] != parent]
        if elsewhere:
            hint = elsewhere[0]
    if hint is None and parent in NODE_TYPES and parent:
        other = suggest(name, [leaf.path[-1] for leaf in SCHEMA_LEAVES])
        if other is not None:
            hint = next(leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == other)
    message = f"unknown {kind}"
    if hint is not None:
        message += f" (did you mean '--{hint}'?)" if flag else f" (did you mean '{hint}'?)"
    return Issue(source, ".".join(path), message)


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def check_value(leaf: Leaf, value: Any) -> Tuple[Any, Optional[str]]:
    """YAML value -> (typed value, problem). ``1e-4`` is a str to YAML 1.1; floats accept it."""
    if value is None:
        return (None, None) if leaf.optional else (None, f"expected {leaf.type_name()}, got null")
    base = leaf.base
    if leaf.is_list:
        item = typing.get_args(base)[0]
        if isinstance(value, str):  # `target_modules: all-linear`, as ms-swift's YAML allows
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            return None, f"expected {leaf.type_name()}, got {type_word(value)} {show(value)}"
        if not value and leaf.meta["required"]:
            return None, "required, got an empty list"
        return list(value), None
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        return None, f"expected {leaf.type_name()}, got {type_word(value)} {show(value)}"
    return value, None


def parse_tokens(leaf: Leaf, tokens: Sequence[str]) -> Tuple[Any, Optional[str]]:
    """Command-line tokens -> (typed value, problem), by the schema type of ``leaf``."""
    if leaf.is_list:
        if len(tokens) == 1 and tokens[0].lower() in ("null", "none") and leaf.optional:
            return None, None
        return list(tokens), None
    if len(tokens) != 1:
        return None, f"expected one value ({leaf.type_name()}), got {len(tokens)}: {' '.join(tokens) or '(none)'}"
    text = tokens[0]
    if leaf.optional and text.lower() in ("null", "none"):
        return None, None
    base = leaf.base
    if base is bool:
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True, None
        if low in ("false", "0", "no"):
            return False, None
        return None, f"expected bool (true or false), got {text!r}"
    if base is int:
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text), None
        return None, f"expected int, got {text!r}"
    if base is float:
        if _FLOAT_RE.match(text):
            return float(text), None
        return None, f"expected float, got {text!r}"
    return text, None


def fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def range_problem(leaf: Leaf, value: Any) -> Optional[str]:
    meta = leaf.meta
    choices = meta["choices"]
    if choices is not None and value is not None and value not in choices:
        message = f"{show(value)} is not one of {', '.join(map(show, choices))}"
        close = suggest(value, choices) if isinstance(value, str) else None
        return message + (f" (did you mean '{close}'?)" if close else "")
    if value is None or isinstance(value, (bool, list, str)):
        return None
    bounds = []
    for op, name in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt")):
        if meta[name] is not None:
            bounds.append((op, meta[name]))
    bad = [(op, b) for op, b in bounds
           if not {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]]
    if not bad:
        return None
    return "must be " + " and ".join(f"{op} {fmt_num(b)}" for op, b in bounds) + f", got {fmt_num(value)}"


