"""What our runs change in ms-swift's SFT pipeline: three hooks over its methods, and the run's callbacks.

Both routes use these functions: :class:`~swift_plugins.training.pipeline.SwiftpackSft` (the
entry point's subclass) overrides ``SwiftSft``'s methods with them; plain ``swift sft`` borrows
them for one run (:mod:`~swift_plugins.training.plain_swift`). ``sft.swiftpack_options`` is the
run's :class:`~swift_plugins.config.export.RuntimeOptions`::

    SwiftSft method          hook                     with packing                 without
    _get_dataset             get_dataset_hook         (None, None): packing reads  ms-swift's
                                                      the JSONL itself, by line
    _post_process_datasets   packing_post_process     the plan as datasets         ms-swift's
    train(trainer)           train_hook               options file + run callbacks, then ms-swift's
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, List

from swift_plugins.config.export import RuntimeOptions
from swift_plugins.files import atomic_write_text

__all__ = ["OPTIONS_FILE", "add_run_callbacks", "get_dataset_hook", "packing_post_process", "train_hook"]

OPTIONS_FILE = "swiftpack_options.json"  # <output_dir>/: the run's RuntimeOptions, next to ms-swift's args.json


def packing_post_process(sft: Any, datasets: List, fallback: Callable[[List], List]) -> List:
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


def add_run_callbacks(trainer, options: RuntimeOptions) -> None:
    """The callbacks that hold this run's values, handed to the trainer (``Trainer.add_callback``:
    after transformers' defaults, so the save delay sees ``DefaultFlowCallback``'s decision).

    ``save_delay_steps > 0`` -> :class:`SaveDelayCallback`; ``packing`` -> :class:`PackingCallback`
    (the epoch's pack order, packing metrics, the resume state in each checkpoint). The stateless
    ones (data order, eval token mean) are selected by name in ms-swift's ``callbacks`` argument.
    """
    from swift_plugins.training.callbacks import PackingCallback, SaveDelayCallback

    if options.save_delay_steps > 0:
        trainer.add_callback(SaveDelayCallback(trainer.args, trainer, save_delay_steps=options.save_delay_steps))
    if options.packing:
        trainer.add_callback(PackingCallback(trainer.args, trainer))


def get_dataset_hook(sft: Any, original: Callable[[], tuple]) -> tuple:
    """``_get_dataset``: with packing, skip ms-swift's pass (packing reads the JSONL itself, by line)."""
    return (None, None) if sft.swiftpack_options.packing else original()


def train_hook(sft: Any, trainer, original: Callable) -> dict:
    """``train(trainer)``: record the options next to ``args.json``, add the run's callbacks, train."""
    from swift.utils import is_master

    if is_master():
        atomic_write_text(os.path.join(trainer.args.output_dir, OPTIONS_FILE),
                          json.dumps(dataclasses.asdict(sft.swiftpack_options), indent=2, sort_keys=True) + "\n")
    add_run_callbacks(trainer, sft.swiftpack_options)
    return original(trainer)
