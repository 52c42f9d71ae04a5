"""swift_plugins.training.fused_loss: the fused loss inside ms-swift (the chunked function itself:
tests/training/test_linear_ce.py).

Three training steps of the tiny model give the same per-step losses, grad norms and
token_acc with ``training.fused_loss`` true and false; eval loss and ``eval_token_mean_loss`` too.
"""
from __future__ import annotations

import sys

import pytest
import torch

from helpers import child_environment, make_lvis_jsonl, read_jsonl, run
from swift_plugins.errors import UserError
from swift_plugins.names import FUSED_LOSS
from swift_plugins.training.fused_loss import loss_path_line, output_layer

def test_the_log_names_the_path():
    assert "chunked PyTorch, 1024 tokens per chunk" in loss_path_line("cpu", fused=True)
    assert "full logits" in loss_path_line("cpu", fused=False)


def test_an_adapter_on_lm_head_is_refused(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert output_layer(model) is model.lm_head
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(UserError, match=r"^training.fused_loss: the output layer is a .*set training.fused_loss false"):
        output_layer(adapted)


# ------------------------------------------------------------------------- three training steps
STEPS = 3


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    """The same packed run (LoRA, gradient checkpointing, GA 2, eval at start and end) with each loss path."""
    data = tmp_path_factory.mktemp("loss-data")
    make_lvis_jsonl(data, 10, object_counts=[1, 3, 2, 6, 4])
    make_lvis_jsonl(data, 3, "val.jsonl")
    runs = {}
    for fused in ("true", "false"):
        out = tmp_path_factory.mktemp(f"fused-{fused}") / "out"
        code, log = run([sys.executable, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_packing.yaml",
                         "--model.model", str(tiny_model_dir), "--custom.train_jsonl", str(data / "train.jsonl"),
                         "--custom.val_jsonl", str(data / "val.jsonl"), "--training.output_dir", str(out),
                         "--training.add_version", "false", "--training.global_max_length", "400",
                         "--training.max_steps", str(STEPS), "--training.effective_batch_size", "2",
                         "--training.gradient_checkpointing", "true", "--training.save_strategy", "no",
                         "--training.eval_strategy", "steps",
                         "--training.eval_steps", str(STEPS), "--swift.eval_on_start", "true",
                         "--training.fused_loss", fused], child_environment(), timeout=600)
        assert code == 0, log[-6000:]
        runs[fused] = (read_jsonl(out / "logging.jsonl"), log)
    return runs


def test_three_steps_log_the_same_losses_and_token_acc_either_way(two_runs):
    (fused, fused_log), (full, full_log) = two_runs["true"], two_runs["false"]
    assert "swiftpack loss: fused linear cross-entropy (chunked PyTorch" in fused_log
    assert "swiftpack loss: full logits" in full_log and "fused linear" not in full_log
    train = [[r for r in rows if "loss" in r] for rows in (fused, full)]
    assert [len(t) for t in train] == [STEPS, STEPS]
    for a, b in zip(*train):
        assert a["global_step/max_steps"] == b["global_step/max_steps"]
        for key in ("loss", "grad_norm", "token_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a, b)


def test_eval_loss_and_token_mean_loss_are_unchanged(two_runs):
    evals = [[r for r in rows if "eval_loss" in r] for rows in (two_runs["true"][0], two_runs["false"][0])]
    assert [len(e) for e in evals] == [2, 2]  # at the start and after the last step
    for a, b in zip(*evals):
        assert (a["eval_tokens"], a["eval_samples"]) == (b["eval_tokens"], b["eval_samples"])
        for key in ("eval_loss", "eval_token_mean_loss", "eval_token_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a, b)


def test_the_loss_is_registered_with_ms_swift():
    from swift.loss import loss_map

    from swift_plugins.training import register_all
    from swift_plugins.training.fused_loss import FusedCrossEntropyLoss

    register_all()
    assert loss_map[FUSED_LOSS] is FusedCrossEntropyLoss


def test_an_eval_metric_that_reads_logits_is_refused():
    from swift.trainers import Seq2SeqTrainingArguments

    from swift_plugins.training.fused_loss import FusedCrossEntropyLoss

    args = Seq2SeqTrainingArguments(output_dir="unused", eval_metric="acc", report_to=[], use_cpu=True)
    with pytest.raises(UserError, match=r"^swift.eval_metric: acc reads the logits, which the fused loss never builds "
                                        r"\(set training.fused_loss false\)$"):
        FusedCrossEntropyLoss(args, trainer=object())
