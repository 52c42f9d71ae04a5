"""DeepSpeed ZeRO-2 / ZeRO-3 packed training on the CPU, 2 ranks, against plain DDP on the same plan.

Every run is a launch line of the README read from the README (:func:`readme_launch`), with this
file's data and steps added; the tiny config has ``training.use_cpu: true``::

    torchrun --nproc_per_node=2 -m swift_plugins.sft --config configs/tiny/sft_packing.yaml \\
        --deepspeed.config configs/deepspeed/zero3.json     (zero2.json; without the last pair: DDP)

One data set serves every run: four messages rows, each over half of ``global_max_length`` (so
each is a pack of its own), two with an image and two text only, of lengths such that the
dealt steps pair a text-only pack with an image pack (step 1: the small image row with the short
text row, step 2: the big image row with the long text row). Text is digits, one token each in
any Qwen-style BPE, so the pairing does not depend on the tokenizer's merges.

``tuner.lora_dropout 0``: under DeepSpeed ms-swift runs the vision tower on a dummy image for the
text-only pack (``_compat_qwen3_vl_mixed_data``), which draws from the RNG; with dropout the LoRA
masks after it then differ from DDP's (measured: step-1 loss equal, grad norm 0.2% apart, because
LoRA B starts at zero), so exact equality is asked of the dropout-free runs.

    run         tuner  launch                                what it proves
    ddp_lora    LoRA   torchrun, no DeepSpeed                the reference
    z2_lora     LoRA   torchrun, zero2.json                  = DDP per step
    z3_lora     LoRA   torchrun, zero3.json, save every step = DDP per step; mixed packs; adapter
    z3_resumed  LoRA   z3_lora from checkpoint-1             same packs and loss as uninterrupted
    ddp_full    full   torchrun, no DeepSpeed                the reference
    z2_full     full   --export_flat + NPROC_PER_NODE=2 swift sft, zero2.json   = DDP per step
    z3_full     full   torchrun, zero3.json                  = DDP per step, the fused loss's gradient of the
                                                          partitioned lm_head through DeepSpeed; weights load

Every run takes the default fused loss (``training.fused_loss``).
"""
from __future__ import annotations

import json
import math
import pathlib
import shlex
import sys

import pytest
import yaml

from helpers import child_environment, free_port, read_jsonl, run, save_image

pytestmark = pytest.mark.e2e
PY = sys.executable
MAX_LENGTH = 320
STEPS = 2
LRS = {"llm": 2.0e-4, "vit": 1.0e-4, "aligner": 4.0e-4}  # configs/tiny/sft_padding.yaml
TIMEOUT = 600  # a hang (ranks out of step in a ZeRO-3 gather) fails the test instead of blocking it


def row(user, answer, image=None):
    out = {"messages": [{"role": "user", "content": ("<image>" if image else "") + user},
                        {"role": "assistant", "content": answer}]}
    if image:
        out["images"] = [image]
    return out


# image tokens: 512 x 512 -> 16 x 16 = 256, 384 x 384 -> 144 (patch 16, merge 2); text: one token per digit
ROWS = [row("Count.", "7" * 40, "big.png"), row("Count.", "3" * 255), row("Count.", "5" * 80, "small.png"),
        row("Count.", "1" * 175)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ds-data")
    save_image(folder / "big.png", (512, 512))
    save_image(folder / "small.png", (384, 384))
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder


README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_launch(stage):
    """The README's CPU launch line for ZeRO-``stage`` (stage 0: the same line without DeepSpeed), as argv
    after ``torchrun --nproc_per_node=2 -m swift_plugins.sft``."""
    (line,) = [l for l in README.read_text().splitlines() if l.startswith("torchrun --nproc_per_node=2 -m swift_plugins.sft")
               and l.endswith(f"--deepspeed.config configs/deepspeed/zero{max(stage, 2)}.json")]
    argv = shlex.split(line)[4:]
    return argv[:-2] if stage == 0 else argv


def run_args(model, data, out, *extra):
    return ["--model.model", str(model),
            "--custom.train_jsonl", str(data / "train.jsonl"), "--custom.val_jsonl", "null",
            "--training.output_dir", str(out), "--training.add_version", "false",
            "--training.global_max_length", str(MAX_LENGTH), "--training.max_steps", str(STEPS),
            "--training.save_steps", str(STEPS), "--training.logging_steps", "1", "--training.log_data_order", "true",
            "--training.dataloader_num_workers", "0", "--tuner.lora_dropout", "0", *map(str, extra)]


# Every run takes the default fused loss: LoRA with ZeRO-3's partitioned frozen lm_head gathered for it, full
# tuning with the trained partitioned lm_head's gradient handed to DeepSpeed through the layer (linear_ce).
FULL = ("--tuner.tuner_type", "full", "--tuner.use_dora", "false")


def torchrun(model, data, out, stage, *extra, env=None):
    """The README's line for ``stage`` (0: DDP) with this file's data, steps and ``extra``."""
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "swift_plugins.sft", *readme_launch(stage), *run_args(model, data, out, *extra)]
    code, log = run(cmd, env or child_environment(), timeout=TIMEOUT)
    assert code == 0 or finished_then_aborted_at_exit(log), log[-8000:]
    return out, log


