"""Training configs: one typed schema, YAML with ``extends``, overrides, validation, flattening.

Framework-free (no torch / swift import): ``python -m swift_plugins.sft --print_config`` answers
in well under a second. Everything a user can write is a field of :class:`Config`; each field's
metadata holds its help, choices, range and where the value goes (an ms-swift argument, one of our
runtime options, or config-only). The schema table in ``docs/configuration.md`` is generated from
it (:func:`schema_markdown`).

Resolution, worked example (``world_size`` 4)::

    configs/dlora/sft_base.yaml         training: {learning_rate: 1.0e-4, effective_batch_size: 128}
      ^ extends
    configs/dlora/sft_text_only.yaml    training: {learning_rate: 2.0e-4, packing: true, ...}
      + command line                    --training.learning_rate 3e-4
    -> training.learning_rate = 0.0003          (source: command line)
       training.effective_batch_size = 128      (source: configs/dlora/sft_base.yaml)
       gradient_accumulation_steps = 32         (derived: 128 / (1 x 4))

Every problem is an :class:`Issue` ``"<source>: <section.key>: <what is wrong>"`` and all of them
are raised together in one :class:`ConfigError`, e.g.::

    configs/x.yaml: training.learnign_rate: unknown key (did you mean 'learning_rate'?)
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from .data import ON_ERROR_CHOICES, ConversationOptions, atomic_write_text
from .template import TEMPLATE_TYPE

__all__ = [
    "CALLBACK_DATA_ORDER", "CALLBACK_SAVE_DELAY", "CLI_FLAGS", "Config", "ConfigError", "ExportedFiles", "Issue",
    "Leaf", "OPTIMIZER_NAME", "RESERVED_SWIFT_KEYS", "ResolvedConfig", "RuntimeOptions", "SCHEMA_LEAVES",
    "SIDECAR_FORMAT", "export_flat", "flat_swift_args", "load_sidecar", "parse_cli", "render_config",
    "resolve_config", "resolve_world_size", "runtime_options", "schema_markdown", "swift_argv",
    "update_docs",
]

# Names under which swift_plugins registers itself with ms-swift (optimizers_map / callbacks_map).
OPTIMIZER_NAME = "swiftpack_multimodal"
PACKING_TEMPLATE = TEMPLATE_TYPE  # swift_plugins.template: qwen3_vl_packing
CALLBACK_SAVE_DELAY = "swiftpack_save_delay"
CALLBACK_DATA_ORDER = "swiftpack_data_order"
SIDECAR_FORMAT = "swiftpack-options/1"

# Where a value goes. SWIFT: an ms-swift argument (metadata "swift" names it). OURS: a runtime
# option (metadata "ours" names it; an args field ``swiftpack_<name>`` / a sidecar entry).
# CONFIG: used only while resolving (effective_batch_size -> gradient_accumulation_steps).
SWIFT, OURS, CONFIG = "swift", "ours", "config"


def _key(default: Any = MISSING, help: str = "", *, swift: Optional[str] = None, ours: Optional[str] = None,
         choices: Optional[Sequence[Any]] = None, ge: Optional[float] = None, gt: Optional[float] = None,
         le: Optional[float] = None, lt: Optional[float] = None, path: bool = False, required: bool = False,
         factory: Any = None, config_only: bool = False) -> Any:
    """One schema field. Exactly one of ``swift=NAME`` / ``ours=NAME`` / ``config_only``."""
    assert (swift is not None) + (ours is not None) + config_only == 1
    meta = {"help": help, "target": SWIFT if swift else OURS if ours else CONFIG, "name": swift or ours,
            "choices": tuple(choices) if choices is not None else None, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "path": path, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=None if required else default, metadata=meta)


def _conversation_key(name: str, **kwargs) -> Any:
    """A ``custom`` key whose default, choices and help come from data.ConversationOptions."""
    f = ConversationOptions.__dataclass_fields__[name]
    return _key(f.default, f.metadata["help"], choices=f.metadata.get("choices"), **kwargs)


# ----------------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class ModelSection:
    model: Optional[str] = _key(help="Local model directory (relative to the working directory) or hub id.",
                                swift="model", path=True, required=True)
    model_type: Optional[str] = _key(None, "ms-swift model type; null: detected from the model's config.json "
                                           "(qwen3_vl for Qwen3-VL).", swift="model_type")
    torch_dtype: Optional[str] = _key(None, "Weights / compute dtype; null: the model's config. bfloat16 also "
                                            "turns on bf16 mixed precision.", swift="torch_dtype",
                                      choices=("bfloat16", "float16", "float32"))
    attn_impl: Optional[str] = _key(None, "Attention kernel; flash_attn needs flash-attn (GPU) and a 16-bit "
                                          "torch_dtype; sdpa runs everywhere.", swift="attn_impl",
                                    choices=("sdpa", "eager", "flash_attn", "flash_attention_2",
                                             "flash_attention_3"))
    check_model: bool = _key(False, "Ask the model hub whether a local model is current (ms-swift's default "
                                    "true costs ~7 s of retries offline).", swift="check_model")


@dataclass(frozen=True)
class TunerSection:
    tuner_type: str = _key("lora", "lora (adapters, incl. DoRA) or full fine-tuning.", swift="tuner_type",
                           choices=("lora", "full"))
    use_dora: bool = _key(False, "DoRA: LoRA plus a learned magnitude per output channel (tuner_type lora).",
                          swift="use_dora")
    lora_rank: int = _key(8, "LoRA rank r.", swift="lora_rank", ge=1)
    lora_alpha: float = _key(32.0, "LoRA scale numerator (scale = alpha / r).", swift="lora_alpha", gt=0)
    lora_dropout: float = _key(0.05, "Dropout on the LoRA input.", swift="lora_dropout", ge=0, lt=1)
    target_modules: List[str] = _key(help="Modules that get adapters; all-linear: every linear layer of the "
                                          "parts not frozen below.", swift="target_modules",
                                     factory=lambda: ["all-linear"])
    freeze_llm: bool = _key(False, "Freeze the language model (full) / no adapters on it (lora).",
                            swift="freeze_llm")
    freeze_vit: bool = _key(True, "Freeze the vision tower (full) / no adapters on it (lora).",
                            swift="freeze_vit")
    freeze_aligner: bool = _key(True, "Freeze the merger + DeepStack mergers (full) / no adapters on them "
                                      "(lora).", swift="freeze_aligner")
    modules_to_save: List[str] = _key(help="Modules trained in full next to the adapters.",
                                      swift="modules_to_save", factory=list)


@dataclass(frozen=True)
class TrainingSection:
    # optimizer
    optimizer: str = _key("default", "default: one AdamW group (ms-swift's); multimodal: swift_plugins' "
                                     "LLM / ViT / aligner groups (learning_rate / vit_lr / aligner_lr), no "
                                     "weight decay on norms, biases, embeddings, DoRA magnitudes.",
                          swift="optimizer", choices=("default", "multimodal"))
    learning_rate: Optional[float] = _key(None, "Peak learning rate (language model with optimizer "
                                                "multimodal); null: 1e-4 for lora, 1e-5 for full.",
                                          swift="learning_rate", gt=0)
    vit_lr: Optional[float] = _key(None, "Vision tower learning rate (optimizer multimodal); null: "
                                         "learning_rate.", swift="vit_lr", gt=0)
    aligner_lr: Optional[float] = _key(None, "Merger + DeepStack mergers learning rate (optimizer multimodal); "
                                             "null: learning_rate.", swift="aligner_lr", gt=0)
    weight_decay: float = _key(0.1, "AdamW weight decay (not on norms / biases with optimizer multimodal).",
                               swift="weight_decay", ge=0)
    lr_scheduler_type: str = _key("cosine", "Learning-rate schedule.", swift="lr_scheduler_type",
                                  choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                           "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr",
                                           "warmup_stable_decay"))
    warmup_ratio: float = _key(0.0, "Fraction of the optimizer steps spent warming up.", swift="warmup_ratio",
                               ge=0, lt=1)
    max_grad_norm: float = _key(1.0, "Gradient clipping norm.", swift="max_grad_norm", ge=0)
    # length of training
    num_train_epochs: float = _key(3.0, "Epochs (ignored when max_steps is set).", swift="num_train_epochs",
                                   gt=0)
    max_steps: Optional[int] = _key(None, "Optimizer steps; null: num_train_epochs decides.",
                                    swift="max_steps", ge=1)
    # batch
    per_device_train_batch_size: int = _key(1, "Rows per device per micro-batch (with packing: packs, must "
                                               "be 1).", swift="per_device_train_batch_size", ge=1)
    per_device_eval_batch_size: int = _key(1, "Rows per device per eval batch.",
                                           swift="per_device_eval_batch_size", ge=1)
    effective_batch_size: Optional[int] = _key(None, "Rows per optimizer step over all devices; "
                                                     "gradient_accumulation_steps = effective_batch_size / "
                                                     "(per_device_train_batch_size x world_size).",
                                               config_only=True, ge=1)
    gradient_accumulation_steps: Optional[int] = _key(None, "Set this OR effective_batch_size (which derives "
                                                            "it for the run's world size).",
                                                      swift="gradient_accumulation_steps", ge=1)
    gradient_checkpointing: bool = _key(True, "Recompute activations in backward (less memory).",
                                        swift="gradient_checkpointing")
    seed: int = _key(42, "Global seed (each rank adds its rank).", swift="seed")
    data_seed: int = _key(42, "Seed of the dataloader shuffle (same on every rank).", swift="data_seed")
    use_cpu: bool = _key(False, "Train on CPU. Needed for multi-process CPU runs: only then do transformers + "
                                "accelerate set up gloo DDP under torchrun (else each process trains alone).",
                         swift="use_cpu")
    dataloader_num_workers: Optional[int] = _key(None, "Dataloader worker processes; null: 1 (ms-swift).",
                                                 swift="dataloader_num_workers", ge=0)
    # packing (swift_plugins' planned packing; never ms-swift's own `packing`)
    packing: bool = _key(False, "Pack many samples into each row (swift_plugins packing; samples stay "
                                "isolated).", ours="packing")
    global_max_length: Optional[int] = _key(None, "Tokens per pack (text + image tokens); required with "
                                                  "packing.", ours="global_max_length", ge=1)
    packing_buffer: Optional[int] = _key(None, "Plan packs within consecutive windows of this many samples in data "
                                               "order (bounded look-ahead); null: the whole dataset is one window.",
                                         ours="packing_buffer", ge=1)
    packing_min_fill_ratio: float = _key(0.0, "A pack filled below this fraction of global_max_length is "
                                              "underfilled: its samples are carried into the next window and "
                                              "planned again.", ours="packing_min_fill_ratio", ge=0, le=1)
    packing_drop_last: bool = _key(False, "Drop the packs still underfilled at the end (their samples are "
                                          "reported, never silently lost); false: keep them.",
                                   ours="packing_drop_last")
    eval_packing: bool = _key(False, "Pack the validation set too (needs packing).", ours="eval_packing")
    packing_strategy: str = _key("bfd", "bfd: first-fit decreasing (near the fewest packs); greedy: by length "
                                        "descending, next-fit; next_fit: data order, one open pack; random: "
                                        "seeded shuffle, then next-fit.",
                                 ours="packing_strategy", choices=("bfd", "greedy", "random", "next_fit"))
    packing_seed: Optional[int] = _key(None, "Seed of the packing plan (random strategy, order of the packs); "
                                             "null: training.seed.", ours="packing_seed")
    packing_overlong: str = _key("drop", "Samples longer than global_max_length: drop (listed in "
                                         "<output_dir>/packing/dropped_samples.jsonl), error (stop and list them), "
                                         "split (cut a dense record into pieces of the same image, each with "
                                         "consecutive objects, so every object is trained).",
                                 ours="packing_overlong", choices=("drop", "error", "split"))
    # checkpoints, evaluation, logging
    save_strategy: str = _key("steps", "When to save checkpoints.", swift="save_strategy",
                              choices=("steps", "epoch", "no"))
    save_steps: int = _key(500, "Save every N optimizer steps (save_strategy steps).", swift="save_steps",
                           ge=1)
    save_delay_steps: int = _key(0, "No checkpoint before this optimizer step (early checkpoints of a long "
                                    "run are rarely useful).", ours="save_delay_steps", ge=0)
    save_total_limit: Optional[int] = _key(None, "Keep at most N checkpoints; null: all.",
                                           swift="save_total_limit", ge=1)
    save_only_model: bool = _key(False, "Checkpoints without optimizer state (cannot resume exactly).",
                                 swift="save_only_model")
    eval_strategy: Optional[str] = _key(None, "When to evaluate; null: as save_strategy (no when there is no "
                                              "validation set).", swift="eval_strategy",
                                        choices=("steps", "epoch", "no"))
    eval_steps: Optional[int] = _key(None, "Evaluate every N optimizer steps; null: save_steps.",
                                     swift="eval_steps", ge=1)
    logging_steps: int = _key(5, "Log every N optimizer steps.", swift="logging_steps", ge=1)
    log_data_order: bool = _key(False, "Write each rank's sample order of the first epoch to "
                                       "<output_dir>/data_order/rank<R>.json (diagnostics).",
                                ours="log_data_order")
    output_dir: Optional[str] = _key(None, "Run folder; null: output/<model name>.", swift="output_dir",
                                     path=True)
    add_version: bool = _key(True, "Put each run in a new <output_dir>/v<N>-<timestamp> subfolder.",
                             swift="add_version")
    run_name: Optional[str] = _key(None, "Run name for the loggers; null: output_dir.", swift="run_name")
    logging_dir: Optional[str] = _key(None, "TensorBoard folder; null: <output_dir>/runs.",
                                      swift="logging_dir", path=True)
    report_to: List[str] = _key(help="Loggers (tensorboard, wandb, swanlab, none).", swift="report_to",
                                factory=lambda: ["tensorboard"])
    resume_from_checkpoint: Optional[str] = _key(None, "Checkpoint folder to resume from.",
                                                 swift="resume_from_checkpoint", path=True)


@dataclass(frozen=True)
class DataSection:
    on_error: str = _key("raise", "Bad JSONL record: raise (stop at path:line) or skip (reported in "
                                  "skip_report_dir).", ours="on_error", choices=ON_ERROR_CHOICES)
    skip_report_dir: Optional[str] = _key(None, "Folder of the skip reports (train_skipped.jsonl, "
                                                "val_skipped.jsonl); required with on_error skip.",
                                          ours="skip_report_dir", path=True)
    check_images: bool = _key(True, "Check every image exists and has the recorded width / height.",
                              ours="check_images")
    dataset_num_proc: int = _key(1, "Processes for dataset preprocessing.", swift="dataset_num_proc", ge=1)
    length_cache_dir: Optional[str] = _key(".cache/swiftpack", "Cache of exact sample lengths for packing, "
                                                               "shared with analyze_token_lengths.py --cache_dir (keyed "
                                                               "by data bytes, tokenizer, options and code); null: no "
                                                               "cache.", ours="length_cache_dir", path=True)


@dataclass(frozen=True)
class TemplateSection:
    template: Optional[str] = _key(None, "ms-swift template; null: the model's default (qwen3_vl).",
                                   swift="template")
    max_pixels: Optional[int] = _key(None, "Resize images above this many pixels (786432 = 768 image "
                                           "tokens for Qwen3-VL; 1024 = one 32x32 token).",
                                     swift="max_pixels", ge=1024)
    max_length: Optional[int] = _key(None, "Longest sample in tokens (padding mode); null: the model's "
                                           "limit.", swift="max_length", ge=1)
    truncation_strategy: str = _key("delete", "Samples over max_length: delete (skipped by ms-swift), left, "
                                              "right.", swift="truncation_strategy",
                                    choices=("delete", "left", "right"))
    system: Optional[str] = _key(None, "System prompt; null: none (Qwen3-VL has no default).",
                                 swift="system")


@dataclass(frozen=True)
class DeepSpeedSection:
    config: Optional[str] = _key(None, "DeepSpeed JSON (e.g. configs/deepspeed/zero2.json) or an ms-swift "
                                       "preset (zero2, zero3, ...); null: plain DDP.", swift="deepspeed",
                                 path=True)


@dataclass(frozen=True)
class CoordTokensSection:
    enabled: bool = _key(False, ConversationOptions.__dataclass_fields__["coord_tokens"].metadata["help"],
                         ours="coord_tokens")
    skip_bbox_norm: bool = _key(False, "Only meaningful with coordinate tokens: NOT implemented, must be "
                                       "false.", ours="coord_tokens_skip_bbox_norm")


@dataclass(frozen=True)
class CoordOffsetSection:
    enabled: bool = _key(False, ConversationOptions.__dataclass_fields__["coord_offset"].metadata["help"],
                         ours="coord_offset")


@dataclass(frozen=True)
class CustomSection:
    train_jsonl: Optional[str] = _key(help="Training JSONL (LVIS polygon records, swift_plugins.data).",
                                      ours="train_jsonl", path=True, required=True)
    val_jsonl: Optional[str] = _key(None, "Validation JSONL; null: no evaluation.", ours="val_jsonl",
                                    path=True)
    prompt: Optional[str] = _conversation_key("prompt", ours="prompt")
    object_ordering: str = _conversation_key("object_ordering", ours="object_ordering")
    emit_norm: str = _conversation_key("emit_norm", ours="emit_norm")
    seed: int = _conversation_key("seed", ours="conversation_seed")
    coord_tokens: CoordTokensSection = field(default_factory=CoordTokensSection)
    coord_offset: CoordOffsetSection = field(default_factory=CoordOffsetSection)


@dataclass(frozen=True)
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    tuner: TunerSection = field(default_factory=TunerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    data: DataSection = field(default_factory=DataSection)
    template: TemplateSection = field(default_factory=TemplateSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    custom: CustomSection = field(default_factory=CustomSection)
    # Any other ms-swift argument, passed through unchanged (ms-swift checks the names at launch).
    swift: Dict[str, Any] = field(default_factory=dict)


SECTION_HELP = {
    "model": "which model and how it is loaded",
    "tuner": "LoRA / DoRA / full fine-tuning and what is frozen",
    "training": "optimizer, batch, packing, checkpoints, logging",
    "data": "how the JSONL files are read",
    "template": "prompt template and image resolution",
    "deepspeed": "DeepSpeed ZeRO",
    "custom": "the dataset files and how a record becomes a conversation",
    "swift": "any other ms-swift argument, passed through unchanged (checked by ms-swift at launch)",
}

# ms-swift arguments the schema owns (or that must not be used): `swift:` cannot set them.
RESERVED_SWIFT_KEYS = {
    "packing": "ms-swift's own packing encodes every sample up front; use training.packing",
    "packing_length": "ms-swift's own packing; use training.global_max_length",
    "packing_num_proc": "ms-swift's own packing; use training.packing",
    "train_type": "train_type is gone in ms-swift 4.x; use tuner.tuner_type",
    "dataset": "set custom.train_jsonl",
    "val_dataset": "set custom.val_jsonl",
    "callbacks": "swift_plugins sets the callbacks",
}
PRESET_DEEPSPEED = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


# ------------------------------------------------------------------------------ schema walking
@dataclass(frozen=True)
class Leaf:
    """One settable key: ``path`` ('training', 'learning_rate'), its field and resolved type."""
    path: Tuple[str, ...]
    field: dataclasses.Field
    type: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is MISSING else f.default

    @property
    def optional(self) -> bool:
        return _unwrap(self.type)[1]

    @property
    def base(self) -> Any:
        return _unwrap(self.type)[0]

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.base) in (list, List)

    def type_name(self) -> str:
        name = f"list[{_NAMES[typing.get_args(self.base)[0]]}]" if self.is_list else _NAMES[self.base]
        return f"{name} | null" if self.optional and not self.meta["required"] else name


_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


def _unwrap(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _walk(cls: type, prefix: Tuple[str, ...] = ()) -> List[Leaf]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            out += _walk(tp, prefix + (f.name,))
        elif f.name != "swift" or prefix:
            out.append(Leaf(prefix + (f.name,), f, tp))
    return out


SCHEMA_LEAVES: Tuple[Leaf, ...] = tuple(_walk(Config))
_LEAF_BY_PATH = {leaf.path: leaf for leaf in SCHEMA_LEAVES}
_NODE_TYPES: Dict[Tuple[str, ...], type] = {}


def _collect_nodes(cls: type, prefix: Tuple[str, ...] = ()) -> None:
    _NODE_TYPES[prefix] = cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(hints[f.name]):
            _collect_nodes(hints[f.name], prefix + (f.name,))


_collect_nodes(Config)


def _children(node: Tuple[str, ...]) -> List[str]:
    return [f.name for f in dataclasses.fields(_NODE_TYPES[node])]


# --------------------------------------------------------------------------------------- issues
@dataclass(frozen=True)
class Issue:
    """``str(issue) == "<source>: <key>: <message>"`` (``"<source>: <message>"`` without a key)."""
    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"


class ConfigError(ValueError):
    """All problems of a config at once; ``str`` is one issue per line."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(map(str, self.issues)))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, default=str)


