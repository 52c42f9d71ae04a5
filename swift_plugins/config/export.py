"""Export: our options as :data:`RuntimeOptions`, the flat ms-swift arguments, and ``--export_flat``.

Two ways a resolved config reaches ms-swift, with the same arguments::

    python -m swift_plugins.sft --config X         swift sft OUT.yaml   (after --export_flat OUT.yaml)
      argv = flat_swift_args(resolved)                OUT.yaml = flat_swift_args(resolved)
      options = runtime_options(resolved)             OUT.swiftpack.json = RuntimeOptions as JSON (sidecar)
        handed to the pipeline as the object          swiftpack_options_OUT.py: register_plugins(sidecar=...)
                                                      load_sidecar -> the same RuntimeOptions (tested)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from swift_plugins.config.resolve import ResolvedConfig
from swift_plugins.config.schema import OURS, SCHEMA_LEAVES, SWIFT
from swift_plugins.config.zero import CPU_DEEPSPEED_NOTE, cpu_deepspeed, is_cpu_deepspeed
from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.errors import UserError
from swift_plugins.families import DEFAULT_FAMILY, FAMILIES, Family, family_of_model
from swift_plugins.files import atomic_write_text
from swift_plugins.names import CALLBACK_DATA_ORDER, CALLBACK_EVAL_TOKEN_MEAN, FUSED_LOSS, OPTIMIZER_NAME

__all__ = ["SIDECAR_FORMAT", "ExportedFiles", "RuntimeOptions", "export_flat", "flat_swift_args", "load_sidecar",
           "runtime_options", "swift_argv"]

SIDECAR_FORMAT = "swiftpack-options/1"

def _runtime_fields() -> List[Tuple[str, Any, Any, str]]:
    out = [(leaf.meta["name"], leaf.type, leaf.default, leaf.meta["help"]) for leaf in SCHEMA_LEAVES
           if leaf.meta["target"] == OURS]
    assert len({name for name, _, _, _ in out}) == len(out), "runtime option names must be unique"
    return out


# Our keys as one flat, frozen dataclass: what the entry point hands its pipeline and what a
# sidecar JSON holds. Generated from the schema (one source of truth), help included.
RuntimeOptions = dataclasses.make_dataclass(
    "RuntimeOptions", [(name, tp, field(default=default, metadata={"help": help_text}))
                       for name, tp, default, help_text in _runtime_fields()],
    frozen=True)
RuntimeOptions.__module__ = __name__
RuntimeOptions.__doc__ = ("swift_plugins' own options (packing, save_delay_steps, custom.*), flat. "
                          "packing_seed is resolved (training.seed when the config leaves it null).")


def _conversation_options(self) -> ConversationOptions:
    return ConversationOptions(prompt=self.prompt, object_ordering=self.object_ordering, emit_norm=self.emit_norm,
                               seed=self.conversation_seed, coord_tokens=self.coord_tokens,
                               coord_offset=self.coord_offset)


RuntimeOptions.conversation_options = _conversation_options


def runtime_options(resolved: ResolvedConfig) -> Any:
    """The :class:`RuntimeOptions` of a resolved config (``packing_seed`` null -> training.seed)."""
    kwargs = {leaf.meta["name"]: resolved.value(leaf.dotted) for leaf in SCHEMA_LEAVES
              if leaf.meta["target"] == OURS}
    if kwargs["packing_seed"] is None:
        kwargs["packing_seed"] = resolved.config.training.seed
    return RuntimeOptions(**kwargs)


def load_sidecar(path: str) -> Tuple[Any, int, bool]:
    """Sidecar JSON written by :func:`export_flat` -> (RuntimeOptions, world size it was exported for,
    whether the run is DeepSpeed on the CPU (:func:`swift_plugins.config.zero.is_cpu_deepspeed`))."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path}: not a swift_plugins sidecar (format {data.get('format')!r}, expected "
                        f"{SIDECAR_FORMAT!r}); re-export it with --export_flat")
    names = {f.name for f in dataclasses.fields(RuntimeOptions)}
    unknown = sorted(set(data["options"]) - names)
    missing = sorted(names - set(data["options"]))
    if unknown or missing:
        raise UserError(f"{path}: options do not match this swift_plugins version (unknown: {unknown}, missing: "
                        f"{missing}); re-export it with --export_flat")
    return RuntimeOptions(**data["options"]), int(data["world_size"]), bool(data.get("cpu_deepspeed", False))


