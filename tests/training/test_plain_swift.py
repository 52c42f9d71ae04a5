"""swift_plugins.training.plain_swift: the one patch, scoped to one run of stock SwiftSft."""
from __future__ import annotations

import types

import pytest

from swift_plugins import config as C
from swift_plugins.training import packed_dataset, plain_swift


def own_hooks():
    from swift.pipelines.train.sft import SwiftSft

    return {name: SwiftSft.__dict__[name] for name in plain_swift.HOOKS}


def stand_ins(tmp_path, train):
    sft = types.SimpleNamespace(args=types.SimpleNamespace(use_flash_ckpt=False),
                                _get_resume_checkpoint=lambda t: None, _save_trainer_state=lambda t: "state")
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(output_dir=str(tmp_path)), added=[], train=train,
                                    compute_loss=None, evaluation_loop=None)
    trainer.add_callback = trainer.added.append
    return sft, trainer


def test_the_latest_options_win_and_patches_do_not_stack(tmp_path, monkeypatch):
    from swift.pipelines.train.sft import SwiftSft

    own = own_hooks()
    monkeypatch.setattr(packed_dataset, "build_packed_datasets", lambda sft, train, val: ("t", "v"))
    plain_swift.patch_run(C.RuntimeOptions(packing=False))
    plain_swift.patch_run(C.RuntimeOptions(packing=True, save_delay_steps=4))
    sft, trainer = stand_ins(tmp_path, train=lambda checkpoint: None)
    assert SwiftSft._post_process_datasets(sft, [[], None]) == ["t", "v"]
    assert sft.swiftpack_options.save_delay_steps == 4
    assert SwiftSft.train(sft, trainer) == "state"
    assert own_hooks() == own and not plain_swift.is_patched()
    plain_swift.restore_run()  # idempotent
    assert own_hooks() == own


def test_a_run_that_fails_still_restores_ms_swift(tmp_path):
    from swift.pipelines.train.sft import SwiftSft

    own = own_hooks()
    plain_swift.patch_run(C.RuntimeOptions(packing=False))
    assert plain_swift.is_patched() and own_hooks() != own

    def fail(checkpoint):
        raise RuntimeError("out of memory")

    sft, trainer = stand_ins(tmp_path, train=fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        SwiftSft.train(sft, trainer)
    assert own_hooks() == own and not plain_swift.is_patched()
