"""Training configs: one typed schema, YAML with ``extends``, overrides, validation, export.

    schema.py   the keys: type, default, choices, range, help, target (ms-swift argument / ours)
    values.py   Issue / ConfigError and the value checks
    resolve.py  files + extends + overrides -> ResolvedConfig (all problems at once, file:line)
    cli.py      the entry point's flags
    render.py   --print_config
    export.py   RuntimeOptions, flat ms-swift arguments, --export_flat (flat YAML + sidecar + plugin)
    zero.py     DeepSpeed on the CPU: what such a run needs (fp32, the JSON with fp16 / bf16 off), or why not
    docs.py     the generated schema table of docs/configuration.md

Pure (PyYAML only): ``python -m swift_plugins.sft --print_config`` answers in well under a second.
"""
from swift_plugins.config.cli import CLI_FLAGS, CliArgs, parse_cli
from swift_plugins.config.export import (SIDECAR_FORMAT, ExportedFiles, RuntimeOptions, export_flat, flat_swift_args,
                                         load_sidecar, runtime_options, swift_argv)
from swift_plugins.config.render import render_config
from swift_plugins.config.resolve import (ResolvedConfig, missing_paths, resolve_config, resolve_world_size,
                                          world_size_from_env)
from swift_plugins.config.schema import RESERVED_SWIFT_KEYS, SCHEMA_LEAVES, Config, Leaf
from swift_plugins.config.values import ConfigError, Issue

__all__ = [
    "CLI_FLAGS", "CliArgs", "Config", "ConfigError", "ExportedFiles", "Issue", "Leaf", "RESERVED_SWIFT_KEYS",
    "ResolvedConfig", "RuntimeOptions", "SCHEMA_LEAVES", "SIDECAR_FORMAT", "export_flat", "flat_swift_args",
    "load_sidecar", "missing_paths", "parse_cli", "render_config", "resolve_config", "resolve_world_size",
    "runtime_options", "swift_argv", "world_size_from_env",
]
