"""The ms-swift side of the entry point (imports torch + ms-swift; ``swift_plugins.sft`` stays light).

Two ways our keys reach a run, the same code in both::

    python -m swift_plugins.sft --config X          swift sft OUT.yaml  (from --export_flat)
      resolve_config -> run_resolved                  ms-swift imports swiftpack_options_OUT.py
        register_all()                                  register_plugins(sidecar=OUT.swiftpack.json)
        register_runtime(options)                         register_all(); register_sidecar(...)
        SwiftpackSft(argv, options)                         register_runtime(options)
          a subclass of ms-swift's SwiftSft                 plain_swift.patch_run(options): SwiftSft's
          holding the typed RuntimeOptions                  three hooks below, for this one run

The hooks (:mod:`swift_plugins.training.hooks`; :class:`SwiftpackSft` overrides SwiftSft's
methods with them, the plain route borrows the same functions for one run):

    _get_dataset            with packing: skip ms-swift's pass (packing reads the JSONL by line)
    _post_process_datasets  with packing: the plan as datasets
    train(trainer)          the run's callbacks (save delay, packing metrics), its options file, train

``register_runtime``: what depends on the run's options and ms-swift finds by name: the JSONL
datasets (``training.datasets.register_jsonl`` with the custom.* conversation options).
"""
from __future__ import annotations

import os
from typing import List, Mapping

from swift.pipelines.train.sft import SwiftSft

from swift_plugins.config.export import RuntimeOptions, flat_swift_args, load_sidecar, runtime_options, swift_argv
from swift_plugins.config.resolve import ResolvedConfig, world_size_from_env
from swift_plugins.config.values import Issue
from swift_plugins.errors import UserError
from swift_plugins.training.hooks import get_dataset_hook, packing_post_process, train_hook

__all__ = ["SwiftpackSft", "device_issues", "register_runtime", "register_sidecar", "run_resolved"]


def register_runtime(options: RuntimeOptions) -> List[str]:
    """Register with ms-swift what this run's ``options`` decide; returns the registered dataset paths."""
    from swift_plugins.training.datasets import register_jsonl

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


class SwiftpackSft(SwiftSft):
    """ms-swift's SFT pipeline holding our typed options; ``main()`` / ``run()`` are ms-swift's.

    ``args`` is what ms-swift parses (its own arguments only); ``options`` is handed over as the
    object it is, never through strings.
    """

    def __init__(self, args: List[str], options: RuntimeOptions) -> None:
        self.swiftpack_options = options
        super().__init__(args)

    def _get_dataset(self):
        return get_dataset_hook(self, super()._get_dataset)

    def _post_process_datasets(self, datasets: List) -> List:
        return packing_post_process(self, datasets, super()._post_process_datasets)

    def train(self, trainer):
        return train_hook(self, trainer, super().train)


def register_sidecar(path: str) -> RuntimeOptions:
    """Called by the plugin ``--export_flat`` generates: register the sidecar's options and route
    this process's ``swift sft`` run through the hooks above (:mod:`~swift_plugins.training.plain_swift`).

    Refuses a world size other than the one the flat YAML's gradient_accumulation_steps was
    computed for (torchrun's ``WORLD_SIZE``, 1 without torchrun).
    """
    from swift_plugins.training.plain_swift import patch_run

    options, world_size = load_sidecar(path)
    actual = world_size_from_env(os.environ)
    if actual != world_size:
        raise UserError(f"{path}: exported for world_size {world_size} (gradient_accumulation_steps was derived "
                        f"from it) but this run has WORLD_SIZE {actual}; re-export with --world_size {actual}")
    register_runtime(options)
    patch_run(options)
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
    return SwiftpackSft(swift_argv(flat_swift_args(resolved)), runtime_options(resolved)).main()
