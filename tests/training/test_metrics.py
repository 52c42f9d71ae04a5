"""swift_plugins.training.metrics: per-row token losses by hand, and BatchRecorder on a real transformers Trainer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from swift_plugins.training.metrics import EVAL_METRICS, BatchRecorder, row_token_losses
from swift_plugins.training.template import SERVED_KEY

VOCAB = 7


def test_hand_logits_shift_the_labels_and_ignore_minus_100():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, -9.0, 50.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    # logits[0] predicts labels[1] = 0: log(e^2 + 2) - 2; logits[1] predicts labels[2] = 1: log(e + 2) - 1;
    # logits[2] predicts nothing (the last position), labels[0] is predicted by nothing
    want = (math.log(math.e ** 2 + 2) - 2) + (math.log(math.e + 2) - 1)
    out = row_token_losses(logits, labels)
    assert out.dtype == torch.float64 and out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(want, rel=1e-6) and out[0, 1].item() == 2
    assert out[0, 0].item() == pytest.approx(F.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="sum").item())
    assert labels.tolist() == [[-100, 0, 1]]  # the caller's labels are not shifted in place


def test_uniform_logits_cost_log_vocab_per_label_token():
    logits = torch.zeros(2, 5, 4)
    logits[:, -1, 0] = 1000.0  # the last position predicts nothing: no effect
    labels = torch.tensor([[1, 2, 3, 0, 1], [-100, -100, 2, -100, 3]])
    # row 0: targets [2, 3, 0, 1] -> 4 tokens of log 4; row 1: targets [-100, 2, -100, 3] -> 2 tokens
    out = row_token_losses(logits, labels)
    assert out[:, 1].tolist() == [4.0, 2.0]
    assert out[:, 0].tolist() == pytest.approx([4 * math.log(4), 2 * math.log(4)], rel=1e-6)


def test_rows_longer_than_a_chunk_equal_one_cross_entropy_of_the_whole_row():
    g = torch.Generator().manual_seed(0)
    T = 2100  # three chunks of 1024 tokens: the shift crosses both chunk boundaries
    logits = torch.randn(3, T, 5, generator=g)
    labels = torch.randint(0, 5, (3, T), generator=g)
    labels[0, torch.randint(0, T, (300,), generator=g)] = -100
    labels[1, 11:] = -100   # only the first chunk has targets: the others are skipped
    labels[2, :] = -100     # nothing to predict: (0, 0)
    out = row_token_losses(logits, labels)
    for b in range(2):
        want = F.cross_entropy(logits[b, :-1].double(), labels[b, 1:], ignore_index=-100, reduction="sum").item()
        assert out[b, 0].item() == pytest.approx(want, rel=1e-5), b
        assert out[b, 1].item() == int((labels[b, 1:] != -100).sum())
    assert out[1, 1].item() == 10 and out[2].tolist() == [0.0, 0.0]


def test_bf16_logits_are_upcast():
    logits = torch.randn(1, 6, VOCAB, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    labels = torch.tensor([[0, 1, 2, 3, -100, 5]])
    out = row_token_losses(logits, labels)
    want = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100, reduction="sum").item()
    assert out.dtype == torch.float64 and out[0].tolist() == pytest.approx([want, 4.0], rel=1e-6)


# --------------------------------------------------------------------------- BatchRecorder
class TinyLM(torch.nn.Module):
    """logits = an embedding of the input ids; loss = ms-swift's causal token mean (``labels`` argument)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, VOCAB)
        torch.nn.init.normal_(self.emb.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, labels=None):  # no swiftpack_served argument: the recorder must pop it
        from transformers.modeling_outputs import CausalLMOutput

        logits = self.emb(input_ids)
        loss = None if labels is None else F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)


