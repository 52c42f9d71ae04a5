"""Resolution: YAML files with ``extends``, command-line overrides, validation, derived numbers.

Worked example (``world_size`` 4)::

    configs/dlora/sft_base.yaml         training: {learning_rate: 1.0e-4, effective_batch_size: 128}
      ^ extends
    configs/dlora/sft_text_only.yaml    training: {learning_rate: 2.0e-4, packing: true, ...}
      + command line                    --training.learning_rate 3e-4
    -> training.learning_rate = 0.0003          (source: command line)
       training.effective_batch_size = 128      (source: configs/dlora/sft_base.yaml)
       gradient_accumulation_steps = 32         (derived: 128 / (1 x 4))

A later layer replaces single keys; sections merge key by key. Every problem of every layer is
collected and raised at once in one :class:`ConfigError`, each naming the file and line
(``configs/x.yaml:12: training.learnign_rate: unknown key (did you mean 'learning_rate'?)``).
Reads only the YAML files: no side effects, no torch / ms-swift import.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from swift_plugins.config.schema import (NODE_TYPES, PRESET_DEEPSPEED, RESERVED_SWIFT_KEYS, SCHEMA_LEAVES, SWIFT,
                                         Config, children, is_section, leaf_by_path)
from swift_plugins.config.values import (ConfigError, Issue, check_value, parse_tokens, range_problem, show,
                                         type_word, unknown_key_issue)
from swift_plugins.families import FAMILIES
from swift_plugins.names import VARLEN_ATTENTION

__all__ = ["ResolvedConfig", "missing_paths", "resolve_config", "resolve_world_size", "world_size_from_env"]


def world_size_from_env(environ: Mapping[str, str]) -> int:
    """torchrun's ``WORLD_SIZE`` (1 without torchrun): the one place this project reads it."""
    raw = environ.get("WORLD_SIZE")
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError([Issue("environment", "WORLD_SIZE", f"expected a positive int, got {raw!r}")])
    return value


def _at(label: str, line: Optional[int]) -> str:
    return f"{label}:{line}" if line else label


def _key_lines(node, prefix: Tuple[str, ...] = (), duplicates: Optional[list] = None) -> Dict[Tuple[str, ...], int]:
    """Line (1-based) of every key of a composed YAML mapping, by its path; a key written twice in one
    mapping is appended to ``duplicates`` as (path, first line, second line) (YAML would keep the last)."""
    out: Dict[Tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = prefix + (str(key_node.value),)
                if path in out and duplicates is not None:
                    duplicates.append((path, out[path], key_node.start_mark.line + 1))
                out[path] = key_node.start_mark.line + 1
                out.update(_key_lines(value_node, path, duplicates))
    return out


def _read_yaml(label: str) -> Tuple[Optional[dict], Dict[Tuple[str, ...], int], List[Issue]]:
    """(data, line of each key path, issues) of one YAML file."""
    try:
        with open(label, encoding="utf-8") as f:
            text = f.read()
        data = yaml.safe_load(text)
        duplicates: list = []
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader), duplicates=duplicates)
    except FileNotFoundError:
        return None, {}, [Issue(label, "", "file not found")]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        return None, {}, [Issue(_at(label, mark.line + 1 if mark is not None else None), "",
                                f"invalid YAML" + (f" at column {mark.column + 1}" if mark is not None else "")
                                + f": {problem} (fix the YAML syntax)")]
    if duplicates:
        return None, {}, [Issue(_at(label, second), ".".join(path), f"duplicate key (also at line {first}); YAML "
                                f"would silently keep the last one: keep one")
                          for path, first, second in duplicates]
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict):
        return None, {}, [Issue(label, "", f"expected a mapping of sections at the top level, got {type_word(data)}")]
    return data, lines, []


Layer = Tuple[str, dict, Dict[Tuple[str, ...], int]]  # (file label, data without extends, key lines)