def finished_then_aborted_at_exit(log: str) -> bool:
    """A run whose main ran to its end (rank 0 logs it) and then a rank aborted in interpreter teardown
    ("terminate called without an active exception", exit -6): seen intermittently in CI's fresh
    clone after a complete CPU run (checkpoint saved, every step logged); an open problem of the
    CPU gloo teardown, not of training. Anything else that fails still fails the test, and each
    run's outputs are checked by the tests below."""
    return ("End time of running main" in log and "terminate called without an active exception" in log
            and "exitcode: -6" in log and "Traceback" not in log.split("End time of running main")[0])


@pytest.fixture(scope="module")
def runs(tiny_model_dir, data, tmp_path_factory, swift_cli):
    """Every run of this file, made once (module scope: one worker); name -> (output dir, log)."""
    base = tmp_path_factory.mktemp("ds-runs")
    m = tiny_model_dir
    out = {"ddp_lora": torchrun(m, data, base / "ddp_lora", 0),
           "z2_lora": torchrun(m, data, base / "z2_lora", 2),
           "z3_lora": torchrun(m, data, base / "z3_lora", 3, "--training.save_steps", "1")}
    out["z3_resumed"] = torchrun(m, data, base / "z3_resumed", 3, "--training.save_steps", "1",
                                 "--training.resume_from_checkpoint", base / "z3_lora" / "checkpoint-1")
    out["ddp_full"] = torchrun(m, data, base / "ddp_full", 0, *FULL)
    out["z3_full"] = torchrun(m, data, base / "z3_full", 3, *FULL)
    flat = base / "flat" / "z2_full.yaml"
    code, log = run([PY, "-m", "swift_plugins.sft", *readme_launch(2), *run_args(m, data, base / "z2_full", *FULL),
                     "--world_size", "2", "--export_flat", str(flat)], child_environment())
    assert code == 0, log
    env = dict(child_environment(), NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    code, log = run([swift_cli, "sft", str(flat)], env, timeout=TIMEOUT)
    assert code == 0, log[-8000:]
    out["z2_full"] = (base / "z2_full", log)
    return out


def steps(out):
    return [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]


def served(out, rank):
    return read_jsonl(out / "packing" / f"served_rank{rank}.jsonl")


def has_image(out, sample):
    samples = json.loads((out / "packing" / "samples.json").read_text())
    return "images" in ROWS[samples["lines"][sample] - 1]


# ----------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("tuner", ["lora", "full"])
def test_zero2_and_zero3_equal_ddp_per_step_with_the_configured_learning_rates(runs, tuner):
    from swift_plugins.training.fused_loss import ZERO3_TRAINED_LINE

    ddp = steps(runs[f"ddp_{tuner}"][0])
    assert len(ddp) == STEPS and all(math.isfinite(r["loss"]) for r in ddp)
    for stage in ("z2", "z3"):
        out, log = runs[f"{stage}_{tuner}"]
        zero = steps(out)
        assert [r["global_step/max_steps"] for r in zero] == [r["global_step/max_steps"] for r in ddp]
        for a, b in zip(zero, ddp):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (stage, a, b)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (stage, a, b)
        assert "swiftpack deepspeed: DeepSpeed on the CPU (training.use_cpu true)" in log
        assert "swiftpack loss: fused linear cross-entropy (chunked PyTorch" in log  # also full tuning under ZeRO-3
        assert (ZERO3_TRAINED_LINE in log) == (stage == "z3" and tuner == "full")  # the route that ran
        assert "world size 2" in log
        args = json.loads((out / "args.json").read_text())
        assert (args["fp16"], args["bf16"]) == (False, False)
        assert args["deepspeed"]["zero_optimization"]["stage"] == int(stage[1])
        assert (args["deepspeed"]["fp16"]["enabled"], args["deepspeed"]["bf16"]["enabled"]) == (False, False)
        # the groups by name: the same tensors and element counts under ZeRO-3's partitioned parameters
        assert groups_line(log) == groups_line(runs[f"ddp_{tuner}"][1])
    for out in (runs[f"{x}_{tuner}"][0] for x in ("ddp", "z2", "z3")):
        for s, r in enumerate(steps(out)):  # cosine from the peak, no warm-up: what each update applied
            factor = 0.5 * (1 + math.cos(math.pi * s / STEPS))
            assert {p: r[f"lr_{p}"] for p in LRS} == pytest.approx({p: lr * factor for p, lr in LRS.items()})


def groups_line(log):
    (line,) = {l.split("swiftpack multimodal optimizer groups: ", 1)[1] for l in log.splitlines()
               if "swiftpack multimodal optimizer groups: " in l}
    return line


# ----------------------------------------------------------------------------------- mixed packs
def test_each_step_pairs_a_text_only_pack_with_an_image_pack_under_zero3_as_under_ddp(runs):
    out, _ = runs["z3_lora"]
    ranks = [served(out, r) for r in (0, 1)]
    assert [[s["step"] for s in r] for r in ranks] == [[1, 2], [1, 2]]
    for a, b in zip(*ranks):
        kinds = sorted(any(has_image(out, i) for i in s["samples"][0]) for s in (a, b))
        assert kinds == [False, True], (a, b)  # one rank's pack text only, the other's with an image
    assert ranks == [served(runs["ddp_lora"][0], r) for r in (0, 1)]  # the same packs as DDP


# ----------------------------------------------------------------------------------- resume
def test_zero3_resume_serves_the_same_packs_with_the_same_losses(runs):
    full, resumed = runs["z3_lora"][0], runs["z3_resumed"][0]
    again = steps(resumed)
    assert [r["global_step/max_steps"] for r in again] == [f"{s}/{STEPS}" for s in range(2, STEPS + 1)]
    for a, b in zip(again, steps(full)[1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for rank in (0, 1):
        assert served(resumed, rank) == served(full, rank)[1:]


# ----------------------------------------------------------------------------------- saved weights
def test_the_zero3_adapter_loads_with_peft_and_holds_ddps_trained_weights(runs, tiny_model_dir):
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import Qwen3VLForConditionalGeneration

    zero = runs["z3_lora"][0] / f"checkpoint-{STEPS}"
    ddp = load_file(runs["ddp_lora"][0] / f"checkpoint-{STEPS}" / "adapter_model.safetensors")
    saved = load_file(zero / "adapter_model.safetensors")
    assert sorted(saved) == sorted(ddp) and all(t.numel() for t in saved.values())  # full tensors, not shards
    model = PeftModel.from_pretrained(Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir), zero)
    loaded = get_peft_model_state_dict(model)  # the adapter as peft holds it after loading, in the file's names
    assert sorted(loaded) == sorted(saved)
    lora_b = [n for n in ddp if "lora_B" in n]
    assert lora_b and all(ddp[n].abs().max() > 0 for n in lora_b)  # trained: LoRA B starts at zero
    for name, tensor in ddp.items():
        assert torch.equal(loaded[name], saved[name]), name
        assert torch.allclose(saved[name], tensor, rtol=1e-4, atol=1e-7), name


def test_the_zero3_full_fine_tune_saves_gathered_weights_that_transformers_loads(runs, tiny_model_dir):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    load = Qwen3VLForConditionalGeneration.from_pretrained
    zero, ddp = (load(runs[r][0] / f"checkpoint-{STEPS}") for r in ("z3_full", "ddp_full"))
    base = dict(load(tiny_model_dir).named_parameters())
    ddp_params = dict(ddp.named_parameters())
    changed = 0
    for name, p in zero.named_parameters():
        assert p.shape == base[name].shape, name
        assert torch.allclose(p, ddp_params[name], rtol=1e-4, atol=1e-6), name
        changed += not torch.equal(p, base[name])
    assert changed > len(base) // 2  # trained, not the initial weights


# ----------------------------------------------------------------------------------- plain swift sft
def test_export_flat_carries_the_cpu_deepspeed_derivation_to_plain_swift_sft(runs):
    out, log = runs["z2_full"]
    flat = yaml.safe_load((out.parent / "flat" / "z2_full.yaml").read_text())
    assert (flat["fp16"], flat["bf16"], flat["deepspeed"]["zero_optimization"]["stage"]) == (False, False, 2)
    sidecar = json.loads((out.parent / "flat" / "z2_full.swiftpack.json").read_text())
    assert sidecar["cpu_deepspeed"] is True and sidecar["world_size"] == 2
    assert log.count("swiftpack deepspeed: DeepSpeed on the CPU") == 1  # the plugin (ms-swift logs on rank 0)


# ----------------------------------------------------------------------------------- memory estimate
def group_counts(log):
    """{'llm/decay': (tensors, elements), ...} from the optimizer's start-up line."""
    out = {}
    for part in groups_line(log).split("; "):
        name, rest = part.split(": ", 1)
        tensors, elements = rest.split(", ")[:2]
        out[name] = (int(tensors.split()[0]), int(elements.split()[0]))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_partitions_are_the_memory_estimates_zero_terms(runs, tiny_model_dir, stage):
    """What each rank holds of the optimizer state (DeepSpeed's own checkpoint of the full fine-tune) is
    swift_plugins.analysis.memory's ZeRO term: master + 2 Adam states of trainable / world_size, per group."""
    import dataclasses

    import torch

    from swift_plugins.analysis.memory import MemorySetup, ModelShape, estimate_step_memory

    out, log = runs[f"z{stage}_full"]
    counts = group_counts(log)
    ranks = [torch.load(out / f"checkpoint-{STEPS}" / f"global_step{STEPS}" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
                        map_location="cpu", weights_only=False)["optimizer_state_dict"] for r in (0, 1)]
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    sizes = [[t.numel() for t in r[key]] for r in ranks]
    assert [len(s) for s in sizes] == [len(counts)] * 2  # one DeepSpeed group per swiftpack group, names intact
    for g, (name, (tensors, elements)) in enumerate(counts.items()):
        assert sizes[0][g] == sizes[1][g]  # an even split
        assert 0 <= 2 * sizes[0][g] - elements <= max(tensors, 4), name  # plus padding only
    trainable = sum(e for _, e in counts.values())
    base = ModelShape.from_config(tiny_model_dir)
    shape = dataclasses.replace(base, vision_params=trainable - base.llm_params)  # the model's real count
    assert shape.total_params == trainable
    est = estimate_step_memory(shape, 1, MemorySetup(tuner="full", zero_stage=stage, world_size=2))
    held = 4 * 3 * sum(sizes[0])  # fp32 master partition + exp_avg + exp_avg_sq, 4 bytes each
    assert est["optimizer"] == pytest.approx(held, rel=1e-3)
    if stage == 3:  # each rank's parameters: its partition (the fp32 master of a full fine-tune is that shape)
        assert est["weights"] / 2 == pytest.approx(sum(sizes[0]), rel=1e-3)  # the estimate counts 2 bytes each
    else:  # ZeRO-2 keeps a whole replica on each rank
        module = torch.load(out / f"checkpoint-{STEPS}" / f"global_step{STEPS}" / "mp_rank_00_model_states.pt",
                            map_location="cpu", weights_only=False)["module"]
        unique = {t.data_ptr(): t.numel() for t in module.values()}  # the tied embedding once
        assert est["weights"] / 2 == sum(unique.values()) == trainable
