"""The one patch: plain ``swift sft OUT.yaml`` (from ``--export_flat``) run through our hooks.

Why a patch at all: ``swift sft`` builds ms-swift's own ``SwiftSft`` and imports our plugin while
parsing its arguments, after the class was chosen; ms-swift offers no argument that selects another
pipeline class. ``python -m swift_plugins.sft`` needs none of this (it runs the subclass
:class:`~swift_plugins.training.pipeline.SwiftpackSft`).

What it does, for one run only::

    patch_run(options)            SwiftSft._get_dataset / _post_process_datasets / train
                                  -> the hook functions SwiftpackSft uses (training/hooks.py), with these options
    SwiftSft(...).main()          ... train(trainer) ends (returns or raises)
                                  -> the three originals are back (restore_run), nothing left behind

A second ``patch_run`` before the run ends replaces the options (the latest sidecar wins) without
stacking patches.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from swift.pipelines.train.sft import SwiftSft

from swift_plugins.config.export import RuntimeOptions
from swift_plugins.training import hooks

__all__ = ["HOOKS", "is_patched", "patch_run", "restore_run"]

HOOKS = ("_get_dataset", "_post_process_datasets", "train")
_originals: Optional[Dict[str, Any]] = None  # SwiftSft's own attributes while a run is patched


def patch_run(options: RuntimeOptions) -> None:
    """Route the next ``SwiftSft`` run of this process through our hooks with ``options``."""
    global _originals
    if _originals is None:
        _originals = {name: SwiftSft.__dict__[name] for name in HOOKS}
    originals = _originals

    def _get_dataset(self):
        self.swiftpack_options = options
        return hooks.get_dataset_hook(self, lambda: originals["_get_dataset"](self))

    def _post_process_datasets(self, datasets):
        self.swiftpack_options = options
        return hooks.packing_post_process(self, datasets, lambda d: originals["_post_process_datasets"](self, d))

    def train(self, trainer):
        self.swiftpack_options = options
        try:
            return hooks.train_hook(self, trainer, lambda t: originals["train"](self, t))
        finally:
            restore_run()

    for name, fn in (("_get_dataset", _get_dataset), ("_post_process_datasets", _post_process_datasets),
                     ("train", train)):
        setattr(SwiftSft, name, fn)


def restore_run() -> None:
    """Put ``SwiftSft``'s own hooks back (idempotent)."""
    global _originals
    if _originals is not None:
        for name, original in _originals.items():
            setattr(SwiftSft, name, original)
        _originals = None


def is_patched() -> bool:
    return _originals is not None