def _load_chain(path: str) -> Tuple[List[Layer], List[Issue]]:
    """Layers root-first. ``extends`` is relative to its file."""
    chain: List[Layer] = []
    labels: List[str] = []
    real: List[str] = []
    label = os.path.normpath(path)
    while True:
        data, lines, issues = _read_yaml(label)
        if data is None:
            if chain:  # the parent named by `extends` is missing or broken
                child, child_lines = labels[-1], chain[-1][2]
                if issues[0].message == "file not found":
                    return [], [Issue(_at(child, child_lines.get(("extends",))), "extends",
                                      f"file not found: {label} (extends is relative to the file it is in)")]
            return [], issues
        labels.append(label)
        real.append(os.path.realpath(label))
        parent = data.pop("extends", None)
        chain.append((label, data, lines))
        if parent is None:
            break
        where = _at(label, lines.get(("extends",)))
        if not isinstance(parent, str) or not parent:
            return [], [Issue(where, "extends", f"expected a file name (str), got {type_word(parent)} "
                                                f"{show(parent)}")]
        parent_label = os.path.normpath(os.path.join(os.path.dirname(label), parent))
        if os.path.realpath(parent_label) in real:
            start = real.index(os.path.realpath(parent_label))
            cycle = " -> ".join(labels[start:] + [parent_label])
            return [], [Issue(_at(labels[start], chain[start][2].get(("extends",))), "extends",
                              f"cycle: {cycle} (remove one extends)")]
        label = parent_label
    chain.reverse()
    return chain, []


Merged = Dict[Tuple[str, ...], Tuple[Any, str, str]]  # path -> (raw value, source label, label:line)


def _merge_layer(layer: Layer, data: Mapping, node: Tuple[str, ...], merged: Merged, swift: Merged,
                 issues: List[Issue]) -> None:
    """Leaf-by-leaf merge: a later layer replaces single keys, nested sections merge key by key."""
    label, _, lines = layer
    for key, value in data.items():
        path = node + (str(key),)
        where = _at(label, lines.get(path))
        if not isinstance(key, str):
            issues.append(Issue(where, ".".join(map(str, path)), "keys must be strings"))
            continue
        if path == ("swift",):
            if value is None:
                continue
            if not isinstance(value, dict):
                issues.append(Issue(where, "swift", f"expected a mapping of ms-swift arguments, got "
                                                    f"{type_word(value)} {show(value)}"))
                continue
            for name, raw in value.items():
                swift[("swift", str(name))] = (raw, label, _at(label, lines.get(("swift", str(name)))))
            continue
        if path in NODE_TYPES:
            if value is None:
                continue
            if not isinstance(value, dict):
                issues.append(Issue(where, ".".join(path), f"expected a mapping (section), got "
                                                           f"{type_word(value)} {show(value)}"))
                continue
            _merge_layer(layer, value, path, merged, swift, issues)
        elif leaf_by_path(path) is not None:
            merged[path] = (value, label, where)
        else:
            issues.append(unknown_key_issue(where, path))



@dataclass(frozen=True)
class ResolvedConfig:
    """A valid config: typed values, where each came from, and the derived numbers."""
    config: Config
    sources: Mapping[str, str]  # dotted key -> file label, 'command line' or 'default'
    files: Tuple[str, ...]  # root-first
    world_size: int
    world_size_source: str
    gradient_accumulation_steps: int
    gradient_accumulation_source: str  # e.g. 'derived: 128 / (1 x 4)'
    where: Mapping[str, str] = dataclasses.field(default_factory=dict)  # dotted key -> 'file:line' it was set at

    def value(self, dotted: str) -> Any:
        obj: Any = self.config
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj

    @property
    def attn_impl(self) -> Tuple[Optional[str], Optional[str]]:
        """(attention ms-swift loads the model with, why it differs from model.attn_impl or None)."""
        return packed_attn_impl(self.config.model.attn_impl, self.config.training.packing)