def eval_rows(served=True):
    """5 rows of 6 tokens; row i masks its first i % 3 + 1 labels -> 5, 4, 3, 5, 4 = 21 label tokens after the
    shift; served samples 1, 2, 1, 2, 1 = 7."""
    rows = []
    for i in range(5):
        ids = torch.tensor([(i + j) % VOCAB for j in range(6)])
        labels = ids.clone()
        labels[:i % 3 + 1] = -100
        rows.append({"input_ids": ids, "labels": labels, **({SERVED_KEY: torch.tensor([i, 1 + i % 2, 6])} if served
                                                               else {})})
    return rows


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_trainer(tmp_path, rows):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                             remove_unused_columns=False)
    trainer = Trainer(model=TinyLM(), args=args, eval_dataset=rows, data_collator=collate)
    # Once ms-swift is imported (other tests in this process) its patched progress / printer callbacks
    # log only after on_train_begin; an evaluate() without training needs neither.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in [c for c in trainer.callback_handler.callbacks if isinstance(c, (ProgressCallback, PrinterCallback))]:
        trainer.remove_callback(callback)
    return trainer


def token_sum_by_hand(model, rows):
    with torch.no_grad():
        return sum(F.cross_entropy(model(r["input_ids"][None]).logits[0, :-1].double(), r["labels"][1:],
                                   reduction="sum").item() for r in rows)


def test_eval_adds_the_token_mean_over_the_whole_set(tmp_path):
    rows = eval_rows()
    trainer = make_trainer(tmp_path, rows)
    BatchRecorder.attach(trainer)
    metrics = trainer.evaluate()
    assert EVAL_METRICS == ("token_mean_loss", "tokens", "samples")
    assert (metrics["eval_tokens"], metrics["eval_samples"]) == (21, 7)
    assert type(metrics["eval_tokens"]) is int and type(metrics["eval_samples"]) is int
    assert metrics["eval_token_mean_loss"] == pytest.approx(token_sum_by_hand(trainer.model, rows) / 21, rel=1e-6)
    again = trainer.evaluate(metric_key_prefix="val")  # a second loop starts from zero, under its prefix
    assert (again["val_tokens"], again["val_samples"]) == (21, 7)
    assert again["val_token_mean_loss"] == pytest.approx(metrics["eval_token_mean_loss"])


def test_without_served_rows_every_row_is_one_sample(tmp_path):
    trainer = make_trainer(tmp_path, eval_rows(served=False))
    BatchRecorder.attach(trainer)
    metrics = trainer.evaluate()
    assert (metrics["eval_tokens"], metrics["eval_samples"]) == (21, 5)


def test_attach_wraps_a_trainer_once(tmp_path):
    trainer = make_trainer(tmp_path, eval_rows())
    original = trainer.compute_loss
    recorder = BatchRecorder.attach(trainer)
    assert BatchRecorder.attach(trainer) is recorder
    assert trainer.compute_loss == recorder.compute_loss and recorder._compute_loss == original
    assert trainer.evaluation_loop == recorder.evaluation_loop
    assert trainer.evaluate()["eval_tokens"] == 21  # not counted twice


def test_training_batches_record_their_served_rows_until_taken(tmp_path):
    rows = eval_rows()
    trainer = make_trainer(tmp_path, rows)
    recorder = BatchRecorder.attach(trainer)
    model = trainer.model
    model.train()
    first, second = collate(rows[:2]), collate(rows[2:5])
    loss = trainer.compute_loss(model, first)
    assert SERVED_KEY not in first  # popped before the model sees the batch
    with torch.no_grad():
        assert loss.item() == pytest.approx(model(**first).loss.item())
    trainer.compute_loss(model, second)
    served = recorder.take_train_served()
    assert [s.tolist() for s in served] == [[[0, 1, 6], [1, 2, 6]], [[2, 1, 6], [3, 2, 6], [4, 1, 6]]]
    assert recorder.take_train_served() == []
    model.eval()  # outside an evaluation loop nothing is recorded, the loss passes through
    out = trainer.compute_loss(model, collate(rows[:1]), return_outputs=True)
    assert isinstance(out, tuple) and recorder.take_train_served() == []