def model_family(resolved: ResolvedConfig) -> Optional[Family]:
    """The family of ``model.model`` when it is a local folder with a config.json (else None: a hub id,
    or a folder not there yet; training then checks the loaded model against the template)."""
    path = resolved.config.model.model
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return None
    return family_of_model(path)


def _family_names(resolved: ResolvedConfig, family: Optional[Family]) -> Dict[str, str]:
    """``model_type`` (when the config leaves it null) and, with packing, ``template`` for ms-swift."""
    cfg = resolved.config
    out = {}
    if family is not None and cfg.model.model_type not in (None, family.swift_model_type):
        source = resolved.sources.get("model.model_type", resolved.files[-1])
        raise UserError(f"{source}: model.model_type: {cfg.model.model_type!r} but {cfg.model.model} is a "
                        f"{family.title} checkpoint ({family.swift_model_type}); set model.model_type: null")
    if family is not None:
        out["model_type"] = family.swift_model_type
    if cfg.training.packing:
        chosen = cfg.template.template
        packing_family = family or FAMILIES[DEFAULT_FAMILY]
        if family is not None and chosen not in (None, family.template, family.packing_template):
            source = resolved.sources.get("template.template", resolved.files[-1])
            raise UserError(f"{source}: template.template: {chosen!r} is not the {family.title} template of "
                            f"{cfg.model.model} (set template.template: null; packing uses "
                            f"{family.packing_template!r})")
        out["template"] = packing_family.packing_template
    return out


def flat_swift_args(resolved: ResolvedConfig) -> Dict[str, Any]:
    """ms-swift arguments (name -> YAML value) for ``swift sft``; None values are left out.

    Always explicit: ``tuner_type``, ``check_model``, ``gradient_accumulation_steps``; ``model_type``
    and, with packing, ``template`` come from the model's family (:func:`model_family`). Our keys are
    not here (ms-swift rejects unknown arguments): the entry point hands them to its pipeline as a
    :class:`RuntimeOptions`, a flat export writes them to the sidecar.
    """
    cfg = resolved.config
    out: Dict[str, Any] = {}
    for leaf in SCHEMA_LEAVES:
        if leaf.meta["target"] != SWIFT:
            continue
        value = resolved.value(leaf.dotted)
        if leaf.dotted == "training.optimizer":
            value = OPTIMIZER_NAME if value == "multimodal" else value
        if leaf.dotted == "training.gradient_accumulation_steps":
            value = resolved.gradient_accumulation_steps
        if value is not None and value != []:  # ms-swift's list arguments take nargs="+"
            out[leaf.meta["name"]] = value
    out.update(_family_names(resolved, model_family(resolved)))
    if cfg.training.packing:  # the family's packing template isolates packed samples (training/template.py)
        if resolved.attn_impl[0] is not None:  # sdpa -> swiftpack_varlen: no L x L mask (resolve.packed_attn_impl)
            out["attn_impl"] = resolved.attn_impl[0]
        # fresh dataloader workers each epoch see the epoch's pack order (persistent ones would not)
        out["dataloader_persistent_workers"] = False
        # the packs are already in the dealt order: ms-swift's sampler must not shuffle them again
        out["train_dataloader_shuffle"] = False
    if cfg.training.fused_loss:  # ms-swift's loss registry (swift_plugins.training.fused_loss)
        out["loss_type"] = FUSED_LOSS
    out["dataset"] = list(cfg.custom.train_jsonl)
    if cfg.custom.val_jsonl is not None:
        out["val_dataset"] = list(cfg.custom.val_jsonl)
    options = runtime_options(resolved)
    callbacks = []
    if options.log_data_order:
        callbacks.append(CALLBACK_DATA_ORDER)
    if cfg.custom.val_jsonl is not None:
        callbacks.append(CALLBACK_EVAL_TOKEN_MEAN)
    if callbacks:
        out["callbacks"] = callbacks
    derived = cpu_deepspeed(resolved)  # DeepSpeed on the CPU: fp32, the JSON inline with fp16 / bf16 off
    if derived is not None:
        out.update(derived)
    for name, value in cfg.swift.items():
        out[name] = value
    return out