def packed_attn_impl(attn_impl: Optional[str], packing: bool) -> Tuple[Optional[str], Optional[str]]:
    """With packing, sdpa (or unset) becomes ``swiftpack_varlen``: sdpa would get an L x L mask.

    >>> packed_attn_impl("sdpa", True)[0], packed_attn_impl(None, False), packed_attn_impl("eager", True)
    ('swiftpack_varlen', (None, None), ('eager', None))
    """
    if not packing or attn_impl not in (None, "sdpa"):
        return attn_impl, None
    return VARLEN_ATTENTION, (f"model.attn_impl {attn_impl or 'unset'} -> {VARLEN_ATTENTION} with training.packing: "
                              "attention per packed sample, no L x L mask (model.attn_impl eager or flash_attn "
                              "keeps those)")


def resolve_world_size(flag: Optional[int], environ: Mapping[str, str]) -> Tuple[int, str]:
    """``--world_size`` (previews) beats torchrun's ``WORLD_SIZE``; neither: 1."""
    if flag is not None:
        return flag, "--world_size"
    if environ.get("WORLD_SIZE"):
        return world_size_from_env(environ), "WORLD_SIZE"
    return 1, "default"


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _grad_accum_issue(source: str, effective: int, per_device: int, world_size: int) -> Optional[Issue]:
    """Worked example: 128 / (1 x 4) = 32 fine; 100 / (1 x 3) -> issue listing values that work."""
    unit = per_device * world_size
    if effective % unit == 0:
        return None
    lower, upper = effective // unit * unit, (effective // unit + 1) * unit
    works = [str(v) for v in (lower, upper) if v > 0]
    message = (f"{effective} is not a multiple of per_device_train_batch_size x world_size = "
               f"{per_device} x {world_size} = {unit}; effective_batch_size values that work: {', '.join(works)}")
    if effective % world_size == 0:
        message += (f"; per_device_train_batch_size values that work with {effective}: "
                    f"{', '.join(map(str, _divisors(effective // world_size)))}")
    else:
        message += f"; no per_device_train_batch_size works with {effective} on {world_size} processes"
    return Issue(source, "training.effective_batch_size", message)


class _Checked:
    """The merged values under cross-checks: ``ok`` (no type problem reported for these keys),
    ``source`` (where a key was set), ``t`` (a training.* value)."""

    def __init__(self, cfg: Dict[str, Any], src: Dict[str, str], bad: set, top: str):
        self.cfg, self.src, self.bad, self.top = cfg, src, bad, top

    def ok(self, *keys: str) -> bool:
        return not any(k in self.bad for k in keys)

    def source(self, key: str) -> str:
        return self.src.get(key, self.top)

    def t(self, key: str) -> Any:
        return self.cfg[f"training.{key}"]


def _cross_checks(cfg: Dict[str, Any], src: Dict[str, str], bad: set, top: str, world_size: int,
                  swift: Merged) -> Tuple[List[Issue], Optional[int], str]:
    """Conflicts between keys; keys with a type problem are left out (already reported). Returns the
    issues and the gradient accumulation steps with their source (None, "" when not derivable)."""
    v = _Checked(cfg, src, bad, top)
    issues = _packing_checks(v) + _option_conflicts(v) + _swift_key_checks(v, swift)
    gas, gas_source, problem = _grad_accum(v, world_size)
    return issues + ([problem] if problem else []), gas, gas_source


