"""Whether a checkpoint may continue this run's packs: its world size and plan must be this run's.

Every checkpoint of a packed run holds ``swiftpack_packing.json``, e.g.
``{"world_size": 2, "plan_sha256": "9f2c...", "seed": 42, "num_packs": 18}``. The pack order of each
epoch depends on the world size (the deal), the packs on the data and packing options (the digest).
The world size is known before anything is loaded, so the entry point checks it first (a wrong
launch fails in a second, not after ms-swift and the model load); the digest needs the plan, so
the packed dataset checks the whole state once the plan exists.
"""
from __future__ import annotations

import json
import os

from swift_plugins.errors import UserError

__all__ = ["PACKING_STATE_FILE", "check_resume", "check_resume_world_size", "saved_packing_state"]

PACKING_STATE_FILE = "swiftpack_packing.json"  # in every checkpoint of a packed run
_KEY = "training.resume_from_checkpoint"


def saved_packing_state(checkpoint: str) -> dict:
    """The checkpoint's packing state; a checkpoint without one (not a packed run) is a ``UserError``."""
    path = os.path.join(checkpoint, PACKING_STATE_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{checkpoint}: {_KEY}: no {PACKING_STATE_FILE} (not a checkpoint of a packed run); resume a "
                        f"packed run's checkpoint or start a new run")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_resume_world_size(checkpoint: str, world_size: int, saved: dict | None = None) -> None:
    """Refuse a checkpoint trained with another world size (``UserError`` naming the launch that fits);
    ``saved``: its state when already read."""
    saved = saved_packing_state(checkpoint) if saved is None else saved
    if saved["world_size"] != world_size:
        raise UserError(f"{checkpoint}: {_KEY}: trained with world_size {saved['world_size']}, this run has "
                        f"{world_size}; the pack order depends on it (resume with torchrun "
                        f"--nproc_per_node={saved['world_size']}, or start a new run)")


def check_resume(checkpoint: str | None, state: dict) -> None:
    """Refuse to continue a checkpoint whose world size or plan differ from ``state`` (this run's)."""
    if not checkpoint:
        return
    saved = saved_packing_state(checkpoint)
    check_resume_world_size(checkpoint, state["world_size"], saved)
    if (saved["plan_sha256"], saved["seed"]) != (state["plan_sha256"], state["seed"]):
        raise UserError(f"{checkpoint}: {_KEY}: its packing plan differs from this run's (data, global_max_length or "
                        f"packing options changed; {saved['num_packs']} packs then, {state['num_packs']} now); resume "
                        f"with the same data and options, or start a new run")
