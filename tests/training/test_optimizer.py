"""swift_plugins.training.optimizer: the tiny Qwen3-VL's parameters through ms-swift into the multimodal groups."""
from __future__ import annotations

import copy

import pytest

from swift_plugins.names import OPTIMIZER_NAME
from swift_plugins.param_groups import part_of
from swift_plugins.training import optimizer as optimizer_module

VISION, ALIGNER = ["model.visual"], ["model.visual.merger", "model.visual.deepstack_merger_list"]
LRS = dict(learning_rate=2e-4, vit_lr=1e-4, aligner_lr=4e-4, weight_decay=0.1)

MODES = {
    # name: (SftArguments kwargs, expected group names)
    "lora": (dict(tuner_type="lora", freeze_vit=False, freeze_aligner=False),
             ["llm/decay", "vit/decay", "aligner/decay"]),
    "dora": (dict(tuner_type="lora", use_dora=True, freeze_vit=False, freeze_aligner=False),
             ["llm/decay", "llm/no_decay", "vit/decay", "vit/no_decay", "aligner/decay", "aligner/no_decay"]),
    "full": (dict(tuner_type="full", freeze_vit=False, freeze_aligner=False),
             ["llm/decay", "llm/no_decay", "vit/decay", "vit/no_decay", "aligner/decay", "aligner/no_decay"]),
    "lora_freeze_vit": (dict(tuner_type="lora", use_dora=True, freeze_vit=True, freeze_aligner=True),
                        ["llm/decay", "llm/no_decay"]),
    "full_freeze_vit": (dict(tuner_type="full", freeze_vit=True, freeze_aligner=False),
                        ["llm/decay", "llm/no_decay", "aligner/decay", "aligner/no_decay"]),
}


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir, tmp_path_factory):
    from swift.arguments import SftArguments

    args = SftArguments(model=str(tiny_model_dir), model_type="qwen3_vl", dataset=["unused.jsonl"],
                        check_model=False, torch_dtype="float32", output_dir=str(tmp_path_factory.mktemp("o")),
                        add_version=False, report_to=["none"])
    model, _ = args.get_model_processor()
    return model


@pytest.mark.parametrize("mode", list(MODES))
def test_tiny_model_groups(mode, tiny_base, tiny_model_dir, tmp_path):
    from swift.arguments import SftArguments
    from swift.optimizers import optimizers_map
    from swift.pipelines.train.tuner import TunerMixin

    optimizer_module.register()
    kwargs, expected_groups = MODES[mode]
    args = SftArguments(model=str(tiny_model_dir), model_type="qwen3_vl", dataset=["unused.jsonl"],
                        check_model=False, torch_dtype="float32", output_dir=str(tmp_path), add_version=False,
                        report_to=["none"], optimizer=OPTIMIZER_NAME, **LRS, **kwargs)
    model = TunerMixin.prepare_model(args, copy.deepcopy(tiny_base))
    optimizer = optimizers_map[OPTIMIZER_NAME](args.training_args, None).create_optimizer(model)

    assert [g["swiftpack_group"] for g in optimizer.param_groups] == expected_groups
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in optimizer.param_groups:
        assert group["params"], group["swiftpack_group"]
        part, decay = group["swiftpack_group"].split("/")
        assert group["lr"] == {"llm": 2e-4, "vit": 1e-4, "aligner": 4e-4}[part]
        assert group["weight_decay"] == (0.1 if decay == "decay" else 0.0)
        for p in group["params"]:
            assert id(p) not in seen, names[id(p)]
            seen[id(p)] = group["swiftpack_group"]
            name = names[id(p)]
            assert part_of(name, VISION, ALIGNER) == part, name
            bare = name.split(".")
            if bare[-1] == "bias" or any("norm" in x for x in bare):
                assert group["weight_decay"] == 0.0, name
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(seen) == trainable  # every trainable parameter in exactly one group, frozen ones in none
    if "freeze_vit" in mode:
        vit = [p for n, p in model.named_parameters() if part_of(n, VISION, ALIGNER) == "vit"]
        assert vit and not any(p.requires_grad for p in vit)
    if mode == "full":
        assert all(p.requires_grad for p in model.parameters())


def test_the_learning_rates_the_update_applies_are_recorded_per_part(tiny_base, tiny_model_dir, tmp_path):
    """The pre-step hook sees the groups at the update (what DeepSpeed's wrapped optimizer also calls)."""
    from swift.arguments import SftArguments
    from swift.optimizers import optimizers_map
    from swift.pipelines.train.tuner import TunerMixin

    optimizer_module.register()
    args = SftArguments(model=str(tiny_model_dir), model_type="qwen3_vl", dataset=["unused.jsonl"],
                        check_model=False, torch_dtype="float32", output_dir=str(tmp_path), add_version=False,
                        report_to=["none"], optimizer=OPTIMIZER_NAME, **LRS, **MODES["dora"][0])
    model = TunerMixin.prepare_model(args, copy.deepcopy(tiny_base))
    optimizer = optimizers_map[OPTIMIZER_NAME](args.training_args, None).create_optimizer(model)
    assert not hasattr(optimizer, "swiftpack_applied_lrs")
    optimizer.param_groups[2]["lr"] = 3e-5  # vit/decay, as a scheduler would set it
    optimizer.step()
    assert optimizer.swiftpack_applied_lrs == {"lr_llm": 2e-4, "lr_vit": 3e-5, "lr_aligner": 4e-4}
