"""swift_plugins.training.linear_ce: the chunked loss equals the full-logits loss (fp32, CPU).

Loss and gradients (hidden states; lm_head when it trains; tied embeddings) against
``F.cross_entropy`` over the full logits, with -100 labels, several packs and gradient accumulation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from swift_plugins.training.linear_ce import (BACKEND_CHUNKED, IGNORE_INDEX, LinearCrossEntropy, gathered,
                                              gradient_through_layer, linear_cross_entropy, loss_backend,
                                              shift_targets)

REL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_worked_example_of_the_docstring():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], requires_grad=True)
    loss, token_loss, preds, no_grad_w = LinearCrossEntropy.apply(hidden, weight, torch.tensor([1]), 4)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6) and preds.tolist() == [1]
    assert token_loss.tolist() == pytest.approx([-math.log(0.75)], rel=1e-6)
    loss.backward()
    # d loss / d logits = [1/4, -1/4]; logits = W @ h -> d/dW = dlogits outer h, d/dh = dlogits @ W
    assert weight.grad.flatten().tolist() == pytest.approx([0.25, 0.0, -0.25, 0.0], abs=1e-6)
    assert hidden.grad.flatten().tolist() == pytest.approx([-0.25 * math.log(3), 0.0], abs=1e-6)
    assert no_grad_w.numel() == 0
    # weight_grad_out: the same weight gradient handed out for a detached weight (the ZeRO-3 route)
    *_, grad_w = LinearCrossEntropy.apply(hidden.detach(), weight.detach(), torch.tensor([1]), 4, True)
    assert grad_w.flatten().tolist() == pytest.approx([0.25, 0.0, -0.25, 0.0], abs=1e-6)


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
    loss = LinearCrossEntropy.apply(hidden, weight, torch.randint(0, 7, (10,)), 3)[0]
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


def test_backend_is_chunked_pytorch_without_liger():
    assert loss_backend(torch.device("cpu")) == BACKEND_CHUNKED
    assert loss_backend(torch.device("cuda")) == BACKEND_CHUNKED  # liger-kernel is not installed here


def test_a_plain_weight_is_used_as_it_is():
    weight = torch.nn.Parameter(torch.ones(3, 2))
    with gathered(weight) as w:
        assert w is weight


ZERO3 = """
import os, sys
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import torch, torch.nn.functional as F, deepspeed
from swift_plugins.training.linear_ce import linear_cross_entropy
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
full = torch.randn(50, 8)
h = torch.randn(30, 8)
t = torch.randint(0, 50, (30,))
t[::4] = -100
h_ref = h.clone().requires_grad_(True)
w_ref = full.clone().requires_grad_(True)
ref = F.cross_entropy(h_ref @ w_ref.T, t, reduction="sum")
ref.backward()
# persistence threshold 0: by default DeepSpeed keeps parameters under 1e5 elements gathered for good
config = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "train_batch_size": 1,
          "gradient_clipping": 0.0, "zero_allow_untested_optimizer": True}
with deepspeed.zero.Init(config_dict_or_path=config):
    head = torch.nn.Linear(8, 50, bias=False)
with deepspeed.zero.GatheredParameters([head.weight], modifier_rank=0):
    head.weight.data.copy_(full)
assert head.weight.shape == (0,), head.weight.shape  # partitioned

def check(loss, hg):
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item()), (loss.item(), ref.item())
    assert (hg - h_ref.grad).abs().max() <= 1e-5 * h_ref.grad.abs().max()
    assert head.weight.shape == (0,)  # partitioned again after the loss

# LoRA / DoRA: a frozen lm_head, gathered for the loss
head.weight.requires_grad_(False)
h1 = h.clone().requires_grad_(True)
loss = linear_cross_entropy(h1, head.weight, t, 7)[0]
loss.backward()
check(loss, h1.grad)
print("frozen ok")

# full tuning: DeepSpeed's engine trains the partitioned lm_head; SGD(lr=1) moves it by its gradient
head.weight.requires_grad_(True)
engine, *_ = deepspeed.initialize(model=head, optimizer=torch.optim.SGD(head.parameters(), lr=1.0), config=config)
h2 = h.clone().requires_grad_(True)
loss = linear_cross_entropy(h2, head.weight, t, 7, layer=head)[0]
engine.backward(loss)
check(loss, h2.grad)
engine.step()
with deepspeed.zero.GatheredParameters([head.weight]):
    moved = full - head.weight.detach()
err = ((moved - w_ref.grad).abs().max() / w_ref.grad.abs().max()).item()
assert err <= 1e-5, err
print("trained ok", err)
"""


def test_a_zero3_partitioned_lm_head_is_gathered_and_a_trained_one_gets_its_gradient_from_deepspeed(repo_root):
    """DeepSpeed ZeRO-3 in one CPU process (gloo, world size 1): a real partitioned lm_head weight,
    frozen (LoRA) and trained by DeepSpeed's engine (full tuning: the step applies the gradient)."""
    import subprocess
    import sys

    from helpers import child_environment, free_port

    proc = subprocess.run([sys.executable, "-c", ZERO3, str(free_port())], cwd=repo_root, env=child_environment(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "frozen ok" in lines
    assert lines[-1].startswith("trained ok")


def test_a_trained_partitioned_weight_without_its_layer_is_a_programming_error():
    weight = torch.nn.Parameter(torch.ones(3, 2))
    weight.ds_id = 0  # what DeepSpeed's zero.Init marks a partitioned parameter with
    with pytest.raises(ValueError, match="needs the layer that owns it"):
        linear_cross_entropy(torch.ones(4, 2), weight, torch.zeros(4, dtype=torch.long), 2)


def test_only_a_trained_partitioned_weight_with_gradients_on_goes_through_its_layer():
    plain = torch.nn.Parameter(torch.ones(3, 2))
    marked = torch.nn.Parameter(torch.ones(3, 2))
    marked.ds_id = 0  # what DeepSpeed's zero.Init marks a partitioned parameter with
    assert not gradient_through_layer(plain) and gradient_through_layer(marked)
    with torch.no_grad():  # evaluation: the gathered weight is only read
        assert not gradient_through_layer(marked)
    marked.requires_grad_(False)  # LoRA / DoRA: a frozen lm_head
    assert not gradient_through_layer(marked)
