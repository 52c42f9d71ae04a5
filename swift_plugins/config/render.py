"""``--print_config``: the resolved config as loadable YAML, every value commented with where it came from."""
from __future__ import annotations

from typing import Any, Tuple

import yaml

from swift_plugins.config.resolve import ResolvedConfig
from swift_plugins.config.schema import SCHEMA_LEAVES
from swift_plugins.config.zero import CPU_DEEPSPEED_NOTE, is_cpu_deepspeed

__all__ = ["render_config", "yaml_scalar"]

def yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10 ** 6).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def render_config(resolved: ResolvedConfig) -> str:
    """The resolved config as YAML (loadable again), each value commented with its source.

    ::

        training:
          learning_rate: 0.0002  # configs/dlora/sft_text_only.yaml
          weight_decay: 0.1  # default
        # derived (world_size 4 from --world_size):
        #   gradient_accumulation_steps: 32  (derived: 128 / (1 x 4))
    """
    lines = [f"# resolved from: {' <- '.join(reversed(resolved.files))}"]
    current: Tuple[str, ...] = ()
    for leaf in SCHEMA_LEAVES:
        parent = leaf.path[:-1]
        common = 0
        while common < min(len(current), len(parent)) and current[common] == parent[common]:
            common += 1
        for depth in range(common, len(parent)):
            lines.append("  " * depth + f"{parent[depth]}:")
        current = parent
        value = resolved.value(leaf.dotted)
        lines.append("  " * len(parent) + f"{leaf.path[-1]}: {yaml_scalar(value)}  # "
                     f"{resolved.sources[leaf.dotted]}")
    swift = resolved.config.swift
    if swift:
        lines.append("swift:")
        for name, value in swift.items():
            lines.append(f"  {name}: {yaml_scalar(value)}  # {resolved.sources['swift.' + name]}")
    else:
        lines.append("swift: {}")
    lines.append(f"# derived (world_size {resolved.world_size} from {resolved.world_size_source}):")
    lines.append(f"#   gradient_accumulation_steps: {resolved.gradient_accumulation_steps}  "
                 f"({resolved.gradient_accumulation_source})")
    attn_impl, why = resolved.attn_impl
    if why:
        lines.append(f"#   attn_impl: {attn_impl}  ({why})")
    if is_cpu_deepspeed(resolved):
        lines.append(f"#   deepspeed: {CPU_DEEPSPEED_NOTE}")
    return "\n".join(lines) + "\n"


