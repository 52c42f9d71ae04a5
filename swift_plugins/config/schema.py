"""The config schema: every key a user can write, with its type, default, choices, range, help and target.

Sections are frozen dataclasses; each field's metadata says where its value goes::

    _key(..., swift="learning_rate")   an ms-swift argument (--learning_rate)
    _key(..., ours="packing")          one of our runtime options (RuntimeOptions.packing)
    _key(..., config_only=True)        used while resolving only (effective_batch_size)

``SCHEMA_LEAVES`` walks the sections once; resolution, the CLI, rendering, export and the
generated table in ``docs/configuration.md`` all read it, so no key is typed twice. Choice lists
come from the code that implements them (strategies from the planner, overlong policies, the
validator's on_error, conversation options from ``ConversationOptions``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from swift_plugins.data.conversation import ConversationOptions
from swift_plugins.data.records import ON_ERROR_CHOICES, RECORD_FORMATS
from swift_plugins.names import VARLEN_ATTENTION
from swift_plugins.packing.planner import DEFAULT_STRATEGY, OVERLONG_CHOICES, STRATEGIES

__all__ = ["ATTN_IMPLS", "CONFIG", "Config", "Leaf", "NODE_TYPES", "OURS", "PRESET_DEEPSPEED", "RESERVED_SWIFT_KEYS",
           "SCHEMA_LEAVES", "SECTION_HELP", "SWIFT", "children", "is_section", "leaf_by_path"]

# Attention implementations a config may name (ms-swift passes the name to transformers).
ATTN_IMPLS = ("sdpa", "eager", VARLEN_ATTENTION, "flash_attn", "flash_attention_2", "flash_attention_3")

# Where a value goes. SWIFT: an ms-swift argument (metadata "swift" names it). OURS: a runtime
# option (metadata "ours" names it: a RuntimeOptions field / a sidecar entry).
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


@dataclass(frozen=True)
class ModelSection:
    model: Optional[str] = _key(help="Local model directory (relative to the working directory) or hub id.",
                                swift="model", path=True, required=True)
    model_type: Optional[str] = _key(None, "ms-swift model type; null: the model family's, from model.model's "
                                           "config.json model_type (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe).",
                                     swift="model_type")
    torch_dtype: Optional[str] = _key(None, "Weights / compute dtype; null: the model's config. bfloat16 also "
                                            "turns on bf16 mixed precision.", swift="torch_dtype",
                                      choices=("bfloat16", "float16", "float32"))
    attn_impl: Optional[str] = _key(None, "Attention kernel; flash_attn needs flash-attn (GPU) and a 16-bit "
                                          "torch_dtype; sdpa runs everywhere.", swift="attn_impl",
                                    choices=ATTN_IMPLS)
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
    fused_loss: bool = _key(True, "Loss without the (L, vocab) logits: lm_head + cross-entropy a chunk of tokens "
                                  "at a time, the same loss, gradients and token_acc (liger-kernel on CUDA when "
                                  "installed). Sets ms-swift's loss_type; false: transformers' full logits.",
                            ours="fused_loss")
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
    packing_strategy: str = _key(DEFAULT_STRATEGY, "ffd: first-fit decreasing; bfd: best-fit decreasing (both "
                                                   "near the fewest packs; ffd is faster at this size); greedy: by "
                                                   "length descending, next-fit; next_fit: data order, one open "
                                                   "pack; random: seeded shuffle, then next-fit.",
                                 ours="packing_strategy", choices=STRATEGIES)
    packing_seed: Optional[int] = _key(None, "Seed of the packing plan (random strategy, order of the packs); "
                                             "null: training.seed.", ours="packing_seed")
    packing_overlong: str = _key("drop", "Samples longer than global_max_length: drop (listed in "
                                         "<output_dir>/packing/dropped_samples.jsonl), error (stop and list them), "
                                         "split (cut a dense detection record into pieces of the same image, "
                                         "each with consecutive objects, so every object is trained; a messages "
                                         "row cannot be cut and is dropped and listed).",
                                 ours="packing_overlong", choices=OVERLONG_CHOICES)
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
    check_images: bool = _key(True, "Check every image exists, has the recorded width / height (LVIS "
                                    "records; a messages row's image headers are always read: its sizes come from "
                                    "them) and decodes (a corrupt file is a bad record, not a training crash).",
                              ours="check_images")
    record_format: str = _key("auto", "Kind of the records in custom.train_jsonl / val_jsonl: lvis (detection "
                                      "records), messages (ms-swift's messages rows), auto (each record by its keys: "
                                      "'messages' -> messages, 'width' / 'height' / 'objects' -> lvis).",
                              ours="record_format", choices=RECORD_FORMATS)
    dataset_num_proc: int = _key(1, "Processes for dataset preprocessing.", swift="dataset_num_proc", ge=1)
    length_cache_dir: Optional[str] = _key(".cache/swiftpack", "Cache of exact sample lengths for packing, "
                                                               "shared with analyze_token_lengths.py --cache_dir (keyed "
                                                               "by data bytes, tokenizer, options and code); null: no "
                                                               "cache.", ours="length_cache_dir", path=True)


@dataclass(frozen=True)
class TemplateSection:
    template: Optional[str] = _key(None, "ms-swift template; null: the model family's (qwen2_vl, qwen2_5_vl or "
                                         "qwen3_vl; with training.packing its packing subclass).", swift="template")
    max_pixels: Optional[int] = _key(None, "Resize images above this many pixels (786432 = 768 image "
                                           "tokens for Qwen3-VL; 1024 = one 32x32 token).",
                                     swift="max_pixels", ge=1024)
    max_length: Optional[int] = _key(None, "Longest sample in tokens (padding mode); null: the model's "
                                           "limit.", swift="max_length", ge=1)
    truncation_strategy: str = _key("delete", "Samples over max_length: delete (skipped by ms-swift), left, "
                                              "right.", swift="truncation_strategy",
                                    choices=("delete", "left", "right"))
    system: Optional[str] = _key(None, "System prompt; null: the template's default (Qwen2-VL / Qwen2.5-VL: 'You are "
                                       "a helpful assistant.'; Qwen3-VL: none).",
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
    train_jsonl: Optional[List[str]] = _key(help="Training JSONL file(s): LVIS detection records and / or "
                                                 "ms-swift messages rows (data.record_format), one path or a "
                                                 "list.",
                                            ours="train_jsonl", path=True, required=True)
    val_jsonl: Optional[List[str]] = _key(None, "Validation JSONL file(s), one path or a list; null: no "
                                                "evaluation.", ours="val_jsonl", path=True)
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
    "train_dataloader_shuffle": "with training.packing the packs are already in the dealt order (swift_plugins sets "
                                "false); without it ms-swift's shuffle stays on",
}
PRESET_DEEPSPEED = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


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


def is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _walk(cls: type, prefix: Tuple[str, ...] = ()) -> List[Leaf]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            out += _walk(tp, prefix + (f.name,))
        elif f.name != "swift" or prefix:
            out.append(Leaf(prefix + (f.name,), f, tp))
    return out


SCHEMA_LEAVES: Tuple[Leaf, ...] = tuple(_walk(Config))
_LEAF_BY_PATH = {leaf.path: leaf for leaf in SCHEMA_LEAVES}


def leaf_by_path(path: Tuple[str, ...]) -> Optional[Leaf]:
    return _LEAF_BY_PATH.get(path)
NODE_TYPES: Dict[Tuple[str, ...], type] = {}


def _collect_nodes(cls: type, prefix: Tuple[str, ...] = ()) -> None:
    NODE_TYPES[prefix] = cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_section(hints[f.name]):
            _collect_nodes(hints[f.name], prefix + (f.name,))


_collect_nodes(Config)


def children(node: Tuple[str, ...]) -> List[str]:
    return [f.name for f in dataclasses.fields(NODE_TYPES[node])]


