"""Packed dataset: exact plan accounting, lazy per-pack encoding with length checks, per-epoch order, splits."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from swift_plugins.data import ConversationOptions, iter_records
from swift_plugins.files import line_offsets, read_line
from swift_plugins.names import PACKING_TEMPLATE
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
        record = json.loads(read_line(split.path, line_offsets(split.path), line))
        assert len(objects) == len(record["objects"])
