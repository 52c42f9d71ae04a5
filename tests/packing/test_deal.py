"""swift_plugins.packing.deal: packs dealt so that one step's packs cost about the same."""
from __future__ import annotations

import numpy as np
import pytest

from swift_plugins.packing import DEFAULT_COST_C, Deal, PackPlan, deal_packs, pack_costs, plan_packs, step_costs

INF = float("inf")  # cost_c=INF makes cost(pack) = sum(len) exactly




def test_pack_costs_exact():
    assert pack_costs([[0], [1, 2]], [48000, 100, 200]).tolist() == [96000.0, 300.0 + 50000 / DEFAULT_COST_C]


def test_deal_docstring_example_balanced_vs_naive():
    packs, lengths = [[0], [1], [2], [3]], [9, 1, 8, 2]
    naive = deal_packs(packs, lengths, 2, balance=False)
    assert naive.ranks == [[0, 2], [1, 3]]
    sn = step_costs(naive, packs, lengths, cost_c=INF)
    assert (sn["step_max"], sn["step_mean"], sn["imbalance"]) == ([9.0, 8.0], [5.0, 5.0], 1.7)
    bal = deal_packs(packs, lengths, 2, window_steps=2, cost_c=INF)
    assert sorted(zip(bal.ranks[0], bal.ranks[1])) == [(0, 2), (3, 1)]
    sb = step_costs(bal, packs, lengths, cost_c=INF)
    assert (sb["total_max"], sb["total_mean"], sb["imbalance"]) == (11.0, 10.0, 1.1)


def test_deal_lpt_within_step_for_batch_of_two():
    packs, lengths = [[0], [1], [2], [3]], [6, 1, 5, 1]
    naive = deal_packs(packs, lengths, 2, per_device_batch_size=2, balance=False)
    assert naive.ranks == [[0, 2], [1, 3]]
    assert step_costs(naive, packs, lengths, cost_c=INF)["step_max"] == [11.0]
    bal = deal_packs(packs, lengths, 2, per_device_batch_size=2, window_steps=1, cost_c=INF)
    assert bal.ranks == [[0, 3], [2, 1]]      # 6 -> r0, 5 -> r1, 1 -> r1 (6), 1 -> r0 (7)
    assert step_costs(bal, packs, lengths, cost_c=INF)["step_max"] == [7.0]
    assert bal.global_order() == [0, 2, 3, 1]
    assert bal.global_order()[0::2] == bal.ranks[0]


def test_deal_leftover_and_equal_counts_on_a_plan():
    rng = np.random.default_rng(0)
    lengths = np.clip(np.rint(rng.lognormal(np.log(900), 0.9, 5000)), 1, 20000).astype(int)
    plan = plan_packs(lengths, 20000)
    for balance in (False, True):
        d = deal_packs(plan, lengths, 4, per_device_batch_size=2, balance=balance)
        assert isinstance(d, Deal)
        assert len({len(r) for r in d.ranks}) == 1
        assert len(d.leftover) == plan.num_packs % 8
        assert sorted([p for r in d.ranks for p in r] + d.leftover) == list(range(plan.num_packs))
    naive = step_costs(deal_packs(plan, lengths, 4, balance=False), plan, lengths)
    bal = step_costs(deal_packs(plan, lengths, 4), plan, lengths)
    assert bal["total_mean"] == pytest.approx(naive["total_mean"])
    assert bal["imbalance"] < naive["imbalance"]


def test_deal_validation_message():
    with pytest.raises(ValueError) as e:
        deal_packs([[0]], [1], 0, per_device_batch_size=0, window_steps=0, seed=-1)
    assert str(e.value) == ("deal_packs: world_size must be an integer >= 1, got 0; per_device_batch_size must be "
                            "an integer >= 1, got 0; window_steps must be an integer >= 1, got 0; seed must be a "
                            "non-negative integer, got -1")


def test_deal_fewer_packs_than_ranks_all_leftover():
    d = deal_packs([[0], [1], [2]], [1, 2, 3], 4)
    assert d.ranks == [[], [], [], []] and d.leftover == [0, 1, 2] and d.num_steps == 0
    assert step_costs(d, [[0], [1], [2]], [1, 2, 3])["imbalance"] == 1.0

