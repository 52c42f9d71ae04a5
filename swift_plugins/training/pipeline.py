"""The ms-swift side of the entry point (imports torch + ms-swift; ``swift_plugins.sft`` stays light).

Two ways our keys reach a run, the same registrations in both::

    python -m swift_plugins.sft --config X          swift sft OUT.yaml  (from --export_flat)
      resolve_config -> run_resolved                  ms-swift imports swiftpack_options_OUT.py
        register_all()                                  register_plugins(sidecar=OUT.swiftpack.json)
        register_runtime(options)                         register_all(); register_sidecar(...)
        SwiftpackSft(argv with swiftpack_* fields)          register_runtime(options)
          _post_process_datasets -> packing                 install_packing_hook(options) -> SwiftSft

``register_runtime``: what depends on the run's options: the JSONL datasets
(``training.datasets.register_jsonl`` with the custom.* conversation options) and the save delay.
Packing plugs in at exactly one place, :func:`packing_post_process`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, List, Mapping, Optional, Union

from swift.arguments import SftArguments
from swift.pipelines.train.sft import SwiftSft

from swift_plugins.config.export import RuntimeOptions, flat_swift_args, load_sidecar, runtime_options, swift_argv
from swift_plugins.config.resolve import ResolvedConfig, world_size_from_env
from swift_plugins.config.values import Issue
from swift_plugins.errors import UserError
from swift_plugins.names import FIELD_PREFIX

__all__ = ["SwiftpackSft", "SwiftpackSftArguments", "device_issues", "install_packing_hook", "options_from_args",
           "packing_post_process", "register_runtime", "register_sidecar", "run_resolved"]

# ms-swift's SftArguments plus one typed field per runtime option (swiftpack_packing,
# swiftpack_global_max_length, ...), generated from the schema (type, default, help) so they cannot drift.
SwiftpackSftArguments = dataclasses.make_dataclass(
    "SwiftpackSftArguments",
    [(FIELD_PREFIX + f.name, f.type, dataclasses.field(default=f.default, metadata={"help": f.metadata["help"]}))
     for f in dataclasses.fields(RuntimeOptions)],
    bases=(SftArguments,))
SwiftpackSftArguments.__module__ = __name__
SwiftpackSftArguments.__doc__ = "SftArguments + swift_plugins' options as swiftpack_<name> fields."


def options_from_args(args: Any) -> RuntimeOptions:
    """The :class:`RuntimeOptions` carried by a :class:`SwiftpackSftArguments`."""
    return RuntimeOptions(**{f.name: getattr(args, FIELD_PREFIX + f.name) for f in dataclasses.fields(RuntimeOptions)})


def register_runtime(options: RuntimeOptions) -> List[str]:
    """Register with ms-swift what this run's ``options`` decide; returns the registered dataset paths."""
    from swift_plugins.training.callbacks import register_save_delay
    from swift_plugins.training.datasets import register_jsonl

    register_save_delay(options.save_delay_steps)
    if not options.fused_loss:  # with it, the loss itself logs its path when ms-swift builds it
        from swift.utils import get_logger

        from swift_plugins.training.fused_loss import loss_path_line

        get_logger().info(loss_path_line("cpu", fused=False))
    conversation = options.conversation_options()
    registered = []
    for split, paths in (("train", options.train_jsonl), ("val", options.val_jsonl)):
        for path, report in zip(paths or [], skip_reports(options.skip_report_dir, split, paths or [])):
            registered += register_jsonl(path, conversation, options.on_error,
                                         report_path=report if options.on_error == "skip" else None,
                                         check_images=options.check_images, record_format=options.record_format)
    return registered


def skip_reports(folder: Optional[str], split: str, paths: List[str]) -> List[Optional[str]]:
    """``<folder>/train_skipped.jsonl`` for one file; ``train_<k>_<stem>_skipped.jsonl`` for several."""
    if folder is None:
        return [None] * len(paths)
    if len(paths) == 1:
        return [os.path.join(folder, f"{split}_skipped.jsonl")]
    return [os.path.join(folder, f"{split}_{k}_{os.path.splitext(os.path.basename(p))[0]}_skipped.jsonl")
            for k, p in enumerate(paths)]


