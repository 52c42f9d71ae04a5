"""swift_plugins.training.hooks: what our runs change in ms-swift's SFT pipeline."""
from __future__ import annotations

import json
import types

from swift_plugins import config as C
from swift_plugins.training.callbacks import PackingCallback, SaveDelayCallback
from swift_plugins.training.hooks import (OPTIONS_FILE, add_run_callbacks, get_dataset_hook, packing_post_process,
                                          train_hook)


def test_without_packing_ms_swifts_own_steps_run():
    sft = types.SimpleNamespace(swiftpack_options=C.RuntimeOptions(packing=False))
    assert packing_post_process(sft, ["t", "v"], lambda d: d[::-1]) == ["v", "t"]
    assert get_dataset_hook(sft, lambda: ("own", "datasets")) == ("own", "datasets")


def stand_in_trainer(tmp_path):
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(output_dir=str(tmp_path)), added=[],
                                    compute_loss=None, evaluation_loop=None)
    trainer.add_callback = trainer.added.append
    return trainer


def test_run_callbacks_follow_the_options(tmp_path):
    none = stand_in_trainer(tmp_path)
    add_run_callbacks(none, C.RuntimeOptions(packing=False, save_delay_steps=0))
    assert none.added == []
    both = stand_in_trainer(tmp_path)
    add_run_callbacks(both, C.RuntimeOptions(packing=True, save_delay_steps=5))
    assert [type(c) for c in both.added] == [SaveDelayCallback, PackingCallback]
    assert both.added[0].save_delay_steps == 5 and both.added[1].trainer is both


def test_train_hook_records_the_options_then_trains(tmp_path):
    options = C.RuntimeOptions(packing=True, save_delay_steps=2, train_jsonl=["a.jsonl"])
    trainer = stand_in_trainer(tmp_path)
    order = []
    result = train_hook(types.SimpleNamespace(swiftpack_options=options), trainer,
                        lambda t: order.append(len(t.added)) or "trained")
    assert result == "trained" and order == [2]  # callbacks were added before ms-swift's train ran
    assert C.RuntimeOptions(**json.loads((tmp_path / OPTIONS_FILE).read_text())) == options
