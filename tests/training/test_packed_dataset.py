"""Packed dataset: exact plan accounting, lazy per-pack encoding with length checks, per-epoch order, splits."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import awkward_messages_records
from swift_plugins.data import ConversationOptions, iter_records
from swift_plugins.errors import UserError
from swift_plugins.files import line_offsets, read_line
from swift_plugins.families import FAMILIES

PACKING_TEMPLATE = FAMILIES["qwen3_vl"].packing_template
from swift_plugins.packing.samples import build_sample_plan, pack_count_multiple_of
from swift_plugins.training.calibration import counter_from_template
from swift_plugins.training.packed_dataset import PackedDataset, PackLengthMismatch
from swift_plugins.training.template import register


@pytest.fixture(scope="module")
def packing_template(tiny_model_dir):
    from swift import get_model_processor, get_template

    register()
    model, processor = get_model_processor(str(tiny_model_dir), model_type="qwen3_vl", load_model=True)
    template = get_template(processor, template_type=PACKING_TEMPLATE)
    template.set_mode("train")
    template.model = model
    template.padding_free = template.packing = True
    return template


def test_every_pack_encodes_to_its_planned_lengths(packing_template, sample_dir, tmp_path):
    counter = counter_from_template(packing_template)
    conversation = ConversationOptions()
    sp = build_sample_plan(sample_dir / "train.jsonl", counter, conversation, global_max_length=6000,
                           cache_dir=tmp_path / "cache")
    assert len(sp.plan.packs) > 1
    n_records = sum(1 for _ in iter_records(sample_dir / "train.jsonl"))
    assert sorted([s for p in sp.plan.packs for s in p] + sp.plan.dropped) == list(range(n_records))
    with pytest.raises(ValueError, match="pass the plan through pack_count_multiple_of first"):
        PackedDataset(sp, packing_template, conversation, world_size=len(sp.plan.packs) + 1, counter=counter)
    even = dataclasses.replace(sp, plan=pack_count_multiple_of(sp.plan, sp.lengths, 2))
    dataset = PackedDataset(even, packing_template, conversation, world_size=2, seed=3, counter=counter)
    assert len(dataset) == len(even.plan.packs) and len(dataset) % 2 == 0
    assert sorted([s for p in even.plan.packs for s in p] + even.plan.dropped) == list(range(n_records))
    for i in range(len(dataset)):
        encoded = dataset[i]
        assert [e["length"] for e in encoded] == [int(sp.lengths[s]) for s in dataset.order[i]]
        assert sum(e["length"] for e in encoded) <= 6000
    batch = packing_template.data_collator([dataset[0]])
    assert batch["input_ids"].shape[1] == sum(int(sp.lengths[s]) for s in dataset.order[0])


def test_epochs_reorder_packs_deterministically(packing_template, sample_dir, tmp_path):
    counter = counter_from_template(packing_template)
    sp = build_sample_plan(sample_dir / "train.jsonl", counter, ConversationOptions(), global_max_length=4000,
                           cache_dir=tmp_path / "cache")
    sp = dataclasses.replace(sp, plan=pack_count_multiple_of(sp.plan, sp.lengths, 2))
    a = PackedDataset(sp, packing_template, ConversationOptions(), world_size=2, seed=0, counter=counter)
    b = PackedDataset(sp, packing_template, ConversationOptions(), world_size=2, seed=0, counter=counter)
    epoch0 = a.order
    a.set_epoch(1)
    assert a.order != epoch0 and sorted(map(tuple, a.order)) == sorted(map(tuple, epoch0))
    b.set_epoch(1)
    assert b.order == a.order
    item = a[3]  # what the collator and the packing metrics see of it
    assert (item.position, item.samples, item.tokens) == (3, a.order[3], sum(int(sp.lengths[s]) for s in a.order[3]))


def test_length_mismatch_is_a_hard_error_naming_the_record(packing_template, sample_dir, tmp_path):
    counter = counter_from_template(packing_template)
    sp = build_sample_plan(sample_dir / "train.jsonl", counter, ConversationOptions(), global_max_length=4000,
                           cache_dir=tmp_path / "cache")
    sp.lengths = sp.lengths.copy()
    dataset = PackedDataset(sp, packing_template, ConversationOptions(), world_size=1, seed=0, counter=counter)
    first = dataset.order[0][0]
    sp.lengths[first] += 1
    with pytest.raises(PackLengthMismatch, match=rf"train.jsonl:{int(sp.lines[first])}: encoded length"):
        dataset[0]


def test_overlong_split_keeps_every_object_and_each_piece_fits(packing_template, sample_dir, tmp_path):
    counter = counter_from_template(packing_template)
    conversation = ConversationOptions()
    whole = build_sample_plan(sample_dir / "train.jsonl", counter, conversation, global_max_length=100000,
                              cache_dir=tmp_path / "cache")
    limit = int(np.sort(whole.lengths)[-3])  # the two longest records (dense scenes) are over the limit
    assert int((whole.lengths > limit).sum()) == 2
    drop = build_sample_plan(sample_dir / "train.jsonl", counter, conversation, global_max_length=limit,
                             cache_dir=tmp_path / "cache")
    assert len(drop.plan.dropped) == 2
    assert all(r.startswith("overlong: ") for r in drop.plan.drop_reasons.values())
    split = build_sample_plan(sample_dir / "train.jsonl", counter, conversation, global_max_length=limit,
                              overlong="split", cache_dir=tmp_path / "cache")
    assert split.plan.dropped == [] and split.split_records == len(drop.plan.dropped)
    dataset = PackedDataset(split, packing_template, conversation, world_size=1, seed=0, counter=counter)
    pieces = {}
    for k in np.flatnonzero(split.parts >= 0):
        row = dataset.row(int(k))
        objects = json.loads(row["messages"][1]["content"])
        pieces.setdefault(int(split.lines[k]), []).extend(objects)
        assert packing_template.encode(row, return_length=True)["length"] == int(split.lengths[k]) <= limit
    for line, objects in pieces.items():
        record = json.loads(read_line(split.paths[0], line_offsets(split.paths[0]), line))
        assert len(objects) == len(record["objects"])


def test_mixed_detection_and_messages_plan_accounts_for_every_record(packing_template, sample_dir, tmp_path):
    """LVIS sample + hand-made messages rows at 4,800 tokens: the 13 detection records over it become
    pieces, the 4,915-token messages row (line 6) is dropped with its reason, each pack holding a
    messages row encodes to its planned lengths, and under overlong=error the run stops naming it."""
    counter = counter_from_template(packing_template)
    messages = tmp_path / "m.jsonl"
    messages.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in awkward_messages_records(tmp_path)))
    paths = [str(sample_dir / "train.jsonl"), str(messages)]
    sp = build_sample_plan(paths, counter, ConversationOptions(), global_max_length=4800, overlong="split",
                           cache_dir=tmp_path / "cache")
    assert sp.split_records == 13 and sp.skipped == []
    assert sp.dropped_rows() == [{"jsonl": str(messages), "line": 6, "part": -1, "length": 4915,
                                  "reason": "overlong: 4915 > max_length 4800"}]
    summary = sp.summary()
    assert summary["jsonl"] == paths and summary["records_read"] == 200 + 13
    lvis, msgs = summary["files"]
    assert (lvis["records_read"], lvis["records_by_kind"], lvis["samples_dropped"]) == (200, {"lvis": 200, "messages": 0}, 0)
    assert (msgs["records_read"], msgs["records_by_kind"], msgs["samples"], msgs["samples_packed"],
            msgs["samples_dropped"]) == (13, {"lvis": 0, "messages": 13}, 13, 12, 1)
    assert lvis["samples"] == 200 + sum(1 for k in np.flatnonzero(sp.parts > 0))  # each split adds pieces - 1
    assert summary["samples"] == summary["samples_packed"] + summary["samples_dropped"] == lvis["samples"] + 13
    dataset = PackedDataset(sp, packing_template, ConversationOptions(), world_size=1, seed=0, counter=counter)
    with_messages = [i for i, pack in enumerate(dataset.order) if any(sp.kinds[s] == 1 for s in pack)]
    assert sum(int(sp.kinds[s] == 1) for i in with_messages for s in dataset.order[i]) == 12
    for i in with_messages:
        assert [e["length"] for e in dataset[i]] == [int(sp.lengths[s]) for s in dataset.order[i]]
    with pytest.raises(UserError, match=rf"training.packing_overlong: error: 14 record\(s\) longer than "
                                        rf"global_max_length 4800: {paths[0]}:8 \(9158 tokens\), .* and 4 more"):
        build_sample_plan(paths, counter, ConversationOptions(), global_max_length=4800, overlong="error",
                          cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=rf"training.packing_overlong: error: 1 record\(s\) longer than "
                                        rf"global_max_length 4800: {messages}:6 \(4915 tokens\) \("):
        build_sample_plan(paths[1:], counter, ConversationOptions(), global_max_length=4800, overlong="error",
                          cache_dir=tmp_path / "cache")


def test_an_image_broken_after_planning_names_its_record(packing_template, tmp_path):
    """Planning decoded every image; one that breaks afterwards stops the pack with path:line, not a bare OSError."""
    from helpers import make_lvis_jsonl, save_corrupt_png

    data = make_lvis_jsonl(tmp_path / "d", 2)
    counter = counter_from_template(packing_template)
    sp = build_sample_plan(data, counter, ConversationOptions(), global_max_length=100000)
    dataset = PackedDataset(sp, packing_template, ConversationOptions(), world_size=1, counter=counter)
    assert [len(e["input_ids"]) for e in dataset[0]] == sp.lengths.tolist()
    save_corrupt_png(tmp_path / "d" / "train1.png", (128, 96))  # record 2's image, same size, pixel data broken
    with pytest.raises(UserError) as info:
        dataset[0]
    assert str(info.value) == (f"{data}:2: images: cannot be loaded (OSError: broken data stream when reading image "
                               f"file) (re-encode or replace the image, or drop the record)")