def _type_word(value: Any) -> str:
    return {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


def _suggest(word: str, candidates: Iterable[str]) -> Optional[str]:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_key_issue(source: str, path: Tuple[str, ...], *, flag: bool = False) -> Issue:
    """``configs/x.yaml: training.learnign_rate: unknown key (did you mean 'learning_rate'?)``.

    A name that exists in another section is suggested with its section ('template.max_pixels').
    With ``flag`` (command line) suggestions are full flags ('--training.learning_rate').
    """
    parent, name = path[:-1], path[-1]
    kind = "section" if not parent else "key"
    hint = None
    if parent in _NODE_TYPES:
        same = _suggest(name, _children(parent))
        if same is not None:
            hint = ".".join(parent + (same,)) if flag else same
    if hint is None:
        elsewhere = [leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == name and leaf.path[:-1] != parent]
        if elsewhere:
            hint = elsewhere[0]
    if hint is None and parent in _NODE_TYPES and parent:
        other = _suggest(name, [leaf.path[-1] for leaf in SCHEMA_LEAVES])
        if other is not None:
            hint = next(leaf.dotted for leaf in SCHEMA_LEAVES if leaf.path[-1] == other)
    message = f"unknown {kind}"
    if hint is not None:
        message += f" (did you mean '--{hint}'?)" if flag else f" (did you mean '{hint}'?)"
    return Issue(source, ".".join(path), message)


# --------------------------------------------------------------------------- value conversion
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _check_value(leaf: Leaf, value: Any) -> Tuple[Any, Optional[str]]:
    """YAML value -> (typed value, problem). ``1e-4`` is a str to YAML 1.1; floats accept it."""
    if value is None:
        return (None, None) if leaf.optional else (None, f"expected {leaf.type_name()}, got null")
    base = leaf.base
    if leaf.is_list:
        item = typing.get_args(base)[0]
        if isinstance(value, str):  # `target_modules: all-linear`, as ms-swift's YAML allows
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            return None, f"expected {leaf.type_name()}, got {_type_word(value)} {_show(value)}"
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
        return None, f"expected {leaf.type_name()}, got {_type_word(value)} {_show(value)}"
    return value, None


def _parse_tokens(leaf: Leaf, tokens: Sequence[str]) -> Tuple[Any, Optional[str]]:
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


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _range_problem(leaf: Leaf, value: Any) -> Optional[str]:
    meta = leaf.meta
    choices = meta["choices"]
    if choices is not None and value is not None and value not in choices:
        message = f"{_show(value)} is not one of {', '.join(map(_show, choices))}"
        close = _suggest(value, choices) if isinstance(value, str) else None
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
    return "must be " + " and ".join(f"{op} {_fmt_num(b)}" for op, b in bounds) + f", got {_fmt_num(value)}"


# ------------------------------------------------------------------------------- YAML loading
def _read_yaml(label: str) -> Tuple[Optional[dict], List[Issue]]:
    try:
        with open(label, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        return None, [Issue(label, "", "file not found")]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        return None, [Issue(label, "", f"invalid YAML{where}: {problem}")]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, [Issue(label, "", f"expected a mapping of sections at the top level, got {_type_word(data)}")]
    return data, []


def _load_chain(path: str) -> Tuple[List[Tuple[str, dict]], List[Issue]]:
    """Layers root-first: [(label, data-without-extends)]. ``extends`` is relative to its file."""
    chain: List[Tuple[str, dict]] = []
    labels: List[str] = []
    real: List[str] = []
    label = os.path.normpath(path)
    while True:
        data, issues = _read_yaml(label)
        if data is None:
            if chain:  # the parent named by `extends` is missing or broken
                child = labels[-1]
                if issues[0].message == "file not found":
                    return [], [Issue(child, "extends", f"file not found: {label}")]
            return [], issues
        labels.append(label)
        real.append(os.path.realpath(label))
        parent = data.pop("extends", None)
        chain.append((label, data))
        if parent is None:
            break
        if not isinstance(parent, str) or not parent:
            return [], [Issue(label, "extends", f"expected a file name (str), got {_type_word(parent)} "
                                                f"{_show(parent)}")]
        parent_label = os.path.normpath(os.path.join(os.path.dirname(label), parent))
        if os.path.realpath(parent_label) in real:
            start = real.index(os.path.realpath(parent_label))
            cycle = " -> ".join(labels[start:] + [parent_label])
            return [], [Issue(labels[start], "extends", f"cycle: {cycle}")]
        label = parent_label
    chain.reverse()
    return chain, []


Merged = Dict[Tuple[str, ...], Tuple[Any, str]]  # path -> (raw value, source label)


def _merge_layer(label: str, data: Mapping, node: Tuple[str, ...], merged: Merged, swift: Merged,
                 issues: List[Issue]) -> None:
    """Leaf-by-leaf merge: a later layer replaces single keys, nested sections merge key by key."""
    for key, value in data.items():
        path = node + (str(key),)
        if not isinstance(key, str):
            issues.append(Issue(label, ".".join(map(str, path)), "keys must be strings"))
            continue
        if path == ("swift",):
            if value is None:
                continue
            if not isinstance(value, dict):
                issues.append(Issue(label, "swift", f"expected a mapping of ms-swift arguments, got "
                                                    f"{_type_word(value)} {_show(value)}"))
                continue
            for name, raw in value.items():
                swift[("swift", str(name))] = (raw, label)
            continue
        if path in _NODE_TYPES:
            if value is None:
                continue
            if not isinstance(value, dict):
                issues.append(Issue(label, ".".join(path), f"expected a mapping (section), got "
                                                           f"{_type_word(value)} {_show(value)}"))
                continue
            _merge_layer(label, value, path, merged, swift, issues)
        elif path in _LEAF_BY_PATH:
            merged[path] = (value, label)
        else:
            issues.append(_unknown_key_issue(label, path))


# ---------------------------------------------------------------------------------- the result
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

    def value(self, dotted: str) -> Any:
        obj: Any = self.config
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj


def resolve_world_size(flag: Optional[int], environ: Mapping[str, str]) -> Tuple[int, str]:
    """``--world_size`` (previews) beats torchrun's ``WORLD_SIZE``; neither: 1."""
    if flag is not None:
        return flag, "--world_size"
    raw = environ.get("WORLD_SIZE")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError([Issue("environment", "WORLD_SIZE", f"expected a positive int, got {raw!r}")])
        if value < 1:
            raise ConfigError([Issue("environment", "WORLD_SIZE", f"expected a positive int, got {raw!r}")])
        return value, "WORLD_SIZE"
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


def _cross_checks(cfg: Dict[str, Any], src: Dict[str, str], bad: set, top: str, world_size: int,
                  swift: Merged) -> Tuple[List[Issue], Optional[int], str]:
    """Conflicts between keys; keys with a type problem are left out (already reported)."""
    issues: List[Issue] = []

    def ok(*keys: str) -> bool:
        return not any(k in bad for k in keys)

    def source(key: str) -> str:
        return src.get(key, "default") if src.get(key, "default") != "default" else top

    def t(key: str) -> Any:
        return cfg[f"training.{key}"]

    if ok("training.packing", "training.per_device_train_batch_size") and t("packing") \
            and t("per_device_train_batch_size") != 1:
        issues.append(Issue(source("training.per_device_train_batch_size"), "training.per_device_train_batch_size",
                            f"must be 1 with training.packing true (each device batch is one pack of many "
                            f"samples), got {t('per_device_train_batch_size')}"))
    if ok("training.packing", "training.global_max_length") and t("packing") and t("global_max_length") is None:
        issues.append(Issue(source("training.packing"), "training.global_max_length",
                            "required with training.packing true (tokens per pack, e.g. 20000)"))
    if ok("training.packing", "template.template") and t("packing") \
            and cfg["template.template"] not in (None, "qwen3_vl", PACKING_TEMPLATE):
        issues.append(Issue(source("template.template"), "template.template",
                            f"{cfg['template.template']!r} cannot pack: training.packing uses {PACKING_TEMPLATE!r} "
                            f"(Qwen3-VL with isolated samples); set template.template: null"))
    if ok("training.packing", "training.eval_packing") and t("eval_packing") and not t("packing"):
        issues.append(Issue(source("training.eval_packing"), "training.eval_packing",
                            "needs training.packing true (or set eval_packing false)"))
    if ok("training.optimizer", "training.vit_lr", "training.aligner_lr") and t("optimizer") != "multimodal":
        for key in ("vit_lr", "aligner_lr"):
            if t(key) is not None:
                issues.append(Issue(source(f"training.{key}"), f"training.{key}",
                                    f"only used by training.optimizer multimodal (optimizer is "
                                    f"{_show(t('optimizer'))})"))
    if ok("tuner.tuner_type", "tuner.use_dora") and cfg["tuner.use_dora"] and cfg["tuner.tuner_type"] != "lora":
        issues.append(Issue(source("tuner.use_dora"), "tuner.use_dora",
                            f"needs tuner.tuner_type lora (tuner_type is {_show(cfg['tuner.tuner_type'])})"))
    if ok("model.attn_impl", "model.torch_dtype") and (cfg["model.attn_impl"] or "").startswith("flash") \
            and cfg["model.torch_dtype"] not in ("bfloat16", "float16"):
        issues.append(Issue(source("model.attn_impl"), "model.attn_impl",
                            f"{cfg['model.attn_impl']} needs model.torch_dtype bfloat16 or float16 (got "
                            f"{_show(cfg['model.torch_dtype'])})"))
    for key in ("custom.coord_tokens.enabled", "custom.coord_tokens.skip_bbox_norm", "custom.coord_offset.enabled"):
        if ok(key) and cfg[key]:
            issues.append(Issue(source(key), key, "true is not implemented (coordinates are emitted as numeric "
                                                  "text); set false"))
    if ok("data.on_error", "data.skip_report_dir") and cfg["data.on_error"] == "skip" \
            and cfg["data.skip_report_dir"] is None:
        issues.append(Issue(source("data.on_error"), "data.skip_report_dir",
                            "required with data.on_error skip (every skipped record is reported there)"))
    if ok("deepspeed.config"):
        ds = cfg["deepspeed.config"]
        if ds is not None and ds not in PRESET_DEEPSPEED and not ds.endswith(".json"):
            issues.append(Issue(source("deepspeed.config"), "deepspeed.config",
                                f"expected a .json file or one of {', '.join(PRESET_DEEPSPEED)}, got {_show(ds)}"))
    for (_, name), (_, label) in swift.items():
        if name in RESERVED_SWIFT_KEYS:
            issues.append(Issue(label, f"swift.{name}", RESERVED_SWIFT_KEYS[name]))
        else:
            owner = next((leaf for leaf in SCHEMA_LEAVES if leaf.meta["name"] == name
                          and leaf.meta["target"] == SWIFT), None)
            if owner is not None:
                issues.append(Issue(label, f"swift.{name}", f"set by {owner.dotted}; use that key"))

    # effective batch -> gradient accumulation
    gas, gas_source = None, ""
    keys = ("training.effective_batch_size", "training.gradient_accumulation_steps",
            "training.per_device_train_batch_size")
    if ok(*keys):
        effective, explicit = t("effective_batch_size"), t("gradient_accumulation_steps")
        per_device = t("per_device_train_batch_size")
        if effective is not None and explicit is not None:
            issues.append(Issue(source("training.gradient_accumulation_steps"),
                                "training.gradient_accumulation_steps",
                                f"set either training.effective_batch_size ({effective}) or "
                                f"training.gradient_accumulation_steps ({explicit}), not both (null one of them)"))
        elif effective is None and explicit is None:
            issues.append(Issue(top, "training.effective_batch_size",
                                "required (or set training.gradient_accumulation_steps); ms-swift's silent "
                                "default is 16"))
        elif explicit is not None:
            gas, gas_source = explicit, source("training.gradient_accumulation_steps")
        else:
            problem = _grad_accum_issue(source("training.effective_batch_size"), effective, per_device, world_size)
            if problem is not None:
                issues.append(problem)
            else:
                gas = effective // (per_device * world_size)
                gas_source = f"derived: {effective} / ({per_device} x {world_size})"
    return issues, gas, gas_source


def _build(cls: type, values: Dict[Tuple[str, ...], Any], prefix: Tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _build(hints[f.name], values, prefix + (f.name,)) if _is_section(hints[f.name])
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
    for label, data in chain:
        _merge_layer(label, data, (), merged, swift, issues)

    bad: set = set()
    cli = "command line"
    for dotted, tokens in overrides:
        parts = tuple(dotted.split("."))
        if parts[0] == "swift" and len(parts) == 2:
            swift[parts] = (_swift_token_value(tokens), cli)
            continue
        leaf = _LEAF_BY_PATH.get(parts)
        if leaf is None:
            if parts in _NODE_TYPES:
                issues.append(Issue(cli, dotted, f"is a section; set one of its keys: "
                                                 f"{', '.join('--' + dotted + '.' + c for c in _children(parts))}"))
            else:
                issues.append(_unknown_key_issue(cli, parts, flag=True))
            continue
        value, problem = _parse_tokens(leaf, tokens)
        if problem is not None:
            issues.append(Issue(cli, dotted, problem))
            bad.add(dotted)
            merged.pop(parts, None)
            continue
        merged[parts] = (value, cli)

    values: Dict[Tuple[str, ...], Any] = {}
    sources: Dict[str, str] = {}
    for leaf in SCHEMA_LEAVES:
        if leaf.path in merged:
            raw, label = merged[leaf.path]
            value, problem = _check_value(leaf, raw)
            if problem is None:
                problem = _range_problem(leaf, value)
            if problem is not None:
                issues.append(Issue(label, leaf.dotted, problem))
                bad.add(leaf.dotted)
                value = leaf.default
            sources[leaf.dotted] = label
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
    values[("swift",)] = {name: raw for (_, name), (raw, _) in swift.items()}
    for (_, name), (_, label) in swift.items():
        sources[f"swift.{name}"] = label

    flat = {".".join(p): v for p, v in values.items()}
    more, gas, gas_source = _cross_checks(flat, sources, bad, top, world_size, swift)
    issues += more
    if issues:
        raise ConfigError(issues)
    return ResolvedConfig(config=_build(Config, values), sources=sources, files=tuple(label for label, _ in chain),
                          world_size=world_size, world_size_source=world_size_source,
                          gradient_accumulation_steps=gas, gradient_accumulation_source=gas_source)


def _swift_token_value(tokens: Sequence[str]) -> Any:
    """``--swift.KEY v`` -> YAML scalar of v; several tokens -> list of str (as ms-swift's CLI)."""
    if len(tokens) == 1:
        return yaml.safe_load(tokens[0])
    return list(tokens)


# ------------------------------------------------------------------------------ command line
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
                close = _suggest(name, [leaf.path[-1] for leaf in SCHEMA_LEAVES] + [f[2:] for f in CLI_FLAGS])
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


# --------------------------------------------------------------------------------- rendering
def _yaml_scalar(value: Any) -> str:
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
        lines.append("  " * len(parent) + f"{leaf.path[-1]}: {_yaml_scalar(value)}  # "
                     f"{resolved.sources[leaf.dotted]}")
    swift = resolved.config.swift
    if swift:
        lines.append("swift:")
        for name, value in swift.items():
            lines.append(f"  {name}: {_yaml_scalar(value)}  # {resolved.sources['swift.' + name]}")
    else:
        lines.append("swift: {}")
    lines.append(f"# derived (world_size {resolved.world_size} from {resolved.world_size_source}):")
    lines.append(f"#   gradient_accumulation_steps: {resolved.gradient_accumulation_steps}  "
                 f"({resolved.gradient_accumulation_source})")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- runtime options
def _runtime_fields() -> List[Tuple[str, Any, Any]]:
    out = [(leaf.meta["name"], leaf.type, leaf.default) for leaf in SCHEMA_LEAVES if leaf.meta["target"] == OURS]
    assert len({name for name, _, _ in out}) == len(out), "runtime option names must be unique"
    return out


# Our keys as one flat, frozen dataclass: what the entry point's args carry as swiftpack_<name>
# fields and what a sidecar JSON holds. Generated from the schema (one source of truth).
RuntimeOptions = dataclasses.make_dataclass(
    "RuntimeOptions", [(name, tp, field(default=default)) for name, tp, default in _runtime_fields()],
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


def load_sidecar(path: str) -> Tuple[Any, int]:
    """Sidecar JSON written by :func:`export_flat` -> (RuntimeOptions, world size it was exported for)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path}: not a swift_plugins sidecar (format {data.get('format')!r}, expected "
                         f"{SIDECAR_FORMAT!r}); re-export it with --export_flat")
    names = {f.name for f in dataclasses.fields(RuntimeOptions)}
    unknown = sorted(set(data["options"]) - names)
    missing = sorted(names - set(data["options"]))
    if unknown or missing:
        raise ValueError(f"{path}: options do not match this swift_plugins version (unknown: {unknown}, missing: "
                         f"{missing}); re-export it with --export_flat")
    return RuntimeOptions(**data["options"]), int(data["world_size"])


# ---------------------------------------------------------------------------- flattening
def flat_swift_args(resolved: ResolvedConfig, *, with_runtime_fields: bool = False) -> Dict[str, Any]:
    """ms-swift arguments (name -> YAML value) for ``swift sft``; None values are left out.

    Always explicit: ``tuner_type``, ``check_model``, ``gradient_accumulation_steps``. Our keys are
    not here (ms-swift rejects unknown arguments) unless ``with_runtime_fields`` (entry point args:
    ``swiftpack_<name>`` fields of :class:`swift_plugins.sft_pipeline.SwiftpackSftArguments`).
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
    if cfg.training.packing:  # the packing template isolates packed samples (swift_plugins.template)
        out["template"] = PACKING_TEMPLATE
        # fresh dataloader workers each epoch see the epoch's pack order (persistent ones would not)
        out["dataloader_persistent_workers"] = False
    out["dataset"] = [cfg.custom.train_jsonl]
    if cfg.custom.val_jsonl is not None:
        out["val_dataset"] = [cfg.custom.val_jsonl]
    options = runtime_options(resolved)
    callbacks = []
    if options.save_delay_steps > 0:
        callbacks.append(CALLBACK_SAVE_DELAY)
    if options.log_data_order:
        callbacks.append(CALLBACK_DATA_ORDER)
    if callbacks:
        out["callbacks"] = callbacks
    for name, value in cfg.swift.items():
        out[name] = value
    if with_runtime_fields:
        for f in dataclasses.fields(options):
            value = getattr(options, f.name)
            if value is not None:
                out[f"swiftpack_{f.name}"] = value
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
    body = yaml.safe_dump(args, sort_keys=False, allow_unicode=True, width=10 ** 6)
    sidecar_data = {"format": SIDECAR_FORMAT, "source_config": resolved.files[-1],
                    "world_size": resolved.world_size, "options": dataclasses.asdict(options)}
    plugin_text = (f'"""Generated by swift_plugins.config.export_flat for {base}; do not edit (re-export).\n\n'
                   f"ms-swift imports this file (external_plugins); it registers swift_plugins' options\n"
                   f'from the sidecar JSON next to it, nothing else."""\n'
                   f"from swift_plugins.sft_pipeline import register_sidecar\n\n"
                   f"register_sidecar({json.dumps(sidecar)})\n")
    atomic_write_text(sidecar, json.dumps(sidecar_data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(plugin, plugin_text)
    atomic_write_text(out_yaml, "\n".join(header) + "\n" + body)
    return ExportedFiles(flat_yaml=out_yaml, sidecar_json=sidecar, plugin_py=plugin)


def missing_paths(resolved: ResolvedConfig) -> List[Issue]:
    """Inputs that must exist before a run (model, JSONL files, DeepSpeed JSON, resume checkpoint)."""
    issues = []
    for dotted in ("model.model", "custom.train_jsonl", "custom.val_jsonl", "deepspeed.config",
                   "training.resume_from_checkpoint"):
        value = resolved.value(dotted)
        if value is None or (dotted == "deepspeed.config" and value in PRESET_DEEPSPEED):
            continue
        if not os.path.exists(value):
            issues.append(Issue(resolved.sources[dotted], dotted, f"{value}: no such file or directory (paths are "
                                                                  f"relative to the working directory "
                                                                  f"{os.getcwd()})"))
    return issues


# ------------------------------------------------------------------------------------- docs
def _range_text(leaf: Leaf) -> str:
    meta = leaf.meta
    if meta["choices"] is not None:
        return " \\| ".join(str(c) for c in meta["choices"])
    parts = [f"{op} {_fmt_num(meta[name])}" for op, name in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt"))
             if meta[name] is not None]
    return ", ".join(parts)


def _target_text(leaf: Leaf) -> str:
    meta = leaf.meta
    if meta["target"] == SWIFT:
        return f"`--{meta['name']}`"
    if meta["target"] == OURS:
        return f"ours: `swiftpack_{meta['name']}`"
    return "derives gradient_accumulation_steps"


def schema_markdown() -> str:
    """The schema as Markdown tables, one per section (docs/configuration.md embeds it)."""
    out = []
    section = None
    for leaf in SCHEMA_LEAVES:
        if leaf.path[0] != section:
            section = leaf.path[0]
            out += ["", f"### `{section}`: {SECTION_HELP[section]}", "",
                    "| key | type | default | allowed | goes to | help |", "|---|---|---|---|---|---|"]
        default = "**required**" if leaf.meta["required"] else f"`{_yaml_scalar(leaf.default)}`"
        help_text = leaf.meta["help"].replace("|", "\\|")
        out.append(f"| `{'.'.join(leaf.path[1:])}` | {leaf.type_name().replace('|', chr(92) + '|')} | {default} | "
                   f"{_range_text(leaf)} | {_target_text(leaf)} | {help_text} |")
    out += ["", f"### `swift`: {SECTION_HELP['swift']}", "",
            "A mapping `name: value` of further ms-swift 4.6 arguments. Not allowed: arguments the schema sets "
            "(use the schema key) and " + ", ".join(f"`{k}`" for k in sorted(RESERVED_SWIFT_KEYS)) + "."]
    return "\n".join(out).strip() + "\n"


DOC_BEGIN = "<!-- schema:begin (generated by `python -m swift_plugins.config --update-docs docs/configuration.md`) -->"
DOC_END = "<!-- schema:end -->"


def update_docs(text: str) -> str:
    """``text`` with the region between the schema markers replaced by :func:`schema_markdown`."""
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    return text[:start] + "\n" + schema_markdown() + text[end:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m swift_plugins.config --update-docs docs/configuration.md``: regenerate the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "--update-docs":
        print("usage: python -m swift_plugins.config --update-docs docs/configuration.md", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    atomic_write_text(argv[1], update_docs(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
