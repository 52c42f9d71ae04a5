"""swift_plugins.packing.samples: pack counts made a multiple of the world size, epoch orders, step stats."""
import json

import pytest
from PIL import Image

from swift_plugins.data import ConversationOptions, RecordError, split_record, to_swift_row
from swift_plugins.lengths import count_dataset
from swift_plugins.packing import PackPlan
from swift_plugins.packing.samples import epoch_order, pack_count_multiple_of, split_overlong
from swift_plugins.training.calibration import counter_from_template


def test_pack_count_becomes_a_multiple_of_world_size_by_splitting_packs():
    plan = PackPlan(packs=[[0, 1, 2], [3], [4, 5]], dropped=[9], drop_reasons={9: "overlong: x"}, max_length=100,
                    strategy="bfd", num_samples=10)
    lengths = [50, 30, 10, 90, 40, 40, 1, 1, 1, 200]
    out = pack_count_multiple_of(plan, lengths, 4)
    # the pack with most samples ([0,1,2]: longest 0, then 1, 2 dealt alternately) splits into [0,2] + [1]
    assert out.packs == [[0, 2], [3], [4, 5], [1]]
    assert out.dropped == [9]
    assert pack_count_multiple_of(plan, lengths, 3) is plan
    singles = PackPlan(packs=[[0], [1], [2]], dropped=[], drop_reasons={}, max_length=100, strategy="bfd",
                       num_samples=3)
    out = pack_count_multiple_of(singles, [50, 10, 90], 2)  # cannot split: the emptiest pack is dropped
    assert out.packs == [[0], [2]] and out.dropped == [1]
    assert out.drop_reasons[1].startswith("world_size remainder: 3 packs")


def test_epoch_order_deals_the_shuffled_packs_and_depends_on_epoch_only():
    packs = [[0], [1, 2], [3], [4, 5, 6], [7], [8]]
    lengths = [9, 1, 1, 8, 2, 2, 2, 7, 3]
    a = epoch_order(packs, lengths, 2, seed=5, epoch=0)
    assert sorted(map(tuple, a)) == sorted(map(tuple, packs)) and a == epoch_order(packs, lengths, 2, seed=5, epoch=0)
    assert a != epoch_order(packs, lengths, 2, seed=5, epoch=1)
    with pytest.raises(ValueError, match="pack_count_multiple_of"):
        epoch_order(packs[:5], lengths, 2, seed=5, epoch=0)


def write_records(folder, object_counts):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "a.png")
    lines = []
    for k in object_counts:
        objects = [{"desc": f"obj{j}", "bbox_2d": [j, j, j + 1, j + 2]} for j in range(k)]
        lines.append(json.dumps({"images": ["a.png"], "width": 64, "height": 64, "objects": objects}))
    path = folder / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_overlong_makes_the_pieces_training_makes_with_their_exact_lengths(tiny_template, tmp_path):
    """Records of 2, 30 and 3 objects at a limit the 30-object record exceeds: it alone is cut into
    consecutive runs that each fit; every piece's planned length is its encoded length."""
    counter = counter_from_template(tiny_template)
    options = ConversationOptions()
    path = write_records(tmp_path, [2, 30, 3])
    counted = count_dataset(path, counter, options)
    whole = counted.total_tokens.tolist()
    limit = whole[1] // 2 + 5
    split = split_overlong(path, counter, options, counted.line, counted.total_tokens, limit)
    k = len(split.lines) - 2  # pieces of record 2
    assert split.lines.tolist() == [1] + [2] * k + [3] and split.parts.tolist() == [-1] + list(range(k)) + [-1]
    assert split.records_split == 1 and split.unsplittable == [] and k >= 2
    assert split.lengths[0] == whole[0] and split.lengths[-1] == whole[2]
    record = json.loads(path.read_text().splitlines()[1])

    def encoded_length(r):  # ms-swift's own count of a piece, as training encodes it
        return len(tiny_template.encode(to_swift_row(r, base_dir=tmp_path, object_ordering="none"))["input_ids"])

    pieces = split_record(record, max_length=limit, length_of=encoded_length)
    assert len(pieces) == k and sum(len(p["objects"]) for p in pieces) == 30
    encoded = [encoded_length(p) for p in pieces]
    assert split.lengths[1:-1].tolist() == encoded and max(encoded) <= limit
    # one object longer than the limit alone: unsplittable, reported under skip, an error under raise
    tiny = split_overlong(path, counter, options, counted.line, counted.total_tokens, 50, on_error="skip")
    assert [s.line for s in tiny.unsplittable] == [1, 2, 3] and tiny.lines.tolist() == []
    with pytest.raises(RecordError, match=r"t.jsonl:1: objects\[0\]: object \"obj0\" alone makes a"):
        split_overlong(path, counter, options, counted.line, counted.total_tokens, 50)


def test_nothing_left_to_pack_is_refused_with_the_shortest_sample(counter, sample_dir):
    from swift_plugins.errors import UserError
    from swift_plugins.packing.samples import build_sample_plan

    path = str(sample_dir / "val.jsonl")
    lengths = count_dataset(path, counter, ConversationOptions()).total_tokens
    with pytest.raises(UserError) as info:
        build_sample_plan(path, counter, ConversationOptions(), global_max_length=16)
    assert str(info.value) == (
        f"{path}: nothing left to pack ({len(lengths)} record(s) read): every one of the {len(lengths)} sample(s) is "
        f"longer than global_max_length 16 (the shortest has {int(lengths.min())} tokens); raise "
        f"training.global_max_length to at least {int(lengths.min())}")
