"""save_delay_steps and the data-order record with real transformers flow objects (the runs: tests/e2e)."""
from __future__ import annotations

import pytest
import torch

from swift_plugins.training.callbacks import SaveDelayCallback, epoch_batches, save_allowed


@pytest.mark.parametrize("step,delay,allowed", [(1, 0, True), (1, 2, False), (2, 2, True), (3, 2, True),
                                                (49, 50, False), (50, 50, True)])
def test_save_allowed(step, delay, allowed):
    assert save_allowed(step, delay) is allowed


def test_save_delay_gates_hf_default_flow(tmp_path):
    """DefaultFlowCallback asks for a save every step (save_steps 1); the delay cancels steps < 2."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    args = TrainingArguments(output_dir=str(tmp_path), save_steps=1, max_steps=3, report_to=[])
    state = TrainerState(max_steps=3, save_steps=1, logging_steps=1, eval_steps=1)
    flow, delay = DefaultFlowCallback(), SaveDelayCallback(args, None, save_delay_steps=2)
    saved = []
    for step in (1, 2, 3):
        state.global_step = step
        control = TrainerControl()
        control = flow.on_step_end(args, state, control) or control
        assert control.should_save  # HF wants one
        control = delay.on_step_end(args, state, control)
        saved.append(control.should_save)
    assert saved == [False, True, True]


def test_epoch_batches_reads_ms_swift_sampler_without_consuming_it():
    from swift.dataloader.shard import BatchSamplerShard

    sampler = BatchSamplerShard(8, batch_size=3, shuffle=True, drop_last=False, data_seed=42)
    loader = torch.utils.data.DataLoader(list(range(8)), batch_sampler=sampler)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(42)).tolist()
    expected = [perm[0:3], perm[3:6], perm[6:8]]
    assert epoch_batches(loader) == expected
    assert epoch_batches(loader) == expected  # the same again: no state consumed
    assert [b.tolist() for b in loader] == expected  # and what the loader then yields
    assert epoch_batches(object()) is None