def _packing_checks(v: _Checked) -> List[Issue]:
    """What training.packing needs: batch size 1, a global_max_length, a packing template."""
    issues: List[Issue] = []
    packing = v.ok("training.packing") and v.t("packing")
    for key, why in (("per_device_train_batch_size", "each device batch is one pack of many samples"),
                     ("per_device_eval_batch_size", "each eval batch is one pack, or one sample with eval_packing "
                                                    "false")):
        if packing and v.ok(f"training.{key}") and v.t(key) != 1:
            issues.append(Issue(v.source(f"training.{key}"), f"training.{key}",
                                f"must be 1 with training.packing true ({why}), got {v.t(key)}"))
    if packing and v.ok("training.global_max_length") and v.t("global_max_length") is None:
        issues.append(Issue(v.source("training.packing"), "training.global_max_length",
                            "required with training.packing true (tokens per pack, e.g. 20000)"))
    packable = {None} | {name for f in FAMILIES.values() for name in (f.template, f.packing_template)}
    if packing and v.ok("template.template") and v.cfg["template.template"] not in packable:
        issues.append(Issue(v.source("template.template"), "template.template",
                            f"{v.cfg['template.template']!r} cannot pack: training.packing uses the model family's "
                            f"packing template (isolated samples); set template.template: null"))
    if v.ok("training.packing", "training.eval_packing") and v.t("eval_packing") and not v.t("packing"):
        issues.append(Issue(v.source("training.eval_packing"), "training.eval_packing",
                            "needs training.packing true (or set eval_packing false)"))
    return issues


def _option_conflicts(v: _Checked) -> List[Issue]:
    """Keys that only mean something with another key's value (optimizer, DoRA, flash attention,
    coordinate options, the skip report, the DeepSpeed config)."""
    issues: List[Issue] = []
    cfg = v.cfg
    show_opt = show(cfg["training.optimizer"]) if v.ok("training.optimizer") else ""
    if v.ok("training.optimizer", "training.vit_lr", "training.aligner_lr") and v.t("optimizer") != "multimodal":
        issues += [Issue(v.source(f"training.{key}"), f"training.{key}",
                         f"only used by training.optimizer multimodal (optimizer is {show_opt})")
                   for key in ("vit_lr", "aligner_lr") if v.t(key) is not None]
    if v.ok("tuner.tuner_type", "tuner.use_dora") and cfg["tuner.use_dora"] and cfg["tuner.tuner_type"] != "lora":
        issues.append(Issue(v.source("tuner.use_dora"), "tuner.use_dora",
                            f"needs tuner.tuner_type lora (tuner_type is {show(cfg['tuner.tuner_type'])})"))
    if v.ok("model.attn_impl", "model.torch_dtype") and (cfg["model.attn_impl"] or "").startswith("flash") \
            and cfg["model.torch_dtype"] not in ("bfloat16", "float16"):
        issues.append(Issue(v.source("model.attn_impl"), "model.attn_impl",
                            f"{cfg['model.attn_impl']} needs model.torch_dtype bfloat16 or float16 (got "
                            f"{show(cfg['model.torch_dtype'])})"))
    for key in ("custom.coord_tokens.enabled", "custom.coord_tokens.skip_bbox_norm", "custom.coord_offset.enabled"):
        if v.ok(key) and cfg[key]:
            issues.append(Issue(v.source(key), key, "true is not implemented (coordinates are emitted as numeric "
                                                    "text); set false"))
    if v.ok("data.on_error", "data.skip_report_dir") and cfg["data.on_error"] == "skip" \
            and cfg["data.skip_report_dir"] is None:
        issues.append(Issue(v.source("data.on_error"), "data.skip_report_dir",
                            "required with data.on_error skip (every skipped record is reported there)"))
    ds = cfg["deepspeed.config"] if v.ok("deepspeed.config") else None
    if ds is not None and ds not in PRESET_DEEPSPEED and not ds.endswith(".json"):
        issues.append(Issue(v.source("deepspeed.config"), "deepspeed.config",
                            f"expected a .json file or one of {', '.join(PRESET_DEEPSPEED)}, got {show(ds)}"))
    return issues


