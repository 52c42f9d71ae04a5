"""swift_plugins.training.fused_loss: the chunked loss equals the full-logits loss (fp32, CPU).

Unit level: loss and gradients (hidden states; lm_head when it trains; tied embeddings) against
``F.cross_entropy`` over the full logits, with -100 labels, several packs and gradient accumulation.
Run level: three training steps of the tiny model give the same per-step losses, grad norms and
token_acc with ``training.fused_loss`` true and false; eval loss and ``eval_token_mean_loss`` too.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import child_environment, make_lvis_jsonl, read_jsonl, run
from swift_plugins.errors import UserError
from swift_plugins.names import FUSED_LOSS
from swift_plugins.training.fused_loss import (BACKEND_CHUNKED, IGNORE_INDEX, LinearCrossEntropy, linear_cross_entropy,
                                               loss_backend, loss_path_line, output_weight, shift_targets)

REL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_worked_example_of_the_docstring():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], requires_grad=True)
    loss, token_loss, preds = LinearCrossEntropy.apply(hidden, weight, torch.tensor([1]), 4)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6) and preds.tolist() == [1]
    assert token_loss.tolist() == pytest.approx([-math.log(0.75)], rel=1e-6)
    loss.backward()
    # d loss / d logits = [1/4, -1/4]; logits = W @ h -> d/dW = dlogits outer h, d/dh = dlogits @ W
    assert weight.grad.flatten().tolist() == pytest.approx([0.25, 0.0, -0.25, 0.0], abs=1e-6)
    assert hidden.grad.flatten().tolist() == pytest.approx([-0.25 * math.log(3), 0.0], abs=1e-6)


def test_shift_targets_moves_labels_one_left_and_ignores_the_last_position():
    assert shift_targets(torch.tensor([[-100, 5, 6], [1, -100, 2]])).tolist() == [[5, 6, -100], [-100, 2, -100]]


def packs(seed=0, rows=(700, 1300, 500), hidden=16, vocab=1000):
    """Micro-batches of one packed row each: a -100 at every sample start and on prompt spans."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in rows:
        labels = torch.randint(0, vocab, (1, n), generator=g)
        for start in range(0, n, 97):  # a sample every 97 tokens: its first label and a prompt span ignored
            labels[0, start:start + 1 + start % 5] = IGNORE_INDEX
        out.append((torch.randn(1, n, hidden, generator=g), labels))
    return out


def full_step(micro, weight, num_items):
    """Today's path: full logits, fp32, sum over the step's tokens / num_items_in_batch, per micro-batch."""
    grads = []
    for hidden, labels in micro:
        h = hidden.clone().requires_grad_(True)
        logits = (h @ weight.T).float()
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), shift_targets(labels).view(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / num_items
        loss.backward()
        grads.append((loss.detach(), h.grad))
    return grads


def fused_step(micro, weight, num_items, chunk):
    grads = []
    for hidden, labels in micro:
        h = hidden.clone().requires_grad_(True)
        loss_sum, _, _ = linear_cross_entropy(h.view(-1, h.shape[-1]), weight, shift_targets(labels).view(-1), chunk)
        loss = loss_sum / num_items
        loss.backward()
        grads.append((loss.detach(), h.grad))
    return grads


@pytest.mark.parametrize("trainable", [True, False])
def test_loss_and_gradients_equal_the_full_logits_over_an_accumulated_step(trainable):
    micro = packs()  # 3 micro-batches = gradient accumulation 3, chunks of 256 cross every pack
    num_items = sum(int((shift_targets(lb) != IGNORE_INDEX).sum()) for _, lb in micro)
    w_full = torch.randn(1000, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(trainable)
    w_fused = w_full.detach().clone().requires_grad_(trainable)
    full, fused = full_step(micro, w_full, num_items), fused_step(micro, w_fused, num_items, chunk=256)
    for (loss_a, gh_a), (loss_b, gh_b) in zip(full, fused):
        assert loss_b.item() == pytest.approx(loss_a.item(), rel=REL)
        assert rel_err(gh_b, gh_a) < REL
    if trainable:
        assert rel_err(w_fused.grad, w_full.grad) < REL
    else:
        assert w_fused.grad is None and w_full.grad is None


def test_a_frozen_lm_head_computes_no_weight_gradient():
    hidden = torch.randn(10, 4, requires_grad=True)
    weight = torch.randn(7, 4)
    loss, _, _ = LinearCrossEntropy.apply(hidden, weight, torch.randint(0, 7, (10,)), 3)
    assert loss.grad_fn is not None
    saved = loss.grad_fn.saved_tensors
    assert [t.shape for t in saved] == [hidden.shape]  # only grad_h kept: no (vocab, hidden) weight gradient


def test_tied_embeddings_get_both_gradients():
    """The tiny model ties lm_head to the embedding: its gradient sums the loss's and the embedding's."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (1, 300), generator=g)
    labels = ids.clone()
    labels[0, ::11] = IGNORE_INDEX
    grads = []
    for fused in (False, True):
        emb = torch.nn.Embedding(50, 8)
        torch.nn.init.normal_(emb.weight, generator=torch.Generator().manual_seed(4))
        hidden = torch.tanh(emb(ids))
        targets = shift_targets(labels).view(-1)
        if fused:
            loss = linear_cross_entropy(hidden.view(-1, 8), emb.weight, targets, 64)[0]
        else:
            loss = F.cross_entropy(hidden.view(-1, 8) @ emb.weight.T, targets, reduction="sum")
        loss.backward()
        grads.append((loss.item(), emb.weight.grad))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=REL) and rel_err(grads[1][1], grads[0][1]) < REL


def test_bf16_follows_the_upcast_full_path():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(600, 32, generator=g).bfloat16().requires_grad_(True)
    weight = torch.randn(500, 32, generator=g).bfloat16()
    targets = torch.randint(0, 500, (600,), generator=g)
    loss, _, preds = linear_cross_entropy(hidden, weight, targets, 128)
    full_logits = (hidden.detach() @ weight.T).float()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(full_logits, targets, reduction="sum").item(), rel=1e-4)
    assert torch.equal(preds, full_logits.argmax(-1))
    loss.backward()
    assert hidden.grad.dtype == torch.bfloat16


def test_backend_is_chunked_pytorch_without_liger_and_the_log_names_the_path():
    assert loss_backend(torch.device("cpu")) == BACKEND_CHUNKED
    assert loss_backend(torch.device("cuda")) == BACKEND_CHUNKED  # liger-kernel is not installed here
    assert "chunked PyTorch, 1024 tokens per chunk" in loss_path_line("cpu", fused=True)
    assert "full logits" in loss_path_line("cpu", fused=False)


def test_an_adapter_on_lm_head_is_refused(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert output_weight(model) is model.lm_head.weight
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(UserError, match=r"^training.fused_loss: the output layer is a .*set training.fused_loss false"):
        output_weight(adapted)


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
