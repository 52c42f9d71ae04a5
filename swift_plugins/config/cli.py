"""The entry point's command line: ``--config F [--print_config] [--export_flat OUT] [--world_size N] [--section.key v ...]``.

    ["--config", "c.yaml", "--training.learning_rate", "1e-4", "--tuner.target_modules", "q_proj", "v_proj"]
    -> CliArgs(config="c.yaml", overrides=(("training.learning_rate", ("1e-4",)),
                                           ("tuner.target_modules", ("q_proj", "v_proj"))))

Values stay strings here; resolution parses them with the schema type of their key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from swift_plugins.config.schema import SCHEMA_LEAVES
from swift_plugins.config.values import ConfigError, Issue, suggest

__all__ = ["CLI_FLAGS", "CliArgs", "parse_cli"]

CLI_FLAGS = {
    "--config": "the YAML file (required)",
    "--print_config": "print the resolved config with the source of every value; exit 0 if valid, 2 if not",
    "--export_flat": "OUT.yaml: write a flat ms-swift YAML (+ sidecar JSON + plugin) that `swift sft OUT.yaml` "
                     "runs",
    "--world_size": "N: world size for --print_config / --export_flat previews (default: torchrun's WORLD_SIZE, "
                    "else 1)",
}


@dataclass(frozen=True)
class CliArgs:
    config: str
    print_config: bool = False
    export_flat: Optional[str] = None
    world_size: Optional[int] = None
    overrides: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()


def parse_cli(argv: Sequence[str]) -> CliArgs:
    """``--config F [--print_config] [--export_flat OUT] [--world_size N] [--section.key value ...]``.

    ``--section.key=value`` works too; a list key takes every token up to the next ``--flag``.
    Raises :class:`ConfigError` (source ``command line``) listing every problem.
    """
    issues: List[Issue] = []
    cli = "command line"
    groups: List[Tuple[str, List[str]]] = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            groups.append((name, [value] if eq else []))
        elif groups:
            groups[-1][1].append(token)
        else:
            issues.append(Issue(cli, "", f"unexpected argument {token!r} (options start with --)"))
    config = export = world = None
    print_config = False
    overrides: List[Tuple[str, Tuple[str, ...]]] = []
    for name, values in groups:
        flag = "--" + name
        if name in ("config", "export_flat", "world_size"):
            if len(values) != 1:
                issues.append(Issue(cli, flag, f"expects one value, got {len(values)}"))
                continue
            if name == "config":
                config = values[0]
            elif name == "export_flat":
                export = values[0]
            else:
                if not re.fullmatch(r"\d+", values[0]) or int(values[0]) < 1:
                    issues.append(Issue(cli, flag, f"expected a positive int, got {values[0]!r}"))
                else:
                    world = int(values[0])
        elif name == "print_config":
            if values and values != ["true"]:
                issues.append(Issue(cli, flag, f"takes no value, got {' '.join(values)!r}"))
            print_config = True
        elif "." in name:
            overrides.append((name, tuple(values)))
        else:
            hint = next((leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == name), None)
            if hint is None:
                close = suggest(name, [leaf.path[-1] for leaf in SCHEMA_LEAVES] + [f[2:] for f in CLI_FLAGS])
                if close is not None:
                    hint = next((leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == close), close)
            issues.append(Issue(cli, flag, "unknown option" + (f" (did you mean '--{hint}'?)" if hint else "")
                                + "; keys are set as --section.key value"))
    if config is None and not issues:
        issues.append(Issue(cli, "--config", "required (the YAML file, e.g. configs/tiny/sft_padding.yaml)"))
    if issues:
        raise ConfigError(issues)
    return CliArgs(config=config, print_config=print_config, export_flat=export, world_size=world,
                   overrides=tuple(overrides))