def _swift_key_checks(v: _Checked, swift: Merged) -> List[Issue]:
    """``swift:`` pass-through keys that a schema key owns, that are reserved, or that the fused loss sets."""
    issues: List[Issue] = []
    for (_, name), (_, _, label) in swift.items():
        if name in RESERVED_SWIFT_KEYS:
            issues.append(Issue(label, f"swift.{name}", RESERVED_SWIFT_KEYS[name]))
        elif name == "loss_type" and v.ok("training.fused_loss") and v.cfg["training.fused_loss"]:
            issues.append(Issue(label, "swift.loss_type", "training.fused_loss true sets it (the fused loss); "
                                                          "set training.fused_loss false to use another loss_type"))
        else:
            owner = next((leaf for leaf in SCHEMA_LEAVES if leaf.meta["name"] == name
                          and leaf.meta["target"] == SWIFT), None)
            if owner is not None:
                issues.append(Issue(label, f"swift.{name}", f"set by {owner.dotted}; use that key"))
    return issues


def _grad_accum(v: _Checked, world_size: int) -> Tuple[Optional[int], str, Optional[Issue]]:
    """Effective batch -> gradient accumulation: (steps, their source, or the problem)."""
    if not v.ok("training.effective_batch_size", "training.gradient_accumulation_steps",
                "training.per_device_train_batch_size"):
        return None, "", None
    effective, explicit = v.t("effective_batch_size"), v.t("gradient_accumulation_steps")
    per_device = v.t("per_device_train_batch_size")
    if effective is not None and explicit is not None:
        return None, "", Issue(v.source("training.gradient_accumulation_steps"), "training.gradient_accumulation_steps",
                               f"set either training.effective_batch_size ({effective}) or "
                               f"training.gradient_accumulation_steps ({explicit}), not both (null one of them)")
    if effective is None and explicit is None:
        return None, "", Issue(v.top, "training.effective_batch_size",
                               "required (or set training.gradient_accumulation_steps); ms-swift's silent "
                               "default is 16")
    if explicit is not None:
        return explicit, v.source("training.gradient_accumulation_steps"), None
    problem = _grad_accum_issue(v.source("training.effective_batch_size"), effective, per_device, world_size)
    if problem is not None:
        return None, "", problem
    return effective // (per_device * world_size), f"derived: {effective} / ({per_device} x {world_size})", None


def _build(cls: type, values: Dict[Tuple[str, ...], Any], prefix: Tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _build(hints[f.name], values, prefix + (f.name,)) if is_section(hints[f.name])
                  else values[prefix + (f.name,)] for f in dataclasses.fields(cls)})


def resolve_config(path: str, overrides: Sequence[Tuple[str, Sequence[str]]] = (), *, world_size: int = 1,
                   world_size_source: str = "default") -> ResolvedConfig:
    """Load ``path`` (following ``extends``), apply ``overrides``, validate, derive.

    ``overrides``: ``[("training.learning_rate", ["1e-4"]), ...]`` as from :func:`parse_cli`.
    Raises :class:`ConfigError` with every problem found. Reads only the YAML files.
    """
    chain, issues = _load_chain(path)
    if not chain:
        raise ConfigError(issues)
    top = chain[-1][0]
    merged: Merged = {}
    swift: Merged = {}
    for layer in chain:
        _merge_layer(layer, layer[1], (), merged, swift, issues)
    bad: set = set()
    _apply_overrides(overrides, merged, swift, issues, bad)
    values, sources, where = _leaf_values(merged, top, issues, bad)
    values[("swift",)] = {name: raw for (_, name), (raw, _, _) in swift.items()}
    for (_, name), (_, label, _) in swift.items():
        sources[f"swift.{name}"] = label

    flat = {".".join(p): v for p, v in values.items()}
    more, gas, gas_source = _cross_checks(flat, where, bad, top, world_size, swift)
    issues += more
    if issues:
        raise ConfigError(issues)
    return ResolvedConfig(config=_build(Config, values), sources=sources, files=tuple(layer[0] for layer in chain),
                          world_size=world_size, world_size_source=world_size_source,
                          gradient_accumulation_steps=gas, gradient_accumulation_source=gas_source, where=where)


