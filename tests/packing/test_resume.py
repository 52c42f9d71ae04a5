"""swift_plugins.packing.resume: which checkpoint may continue which run, with the exact refusals."""
from __future__ import annotations

import json

import pytest

from swift_plugins.errors import UserError
from swift_plugins.packing.resume import PACKING_STATE_FILE, check_resume, check_resume_world_size

STATE = {"world_size": 2, "plan_sha256": "ab12", "seed": 42, "num_packs": 18}


@pytest.fixture
def checkpoint(tmp_path):
    (tmp_path / PACKING_STATE_FILE).write_text(json.dumps(STATE) + "\n")
    return str(tmp_path)


def refusal(fn, *args) -> str:
    with pytest.raises(UserError) as err:
        fn(*args)
    return str(err.value)


def test_the_same_world_size_and_plan_continue(checkpoint):
    check_resume_world_size(checkpoint, 2)
    check_resume(checkpoint, dict(STATE))
    check_resume(None, {"world_size": 7})  # no checkpoint: a new run


def test_another_world_size_is_refused_with_the_launch_that_fits(checkpoint):
    expected = (f"{checkpoint}: training.resume_from_checkpoint: trained with world_size 2, this run has 1; the pack "
                f"order depends on it (resume with torchrun --nproc_per_node=2, or start a new run)")
    assert refusal(check_resume_world_size, checkpoint, 1) == expected
    assert refusal(check_resume, checkpoint, {**STATE, "world_size": 1}) == expected


@pytest.mark.parametrize("change", [{"plan_sha256": "cd34", "num_packs": 20}, {"seed": 7}])
def test_another_plan_or_seed_is_refused(checkpoint, change):
    now = {**STATE, **change}
    assert refusal(check_resume, checkpoint, now) == (
        f"{checkpoint}: training.resume_from_checkpoint: its packing plan differs from this run's (data, "
        f"global_max_length or packing options changed; 18 packs then, {now['num_packs']} now); resume with the "
        f"same data and options, or start a new run")


def test_a_checkpoint_of_a_padded_run_is_refused(tmp_path):
    assert refusal(check_resume_world_size, str(tmp_path), 1) == (
        f"{tmp_path}: training.resume_from_checkpoint: no {PACKING_STATE_FILE} (not a checkpoint of a packed run); "
        f"resume a packed run's checkpoint or start a new run")