def swift_argv(args: Mapping[str, Any]) -> List[str]:
    """Arguments -> argv exactly as ms-swift's ``parse_yaml_args`` turns a YAML file into argv."""
    argv: List[str] = []
    for name, value in args.items():
        argv.append(f"--{name}")
        if isinstance(value, list):
            argv += [str(v) for v in value]
        elif isinstance(value, dict):
            argv.append(json.dumps(value, ensure_ascii=False))
        else:
            argv.append(str(value))
    return argv


@dataclass(frozen=True)
class ExportedFiles:
    flat_yaml: str
    sidecar_json: str
    plugin_py: str


def export_flat(resolved: ResolvedConfig, out_yaml: str, *, command: str = "",
                display_path: Optional[str] = None) -> ExportedFiles:
    """Write ``OUT.yaml`` (ms-swift keys only), ``OUT.swiftpack.json`` (our options) and
    ``swiftpack_options_<stem>.py`` (a plugin that registers the sidecar) next to each other.

    ``swift sft OUT.yaml`` then imports the plugin (``external_plugins``, absolute path), which
    registers the JSONL datasets, callbacks, optimizer and packing hook from the sidecar.
    """
    out_yaml = os.path.abspath(out_yaml)
    folder, base = os.path.split(out_yaml)
    stem = os.path.splitext(base)[0]
    sidecar = os.path.join(folder, f"{stem}.swiftpack.json")
    plugin = os.path.join(folder, f"swiftpack_options_{re.sub(r'[^0-9A-Za-z_]', '_', stem)}.py")
    args = flat_swift_args(resolved)
    args["external_plugins"] = [plugin] + list(args.get("external_plugins") or [])
    options = runtime_options(resolved)
    shown = display_path or out_yaml
    launch = (f"swift sft {shown}" if resolved.world_size == 1 else
              f"NPROC_PER_NODE={resolved.world_size} swift sft {shown}   (ms-swift starts torchrun)")
    header = [f"# Flat ms-swift config exported from {resolved.files[-1]}; gradient_accumulation_steps is for "
              f"world_size {resolved.world_size}.",
              f"# Run from the directory the config's relative paths start at (the repository root): {launch}",
              "# swift_plugins' own options (packing, save_delay_steps, custom.*) are in the sidecar JSON, registered "
              "by the plugin in external_plugins.",
              f"# Re-export after changes: {command}" if command else
              "# Re-export after changes: python -m swift_plugins.sft --config FILE --export_flat OUT.yaml"]
    if is_cpu_deepspeed(resolved):
        header.append(f"# {CPU_DEEPSPEED_NOTE}: fp16, bf16 and deepspeed below are derived; the plugin sets up the rest")
    body = yaml.safe_dump(args, sort_keys=False, allow_unicode=True, width=10 ** 6)
    sidecar_data = {"format": SIDECAR_FORMAT, "source_config": resolved.files[-1],
                    "world_size": resolved.world_size, "cpu_deepspeed": is_cpu_deepspeed(resolved),
                    "options": dataclasses.asdict(options)}
    plugin_text = (f'"""Generated by swift_plugins.config.export_flat for {base}; do not edit (re-export).\n\n'
                   f"ms-swift imports this file (external_plugins); it registers swift_plugins with ms-swift\n"
                   f'and the run options from the sidecar JSON next to it, nothing else."""\n'
                   f"from swift_plugins import register_plugins\n\n"
                   f"register_plugins(sidecar={json.dumps(sidecar)})\n")
    atomic_write_text(sidecar, json.dumps(sidecar_data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(plugin, plugin_text)
    atomic_write_text(out_yaml, "\n".join(header) + "\n" + body)
    return ExportedFiles(flat_yaml=out_yaml, sidecar_json=sidecar, plugin_py=plugin)


