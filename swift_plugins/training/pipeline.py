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

DeepSpeed on the CPU (``training.use_cpu`` + ``deepspeed.config``, :mod:`swift_plugins.config.zero`):
both routes call :func:`prepare_cpu_deepspeed` first, before ms-swift builds its TrainingArguments.
"""
from __future__ import annotations

import os
from typing import Callable, List, Mapping, Optional

from swift.pipelines.train.sft import SwiftSft

from swift_plugins.config.export import RuntimeOptions, flat_swift_args, load_sidecar, runtime_options, swift_argv
from swift_plugins.config.resolve import ResolvedConfig, world_size_from_env
from swift_plugins.config.values import Issue
from swift_plugins.config.zero import CPU_DEEPSPEED_NOTE, is_cpu_deepspeed
from swift_plugins.errors import UserError
from swift_plugins.training.hooks import get_dataset_hook, packing_post_process, train_hook

__all__ = ["SwiftpackSft", "cpu_deepspeed_environment", "device_issues", "prepare_cpu_deepspeed", "register_runtime",
           "register_sidecar", "run_resolved"]


def register_runtime(options: RuntimeOptions) -> List[str]:
    """Register with ms-swift what this run's ``options`` decide; returns the registered dataset paths."""
    from swift_plugins.training.datasets import register_jsonl

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

    options, world_size, cpu_deepspeed = load_sidecar(path)
    actual = world_size_from_env(os.environ)
    if actual != world_size:
        raise UserError(f"{path}: exported for world_size {world_size} (gradient_accumulation_steps was derived "
                        f"from it) but this run has WORLD_SIZE {actual}; re-export with --world_size {actual}")
    if cpu_deepspeed:  # the plugin is imported before ms-swift builds its TrainingArguments: in time
        prepare_cpu_deepspeed()
    register_runtime(options)
    patch_run(options)
    return options


def device_issues(resolved: ResolvedConfig, environ: Mapping[str, str]) -> List[Issue]:
    """Without a GPU, a multi-process run and any DeepSpeed run need ``training.use_cpu true``:
    transformers 5.19 sets up gloo DDP on CPU only then (otherwise every torchrun process trains alone
    on all the data and they overwrite each other's checkpoints); a DeepSpeed run without it gets an
    accelerate state of one process while DeepSpeed counts all of them. ``DS_ACCELERATOR`` set to
    anything but cpu cannot work on a CPU DeepSpeed run."""
    import torch

    world_size = world_size_from_env(environ)
    source = resolved.sources["training.use_cpu"]
    where = resolved.files[-1] if source == "default" else source
    if not torch.cuda.is_available() and not resolved.config.training.use_cpu:
        if resolved.config.deepspeed.config is not None:
            return [Issue(where, "training.use_cpu", "must be true for DeepSpeed without a GPU (then DeepSpeed runs "
                                                     "on its CPU accelerator over gloo, in fp32); add "
                                                     "--training.use_cpu true")]
        if world_size > 1:
            return [Issue(where, "training.use_cpu",
                          f"must be true for a {world_size}-process run without a GPU (else each process trains "
                          f"alone, without gradient sync); add --training.use_cpu true")]
    if is_cpu_deepspeed(resolved) and environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return [Issue("environment", "DS_ACCELERATOR", _DS_ACCELERATOR_FIX.format(environ["DS_ACCELERATOR"]))]
    return []


_DS_ACCELERATOR_FIX = ("is {!r} but training.use_cpu is true with DeepSpeed; unset it (the run sets cpu) or set "
                       "training.use_cpu false on a GPU machine")


def cpu_deepspeed_environment(environ: Mapping[str, str], free_port: Callable[[], int]) -> dict:
    """Environment variables a CPU DeepSpeed process sets (:func:`prepare_cpu_deepspeed`).

    ``DS_ACCELERATOR=cpu`` always (DeepSpeed guesses cpu without CUDA; said explicitly, a user's
    other value is refused). One process without torchrun also gets a world of one
    (``RANK``/``LOCAL_RANK`` 0, ``WORLD_SIZE`` 1, ``MASTER_ADDR`` 127.0.0.1, a free ``MASTER_PORT``):
    DeepSpeed needs a process group even then, and without these variables it looks for MPI.

    >>> cpu_deepspeed_environment({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, lambda: 1234)
    {'DS_ACCELERATOR': 'cpu'}
    >>> cpu_deepspeed_environment({}, lambda: 1234)["MASTER_PORT"]
    '1234'
    """
    if environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        raise UserError("environment: DS_ACCELERATOR: " + _DS_ACCELERATOR_FIX.format(environ["DS_ACCELERATOR"]))
    out = {"DS_ACCELERATOR": "cpu"}
    if "LOCAL_RANK" not in environ:
        out.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_cpu_deepspeed() -> str:
    """Set up DeepSpeed on the CPU in this process, before ms-swift builds its TrainingArguments;
    returns the start-up line it logged.

    - the environment of :func:`cpu_deepspeed_environment` (``DS_ACCELERATOR=cpu``, ...);
    - DeepSpeed's shared-memory all-reduce op is marked unavailable: it serves only
      ``inference_all_reduce`` (inference tensor parallelism), never training, and DeepSpeed would
      otherwise JIT-compile it with g++ in every fresh environment before the first step;
    - ``deepspeed.comm.init_distributed`` over gloo: transformers' ZeRO-3 ``zero.Init`` reads the
      world size from ``deepspeed.comm`` while the model loads, and with only accelerate's gloo group
      DeepSpeed would count one process (``train_batch_size 2 != 1 * 1 * 1``). accelerate then finds
      the group initialised and keeps it.
    """
    os.environ.update(cpu_deepspeed_environment(os.environ, _free_port))
    import deepspeed.comm
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    from swift.utils import get_logger

    line = f"swiftpack deepspeed: {CPU_DEEPSPEED_NOTE}; world size {world_size_from_env(os.environ)}"
    get_logger().info(line)
    return line


def run_resolved(resolved: ResolvedConfig) -> dict:
    """Train with a resolved config in this process (one torchrun rank or a plain process)."""
    from swift_plugins.training import register_all

    register_all()
    if is_cpu_deepspeed(resolved):
        prepare_cpu_deepspeed()
    register_runtime(runtime_options(resolved))
    if resolved.attn_impl[1]:
        from swift.utils import get_logger

        get_logger().info(f"swiftpack attention: {resolved.attn_impl[1]}")
    return SwiftpackSft(swift_argv(flat_swift_args(resolved)), runtime_options(resolved)).main()
