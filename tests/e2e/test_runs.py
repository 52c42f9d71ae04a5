"""End-to-end runs on the tiny model (CPU), each kind of run once, every assertion on its files and logs.

Training data: LVIS detection records (one dense, split into pieces) mixed with ms-swift messages
rows (captions, multi-image, multi-turn; one too long for the packs, dropped and reported).

    packed     python -m swift_plugins.sft, packing, 1 process, val set, eval at start, save delay
    resumed    the packed run again from its checkpoint-2: the same packs and losses afterwards
    torchrun   2 ranks, packing: each rank trains exactly its dealt packs; eval with an uneven last batch
    refused    the 2-rank checkpoint resumed by 1 process: a one-line error, exit status 2
    padded     python -m swift_plugins.sft, padding: ms-swift's own batches, the same token-mean eval loss
    plain      plain `swift sft` on the --export_flat YAML: the bundled sample, packed, TensorBoard
"""
from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest
import yaml

from helpers import child_environment, free_port, make_lvis_jsonl, msg, read_jsonl, run, save_image
from swift_plugins.packing.samples import epoch_order

pytestmark = pytest.mark.e2e
PY = sys.executable
# Varied object counts -> varied lengths, so packs hold several samples; 40 objects is a dense
# record over global_max_length 640 that packing_overlong split cuts into pieces.
COUNTS = [1, 3, 2, 6, 1, 4, 2, 1, 5, 2, 3, 1, 40, 2]
MAX_LENGTH = 640
SEED = 42  # training.seed of the tiny configs: packing_seed null -> the seed
LONG_ANSWER = " ".join(f"word{i % 7}" for i in range(400))  # one messages row longer than MAX_LENGTH
CHAT_TRAIN = [
    {"messages": [msg("user", "<image>Describe the image."), msg("assistant", "A blue square.")], "images": ["c0.png"]},
    {"messages": [msg("system", "Be brief."), msg("user", "Compare <image> and <image>."), msg("assistant", "Same.")],
     "images": ["c1.png", "c0.png"]},
    {"messages": [msg("user", "<image>What is it?"), msg("assistant", "A box."), msg("user", "Colour?"),
                  msg("assistant", "Blue.")], "images": ["c1.png"]},
    {"messages": [msg("user", "<image>Tell me everything."), msg("assistant", LONG_ANSWER)], "images": ["c0.png"]},
    {"messages": [msg("user", "What is 2+2?"), msg("assistant", "4")]},
]
CHAT_VAL = CHAT_TRAIN[:3]
VAL_LVIS = 8  # with CHAT_VAL: 3 val packs at MAX_LENGTH, an uneven last eval batch across 2 ranks
VAL_RECORDS = VAL_LVIS + len(CHAT_VAL)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e-data")
    make_lvis_jsonl(folder, len(COUNTS), object_counts=COUNTS)
    make_lvis_jsonl(folder, VAL_LVIS, "val.jsonl")
    save_image(folder / "c0.png", (100, 70))
    save_image(folder / "c1.png", (64, 90))
    for name, rows in (("chat.jsonl", CHAT_TRAIN), ("chat_val.jsonl", CHAT_VAL)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def train_files(data):
    return [str(data / "train.jsonl"), str(data / "chat.jsonl")]


def common(model, data, out):
    return ["--model.model", str(model), "--custom.train_jsonl", *train_files(data),
            "--custom.val_jsonl", str(data / "val.jsonl"), str(data / "chat_val.jsonl"), "--training.output_dir", str(out),
            "--training.add_version", "false", "--training.logging_steps", "1", "--swift.eval_on_start", "true",
            "--training.eval_steps", "1000"]


def packing_args(model, data, out, *extra):
    return ["--config", "configs/tiny/sft_packing.yaml", *common(model, data, out),
            "--training.global_max_length", str(MAX_LENGTH), "--training.packing_overlong", "split",
            "--training.dataloader_num_workers", "1", "--training.log_data_order", "true", *map(str, extra)]


def ok(cmd, timeout=900):
    code, log = run(cmd, child_environment(), timeout=timeout)
    assert code == 0, log[-8000:]
    return log


def train_logs(out):
    return [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r]


def start_eval(out):
    (row,) = [r for r in read_jsonl(out / "logging.jsonl") if "eval_token_mean_loss" in r and r["global_step/max_steps"].startswith("0/")]
    return row


def served(out, rank):
    return read_jsonl(out / "packing" / f"served_rank{rank}.jsonl")


def dealt_order(out, world_size, epoch=0):
    """The deal, recomputed from the run's saved plan and sample lengths."""
    plan = json.loads((out / "packing" / "plan.json").read_text())
    samples = json.loads((out / "packing" / "samples.json").read_text())
    return epoch_order(plan["packs"], samples["lengths"], world_size, seed=SEED, epoch=epoch), samples


@pytest.fixture(scope="module")
def packed(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "out"
    log = ok([PY, "-m", "swift_plugins.sft", *packing_args(tiny_model_dir, data, out, "--training.max_steps", "null",
                                                           "--training.num_train_epochs", "1",
                                                           "--training.save_steps", "1",
                                                           "--training.save_delay_steps", "2",
                                                           "--training.save_total_limit", "null")])
    return out, log


@pytest.fixture(scope="module")
def torchrun(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "out"
    log = ok([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
              "-m", "swift_plugins.sft", *packing_args(tiny_model_dir, data, out, "--training.max_steps", "2",
                                                       "--training.save_steps", "1")])
    return out, log


@pytest.fixture(scope="module")
def padded(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("padded") / "out"
    log = ok([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_padding.yaml",
              *common(tiny_model_dir, data, out), "--training.max_steps", "2", "--training.save_steps", "2"])
    return out, log


# ----------------------------------------------------------------------------------- packed
def test_packed_run_accounts_for_every_record_and_trains_each_once(packed, data):
    out, log = packed
    summary = json.loads((out / "packing" / "summary.json").read_text())["train"]
    assert summary["records_read"] == len(COUNTS) + len(CHAT_TRAIN) and summary["records_skipped"] == 0
    assert summary["records_split"] == 1 and summary["samples"] > len(COUNTS) + len(CHAT_TRAIN)
    assert summary["samples"] == summary["samples_packed"] + summary["samples_dropped"] and summary["samples_dropped"] == 1
    lvis, chat = summary["files"]
    assert (lvis["records_by_kind"], lvis["samples_dropped"]) == ({"lvis": len(COUNTS), "messages": 0}, 0)
    assert (chat["records_by_kind"], chat["samples"], chat["samples_packed"]) == (
        {"lvis": 0, "messages": len(CHAT_TRAIN)}, len(CHAT_TRAIN), len(CHAT_TRAIN) - 1)
    (dropped,) = read_jsonl(out / "packing" / "dropped_samples.jsonl")  # the long messages row, with its reason
    assert (dropped["split"], dropped["jsonl"], dropped["line"], dropped["part"]) == ("train", str(data / "chat.jsonl"),
                                                                                      4, -1)
    assert dropped["reason"] == f"overlong: {dropped['length']} > max_length {MAX_LENGTH}"
    plan = json.loads((out / "packing" / "plan.json").read_text())
    assert sum(len(p) for p in plan["packs"]) == summary["samples_packed"]
    assert summary["avg_samples_per_pack"] > 1.5
    logs = train_logs(out)
    assert logs and all(math.isfinite(r["loss"]) for r in logs)
    assert sum(r["samples_per_step"] for r in logs) == summary["samples_packed"]  # one epoch: each sample once
    samples = json.loads((out / "packing" / "samples.json").read_text())
    trained = sorted(i for s in served(out, 0) for pack in s["samples"] for i in pack)
    assert trained == sorted(i for p in json.loads((out / "packing" / "plan.json").read_text())["packs"] for i in p)
    assert {samples["kinds"][i] for i in trained} == {0, 1}  # packs of detection records and messages rows
    assert "swiftpack packing: " in log and "dropped/skipped list" in log
    # the tiny config's sdpa becomes swiftpack_varlen with packing, said once at start-up
    assert log.count("swiftpack attention: model.attn_impl sdpa -> swiftpack_varlen with training.packing") == 1
    assert json.loads((out / "args.json").read_text())["attn_impl"] == "swiftpack_varlen"


def test_packed_run_trains_the_dealt_packs_and_logs_them_per_step(packed):
    out, _ = packed
    order, samples = dealt_order(out, 1)
    steps = served(out, 0)
    logs = {r["global_step/max_steps"].split("/")[0]: r for r in train_logs(out)}
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) == [int(k) for k in logs]
    positions = [p for s in steps for p in s["positions"]]
    assert positions == list(range(len(order)))  # in order, every pack once (effective batch 2 -> 2 per step)
    for s in steps:
        assert [order[p] for p in s["positions"]] == s["samples"]  # what the dataset served is the deal
        assert s["tokens"] == [sum(samples["lengths"][i] for i in order[p]) for p in s["positions"]]
        row = logs[str(s["step"])]
        assert row["samples_per_step"] == sum(map(len, s["samples"]))
        assert row["packing_efficiency"] == pytest.approx(sum(s["tokens"]) / (len(s["tokens"]) * MAX_LENGTH),
                                                          abs=1e-6)


def test_packed_run_saves_from_the_delay_on_with_its_packing_state(packed):
    out, _ = packed
    n_steps = len(train_logs(out))
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == list(range(2, n_steps + 1))
    state = json.loads((out / "checkpoint-2" / "swiftpack_packing.json").read_text())
    assert state["world_size"] == 1 and state["num_packs"] == len(json.loads((out / "packing" / "plan.json")
                                                                           .read_text())["packs"])
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_packed_eval_token_mean_counts_every_val_sample_once(packed):
    out, _ = packed
    row = start_eval(out)
    assert row["eval_samples"] == VAL_RECORDS and row["eval_tokens"] > 0
    assert math.isfinite(row["eval_token_mean_loss"]) and math.isfinite(row["eval_loss"])


def test_resume_continues_the_same_plan(packed, tiny_model_dir, data):
    out, _ = packed
    resumed = out.parent / "resumed"
    ok([PY, "-m", "swift_plugins.sft", *packing_args(tiny_model_dir, data, resumed, "--training.max_steps", "null",
                                                     "--training.num_train_epochs", "1", "--training.save_steps", "1",
                                                     "--training.save_delay_steps", "2",
                                                     "--training.resume_from_checkpoint", out / "checkpoint-2")])
    full = {r["global_step/max_steps"]: r for r in train_logs(out)}
    again = {r["global_step/max_steps"]: r for r in train_logs(resumed)}
    assert sorted(again) == sorted(k for k in full if int(k.split("/")[0]) > 2) and again
    for step in again:
        assert again[step]["samples_per_step"] == full[step]["samples_per_step"]
        assert again[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5)
    assert served(resumed, 0) == served(out, 0)[2:]  # the same packs, step by step


# ----------------------------------------------------------------------------------- torchrun
def test_two_ranks_share_one_plan_and_each_trains_its_dealt_packs(torchrun):
    out, log = torchrun
    lines = sorted({l.split("swiftpack packing: ", 1)[1] for l in log.splitlines() if "swiftpack packing: " in l})
    assert len(lines) == 1  # both ranks logged the identical plan summary
    order, samples = dealt_order(out, 2)
    assert len(order) % 2 == 0
    ranks = [served(out, r) for r in (0, 1)]
    assert [[s["step"] for s in r] for r in ranks] == [[1, 2], [1, 2]]
    for rank, steps in enumerate(ranks):
        assert [p for s in steps for p in s["positions"]] == [rank, rank + 2]  # ms-swift's sampler, unshuffled
        for s in steps:
            assert [order[p] for p in s["positions"]] == s["samples"]
    logs = train_logs(out)
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)
    for row, a, b in zip(logs, *ranks):  # metrics of what both ranks trained in that step
        assert row["samples_per_step"] == sum(map(len, a["samples"] + b["samples"]))
        tokens = a["tokens"] + b["tokens"]
        assert row["packing_efficiency"] == pytest.approx(sum(tokens) / (len(tokens) * MAX_LENGTH), abs=1e-6)
    orders = [json.loads((out / "data_order" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [[i for b in o["batches"] for i in b] for o in orders] == [list(range(0, len(order), 2)),
                                                                       list(range(1, len(order), 2))]
    assert json.loads((out / "args.json").read_text())["gradient_accumulation_steps"] == 1  # 2 / (1 x 2)


def test_two_rank_eval_neither_repeats_nor_loses_a_sample(torchrun, packed):
    two, one = start_eval(torchrun[0]), start_eval(packed[0])
    plan = json.loads((torchrun[0] / "packing" / "summary.json").read_text())["val"]
    assert plan["num_packs"] % 2 == 1  # an uneven last eval batch across the 2 ranks
    assert (two["eval_samples"], two["eval_tokens"]) == (one["eval_samples"], one["eval_tokens"]) == (
        VAL_RECORDS, one["eval_tokens"])
    assert two["eval_token_mean_loss"] == pytest.approx(one["eval_token_mean_loss"], rel=1e-4)


def test_a_checkpoint_of_two_ranks_resumed_by_one_process_is_refused(torchrun, tiny_model_dir, data):
    out, _ = torchrun
    code, log = run([PY, "-m", "swift_plugins.sft", *packing_args(tiny_model_dir, data, out.parent / "refused",
                                                                  "--training.resume_from_checkpoint",
                                                                  out / "checkpoint-1")], child_environment())
    assert code == 2, log[-4000:]
    assert (f"error: {out / 'checkpoint-1'}: training.resume_from_checkpoint: trained with world_size 2, this run "
            f"has 1; the pack order depends on it (resume with torchrun --nproc_per_node=2, or start a new run)"
            in log.splitlines())
    assert "Traceback" not in log and "[INFO:swift]" not in log  # refused before ms-swift was imported


# ----------------------------------------------------------------------------------- padded
def test_padded_run_trains_saves_and_groups_the_optimizer(padded, data):
    out, log = padded
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "optimizer.pt"):
        assert (out / "checkpoint-2" / name).is_file(), name
    logs = train_logs(out)
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)
    args = json.loads((out / "args.json").read_text())
    assert (args["optimizer"], args["tuner_type"], args["use_dora"], args["gradient_accumulation_steps"]) == (
        "swiftpack_multimodal", "lora", True, 2)
    options = json.loads((out / "swiftpack_options.json").read_text())  # our options, handed over typed
    assert (options["train_jsonl"], options["object_ordering"], options["packing"], args["packing"]) == (
        train_files(data), "sorted", False, False)
    assert not [k for k in args if k.startswith("swiftpack_")]  # none of ours went through ms-swift's argv
    assert args["dataset"] == train_files(data) and args["attn_impl"] == "sdpa"  # padding: as configured
    assert "swiftpack multimodal optimizer groups: llm/decay:" in log


def test_packed_and_padded_eval_give_the_same_token_mean_loss(padded, packed):
    pad, pack = start_eval(padded[0]), start_eval(packed[0])
    assert (pad["eval_samples"], pad["eval_tokens"]) == (pack["eval_samples"], pack["eval_tokens"])
    assert pad["eval_token_mean_loss"] == pytest.approx(pack["eval_token_mean_loss"], rel=1e-4)


# ----------------------------------------------------------------------------------- plain swift sft
def test_bundled_sample_trains_packed_through_plain_swift_sft(tiny_model_dir, tmp_path, swift_cli):
    """The bundled sample, exported to a flat YAML, trains packed under plain `swift sft` in the dealt order;
    the packing metrics reach TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb, flat = tmp_path / "out", tmp_path / "tb", tmp_path / "flat" / "sample.yaml"
    ok([PY, "-m", "swift_plugins.sft", "--config", "configs/tiny/sft_packing.yaml", "--model.model", str(tiny_model_dir),
        "--custom.val_jsonl", "null", "--training.output_dir", str(out), "--training.add_version", "false",
        "--training.max_steps", "1", "--training.effective_batch_size", "1", "--training.log_data_order", "true",
        "--training.report_to", "tensorboard", "--training.logging_dir", str(tb), "--export_flat", str(flat)])
    assert yaml.safe_load(flat.read_text())["attn_impl"] == "swiftpack_varlen"
    plugin = next(flat.parent.glob("swiftpack_options_*.py")).read_text()
    assert "from swift_plugins import register_plugins" in plugin
    ok([swift_cli, "sft", str(flat)])
    summary = json.loads((out / "packing" / "summary.json").read_text())["train"]
    assert summary["records_read"] == 200 + 40 and summary["records_skipped"] == 0  # LVIS + messages samples
    assert [f["records_by_kind"] for f in summary["files"]] == [{"lvis": 200, "messages": 0}, {"lvis": 0, "messages": 40}]
    assert summary["samples"] == summary["samples_packed"] and summary["records_split"] > 0
    order, _ = dealt_order(out, 1)
    (step,) = served(out, 0)
    assert step["positions"] == [0] and step["samples"] == [order[0]]
    (logged,) = train_logs(out)
    assert math.isfinite(logged["loss"]) and logged["samples_per_step"] == len(order[0])
    events = EventAccumulator(str(tb)).Reload()
    tags = events.Tags()["scalars"]
    assert "train/packing_efficiency" in tags and "train/samples_per_step" in tags
    assert events.Scalars("train/samples_per_step")[0].value == logged["samples_per_step"]
