"""DeepSpeed ZeRO on a machine without a GPU: what such a run needs, derived from the config.

``training.use_cpu: true`` with a ``deepspeed.config`` is a CPU DeepSpeed run. ms-swift resolves
``fp16=True`` for a float32 model and the shipped JSONs say ``"auto"``, which follows it; DeepSpeed's
CPU accelerator has no fp16. So the run gets, visibly (``--print_config``, the flat YAML, a start-up
log line)::

    deepspeed.config configs/deepspeed/zero3.json + training.use_cpu true
      -> ms-swift fp16: false, bf16: false                     (HF args: no mixed precision)
      -> deepspeed: the JSON with fp16.enabled / bf16.enabled false   (inline, the file is untouched)
      -> in each rank (training.pipeline.prepare_cpu_deepspeed): DS_ACCELERATOR=cpu, gloo through
         deepspeed.comm before ms-swift builds its arguments, so ZeRO-3's zero.Init sees the real
         world size

Without ``use_cpu`` (a GPU machine) nothing is derived: the configs behave as before. Pure: reads
JSON files only (an ms-swift preset from the installed ``swift`` package, found without importing it).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
from typing import Any, Dict, List, Optional

from swift_plugins.config.resolve import ResolvedConfig
from swift_plugins.config.schema import PRESET_DEEPSPEED
from swift_plugins.config.values import Issue
from swift_plugins.errors import UserError

__all__ = ["CPU_DEEPSPEED_NOTE", "cpu_deepspeed", "cpu_deepspeed_issues", "deepspeed_json", "is_cpu_deepspeed",
           "mixed_precision_off"]

# What a CPU DeepSpeed run gets, in the words of --print_config and the start-up log line.
CPU_DEEPSPEED_NOTE = ("DeepSpeed on the CPU (training.use_cpu true): DS_ACCELERATOR=cpu, fp32 without mixed "
                      "precision (ms-swift fp16 / bf16 false, DeepSpeed JSON fp16.enabled / bf16.enabled false), "
                      "gloo through deepspeed.comm (ZeRO-3 sees the world size)")


def is_cpu_deepspeed(resolved: ResolvedConfig) -> bool:
    """A DeepSpeed config and ``training.use_cpu`` true."""
    return resolved.config.deepspeed.config is not None and resolved.config.training.use_cpu


def deepspeed_json(value: str) -> Dict[str, Any]:
    """The DeepSpeed JSON ``deepspeed.config`` names: a file, or an ms-swift preset (``zero3`` ->
    ``swift/config/zero3.json`` of the installed ms-swift)."""
    path = value
    if value in PRESET_DEEPSPEED:
        spec = importlib.util.find_spec("swift")
        path = os.path.join(list(spec.submodule_search_locations)[0], "config", f"{value}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: deepspeed.config: cannot read the DeepSpeed JSON ({e}); fix the file or name a "
                        f"preset ({', '.join(PRESET_DEEPSPEED)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: deepspeed.config: expected a JSON object, got {type(data).__name__}")
    return data


def mixed_precision_off(ds: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``ds`` with fp16 and bf16 disabled (other keys kept).

    >>> mixed_precision_off({"fp16": {"enabled": "auto", "loss_scale": 0}, "bf16": {"enabled": "auto"}, "x": 1})
    {'fp16': {'enabled': False, 'loss_scale': 0}, 'bf16': {'enabled': False}, 'x': 1}
    """
    out = copy.deepcopy(ds)
    for key in ("fp16", "bf16"):
        section = out.get(key)
        out[key] = dict(section, enabled=False) if isinstance(section, dict) else {"enabled": False}
    return out


def cpu_deepspeed(resolved: ResolvedConfig) -> Optional[Dict[str, Any]]:
    """ms-swift arguments a CPU DeepSpeed run adds (``fp16``, ``bf16``, the inline ``deepspeed``
    dict); None when the run is not one (no DeepSpeed, or a GPU run)."""
    if not is_cpu_deepspeed(resolved):
        return None
    return {"fp16": False, "bf16": False, "deepspeed": mixed_precision_off(deepspeed_json(resolved.config.deepspeed.config))}


def cpu_deepspeed_issues(resolved: ResolvedConfig) -> List[Issue]:
    """What a CPU DeepSpeed run cannot do, each with its fix: a 16-bit ``model.torch_dtype`` (the
    CPU run trains fp32) and ms-swift ``fp16`` / ``bf16`` set true under ``swift:``."""
    if not is_cpu_deepspeed(resolved):
        return []
    issues = []
    dtype = resolved.config.model.torch_dtype
    if dtype != "float32":
        issues.append(Issue(resolved.where.get("model.torch_dtype", resolved.files[-1]), "model.torch_dtype",
                            f"DeepSpeed on the CPU (training.use_cpu true) trains in float32, got "
                            f"{dtype or 'null (the model config decides)'}; set --model.torch_dtype float32 "
                            f"(or run on a GPU with training.use_cpu false)"))
    for key in ("fp16", "bf16"):
        if resolved.config.swift.get(key):
            issues.append(Issue(resolved.sources.get(f"swift.{key}", resolved.files[-1]), f"swift.{key}",
                                f"DeepSpeed on the CPU has no {key}; remove swift.{key} (the CPU run is fp32)"))
    return issues