def _apply_overrides(overrides: Sequence[Tuple[str, Sequence[str]]], merged: Merged, swift: Merged,
                     issues: List[Issue], bad: set) -> None:
    """Command-line ``--a.b value`` over the merged files: into ``merged`` / ``swift`` (label
    ``command line``); an unknown key, a section or a bad value becomes an issue (the key in ``bad``)."""
    cli = "command line"
    for dotted, tokens in overrides:
        parts = tuple(dotted.split("."))
        if parts[0] == "swift" and len(parts) == 2:
            swift[parts] = (_swift_token_value(tokens), cli, cli)
            continue
        leaf = leaf_by_path(parts)
        if leaf is None:
            if parts in NODE_TYPES:
                issues.append(Issue(cli, dotted, f"is a section; set one of its keys: "
                                                 f"{', '.join('--' + dotted + '.' + c for c in children(parts))}"))
            else:
                issues.append(unknown_key_issue(cli, parts, flag=True))
            continue
        value, problem = parse_tokens(leaf, tokens)
        if problem is not None:
            issues.append(Issue(cli, dotted, problem))
            bad.add(dotted)
            merged.pop(parts, None)
            continue
        merged[parts] = (value, cli, cli)


def _leaf_values(merged: Merged, top: str, issues: List[Issue],
                 bad: set) -> Tuple[Dict[Tuple[str, ...], Any], Dict[str, str], Dict[str, str]]:
    """Every schema leaf's value (checked, in range; else the default and an issue), where it came
    from (``sources``: file label or ``default``) and where it was set (``where``: label:line)."""
    values: Dict[Tuple[str, ...], Any] = {}
    sources: Dict[str, str] = {}
    where: Dict[str, str] = {}  # dotted key -> label:line, for the issues
    for leaf in SCHEMA_LEAVES:
        if leaf.path in merged:
            raw, source_label, label = merged[leaf.path]
            value, problem = check_value(leaf, raw)
            if problem is None:
                problem = range_problem(leaf, value)
            if problem is not None:
                issues.append(Issue(label, leaf.dotted, problem))
                bad.add(leaf.dotted)
                value = leaf.default
            sources[leaf.dotted], where[leaf.dotted] = source_label, label
            if leaf.meta["required"] and value is None and leaf.dotted not in bad:
                issues.append(Issue(label, leaf.dotted, "required, got null"))
                bad.add(leaf.dotted)
        else:
            value = leaf.default
            sources[leaf.dotted] = "default"
            if leaf.meta["required"] and leaf.dotted not in bad:
                issues.append(Issue(top, leaf.dotted, "required, not set"))
                bad.add(leaf.dotted)
        values[leaf.path] = value
    return values, sources, where


def _swift_token_value(tokens: Sequence[str]) -> Any:
    """``--swift.KEY v`` -> YAML scalar of v; several tokens -> list of str (as ms-swift's CLI)."""
    if len(tokens) == 1:
        return yaml.safe_load(tokens[0])
    return list(tokens)



def missing_paths(resolved: ResolvedConfig) -> List[Issue]:
    """Inputs that must exist before a run (model, JSONL files, DeepSpeed JSON, resume checkpoint)."""
    issues = []
    for dotted in ("model.model", "custom.train_jsonl", "custom.val_jsonl", "deepspeed.config",
                   "training.resume_from_checkpoint"):
        value = resolved.value(dotted)
        if value is None or (dotted == "deepspeed.config" and value in PRESET_DEEPSPEED):
            continue
        for path in value if isinstance(value, list) else [value]:
            if not os.path.exists(path):
                issues.append(Issue(resolved.where.get(dotted, resolved.sources[dotted]), dotted,
                                    f"{path}: no such file or directory (paths are relative to the working "
                                    f"directory {os.getcwd()})"))
    return issues