def packing_post_process(sft: SwiftSft, datasets: List, fallback: Callable[[List], List]) -> List:
    """THE place where packing plugs in. Without ``packing``: ms-swift's own post-processing
    (lazy encoding). With it: ``swift_plugins.training.packed_dataset.build_packed_datasets(sft, train, val)``
    gets the raw (not yet encoded) datasets and returns the training / validation datasets;
    ``sft.swiftpack_options`` holds every packing option. ms-swift's own ``packing`` stays off.
    """
    options: RuntimeOptions = sft.swiftpack_options
    if not options.packing:
        return fallback(datasets)
    from swift_plugins.training.packed_dataset import build_packed_datasets

    train, val = build_packed_datasets(sft, datasets[0], datasets[1])
    return [train, val]


class SwiftpackSft(SwiftSft):
    """ms-swift's SFT pipeline with our args class; ``main()`` / ``run()`` are ms-swift's."""
    args_class = SwiftpackSftArguments
    args: SwiftpackSftArguments

    def __init__(self, args: Optional[Union[List[str], SwiftpackSftArguments]] = None) -> None:
        super().__init__(args)
        self.swiftpack_options = options_from_args(self.args)

    def _get_dataset(self):
        if self.swiftpack_options.packing:  # packing reads the JSONL itself, by line: skip ms-swift's pass
            return None, None
        return super()._get_dataset()

    def _post_process_datasets(self, datasets: List) -> List:
        return packing_post_process(self, datasets, super()._post_process_datasets)


def install_packing_hook(options: RuntimeOptions) -> None:
    """For plain ``swift sft``: route stock ``SwiftSft._post_process_datasets`` through
    :func:`packing_post_process` with ``options`` (the sidecar's)."""
    original = SwiftSft.__dict__["_post_process_datasets"]
    original = getattr(original, "__swiftpack_original__", original)

    def _post_process_datasets(self, datasets):
        self.swiftpack_options = options
        return packing_post_process(self, datasets, lambda d: original(self, d))

    _post_process_datasets.__swiftpack_original__ = original
    SwiftSft._post_process_datasets = _post_process_datasets

    original_get = SwiftSft.__dict__["_get_dataset"]
    original_get = getattr(original_get, "__swiftpack_original__", original_get)

    def _get_dataset(self):  # packing reads the JSONL itself, by line: skip ms-swift's pass
        return None, None

    _get_dataset.__swiftpack_original__ = original_get
    SwiftSft._get_dataset = _get_dataset


def register_sidecar(path: str) -> RuntimeOptions:
    """Called by the plugin ``--export_flat`` generates: register the sidecar's options.

    Refuses a world size other than the one the flat YAML's gradient_accumulation_steps was
    computed for (torchrun's ``WORLD_SIZE``, 1 without torchrun).
    """
    options, world_size = load_sidecar(path)
    actual = world_size_from_env(os.environ)
    if actual != world_size:
        raise UserError(f"{path}: exported for world_size {world_size} (gradient_accumulation_steps was derived "
                        f"from it) but this run has WORLD_SIZE {actual}; re-export with --world_size {actual}")
    register_runtime(options)
    if options.packing:
        install_packing_hook(options)
    return options


def device_issues(resolved: ResolvedConfig, environ: Mapping[str, str]) -> List[Issue]:
    """A multi-process run without a GPU needs ``training.use_cpu true``: transformers 5.19 sets up
    gloo DDP on CPU only then; otherwise every torchrun process trains alone on all the data and
    they overwrite each other's checkpoints."""
    import torch

    world_size = world_size_from_env(environ)
    if world_size > 1 and not torch.cuda.is_available() and not resolved.config.training.use_cpu:
        source = resolved.sources["training.use_cpu"]
        return [Issue(resolved.files[-1] if source == "default" else source, "training.use_cpu",
                      f"must be true for a {world_size}-process run without a GPU (else each process trains alone, "
                      f"without gradient sync); add --training.use_cpu true")]
    return []


def run_resolved(resolved: ResolvedConfig) -> dict:
    """Train with a resolved config in this process (one torchrun rank or a plain process)."""
    from swift_plugins.training import register_all

    register_all()
    register_runtime(runtime_options(resolved))
    if resolved.attn_impl[1]:
        from swift.utils import get_logger

        get_logger().info(f"swiftpack attention: {resolved.attn_impl[1]}")
    argv = swift_argv(flat_swift_args(resolved, with_runtime_fields=True))
    return SwiftpackSft(argv).main()
