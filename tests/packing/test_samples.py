"""swift_plugins.packing.samples: pack counts made a multiple of the world size, epoch orders, step stats."""
from swift_plugins.packing import PackPlan
from swift_plugins.packing.samples import epoch_order, pack_count_multiple_of


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
