"""swift_plugins.packing.planner: controls (cap, buffer, min fill, drop last, overlong), validation, stats, persistence."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_plugins.packing import STRATEGIES, PackPlan, plan_packs


def canon(plan):
    return sorted(plan.packs)



# ----------------------------------------------------------------------------- controls, exact


@pytest.mark.parametrize("strategy", ["ffd", "bfd", "greedy", "next_fit"])  # random: other indices per pack
def test_max_samples_per_pack(strategy):
    assert canon(plan_packs([1] * 7, 10, strategy=strategy, max_samples_per_pack=3)) == [[0, 1, 2], [3, 4, 5], [6]]
    # the cap binds before the length does: 3 + 3 fits in 10, but cap 1
    assert canon(plan_packs([3, 3], 10, strategy=strategy, max_samples_per_pack=1)) == [[0], [1]]


def test_buffer_without_min_fill_plans_windows_independently():
    # windows [5,5,5] [5,5,5]: each gives [5,5] [5]
    assert canon(plan_packs([5] * 6, 10, buffer_size=3)) == [[0, 1], [2], [3, 4], [5]]


def test_buffer_with_min_fill_carries_underfilled_pack():
    # window 1 -> [0,1] (1.0) kept, [2] (0.5 < 0.6) carried; window 2 plans {2,3,4,5}
    plan = plan_packs([5] * 6, 10, buffer_size=3, min_fill_ratio=0.6)
    assert canon(plan) == [[0, 1], [2, 3], [4, 5]]
    assert plan.dropped == []


def test_docstring_drop_last_example():
    for buffer_size in (None, 2):
        plan = plan_packs([9, 8, 3], 10, min_fill_ratio=0.5, drop_last=True, buffer_size=buffer_size)
        assert canon(plan) == [[0], [1]]
        assert plan.dropped == [2]
        assert plan.drop_reasons == {2: "drop_last: underfilled pack (fill 0.3000 < min_fill_ratio 0.5)"}


def test_drop_last_false_keeps_underfilled():
    plan = plan_packs([9, 8, 3], 10, min_fill_ratio=0.5, drop_last=False)
    assert canon(plan) == [[0], [1], [2]]
    assert plan.dropped == []


def test_drop_last_with_zero_min_fill_drops_nothing():
    plan = plan_packs([9, 8, 3], 10, drop_last=True)
    assert canon(plan) == [[0], [1], [2]]
    assert plan.dropped == []


def test_carried_pack_gets_filled_then_last_window_dropped():
    # buffer 1: [6] carried (0.6 < 0.9); window 2 -> [6,3] (0.9, not < 0.9) kept; [4] last -> dropped
    plan = plan_packs([6, 3, 4], 10, buffer_size=1, min_fill_ratio=0.9, drop_last=True)
    assert canon(plan) == [[0, 1]]
    assert plan.drop_reasons == {2: "drop_last: underfilled pack (fill 0.4000 < min_fill_ratio 0.9)"}


def test_carry_is_bounded_by_buffer_size_oldest_finalised_first():
    # every pack is one 6 (0.6 < 0.7); at most 2 samples are carried, the oldest are finalised
    plan = plan_packs([6] * 5, 10, buffer_size=2, min_fill_ratio=0.7, drop_last=True)
    assert plan.packs == []
    assert plan.dropped == [0, 1, 2, 3, 4]
    assert set(plan.drop_reasons.values()) == {"drop_last: underfilled pack (fill 0.6000 < min_fill_ratio 0.7)"}
    kept = plan_packs([6] * 5, 10, buffer_size=2, min_fill_ratio=0.7, drop_last=False)
    assert canon(kept) == [[0], [1], [2], [3], [4]]


def test_eviction_finalises_oldest_underfilled_packs():
    # window 2 holds four [6] packs (0.6 < 0.7) but only 2 samples may be carried: [0], [1]
    # (oldest) are finalised and dropped; [2], [3] are carried and filled by the 4s of window 3
    plan = plan_packs([6, 6, 6, 6, 4, 4], 10, buffer_size=2, min_fill_ratio=0.7, drop_last=True)
    assert canon(plan) == [[2, 4], [3, 5]]
    assert plan.dropped == [0, 1]


def test_underfill_reason_truncates_fill():
    plan = plan_packs([6999], 10000, min_fill_ratio=0.7, drop_last=True)
    assert plan.drop_reasons == {0: "drop_last: underfilled pack (fill 0.6999 < min_fill_ratio 0.7)"}


def test_overlong_drop():
    plan = plan_packs([25011, 5, 20000], 20000)
    assert canon(plan) == [[1], [2]]
    assert plan.dropped == [0]
    assert plan.drop_reasons == {0: "overlong: 25011 > max_length 20000"}


def test_overlong_error_message():
    with pytest.raises(ValueError) as e:
        plan_packs([25011, 5, 30000], 20000, overlong="error")
    assert str(e.value) == (
        "2 sample(s) longer than max_length 20000: index 0 (25011 tokens), index 2 (30000 tokens). "
        "Raise max_length, or use overlong='split' in the data layer (or overlong='drop' to drop and "
        "report them)")


def test_overlong_error_lists_ten_then_counts():
    with pytest.raises(ValueError, match=r"index 9 \(11 tokens\) and 2 more\. Raise max_length"):
        plan_packs([11] * 12, 10, overlong="error")


def test_overlong_split_is_refused_with_pointer_to_data_layer():
    with pytest.raises(ValueError) as e:
        plan_packs([1], 10, overlong="split")
    assert str(e.value) == (
        "plan_packs: overlong='split' is handled by the data layer before planning: split overlong samples "
        "there and pass the split lengths; plan_packs accepts overlong='drop' or 'error'")


def test_empty_samples_dropped_with_reason():
    plan = plan_packs([0, 3, 0], 10)
    assert canon(plan) == [[1]]
    assert plan.drop_reasons == {0: "empty: length 0", 2: "empty: length 0"}


def test_empty_input():
    plan = plan_packs([], 10)
    assert plan.packs == [] and plan.dropped == [] and plan.num_samples == 0
    assert plan.stats([])["efficiency"] == 0.0


def test_validation_reports_every_error_at_once():
    with pytest.raises(ValueError) as e:
        plan_packs([1, -2], 0, strategy="wfd", seed=-1, buffer_size=0, min_fill_ratio=1.5, drop_last="yes",
                   overlong="truncate", max_samples_per_pack=0)
    assert str(e.value) == (
        "plan_packs: lengths must be non-negative: index 1 (-2); "
        "max_length must be a positive integer, got 0; "
        "strategy must be one of 'ffd', 'bfd', 'greedy', 'next_fit', 'random', got 'wfd'; "
        "seed must be a non-negative integer, got -1; "
        "buffer_size must be None (whole dataset) or an integer >= 1, got 0; "
        "min_fill_ratio must be a number in [0, 1], got 1.5; "
        "drop_last must be True or False, got 'yes'; "
        "overlong must be one of 'drop', 'error' ('split' is done by the data layer), got 'truncate'; "
        "max_samples_per_pack must be None (no cap) or an integer >= 1, got 0")


@pytest.mark.parametrize("lengths, msg", [
    ([1.5, 2.0], "plan_packs: lengths must be integers (token counts), got dtype float64"),
    ([True, False], "plan_packs: lengths must be integers (token counts), got dtype bool"),
    ([[1, 2], [3, 4]], "plan_packs: lengths must be 1-D, got shape (2, 2)"),
])
def test_validation_of_lengths(lengths, msg):
    with pytest.raises(ValueError) as e:
        plan_packs(lengths, 10)
    assert str(e.value) == msg


def test_numpy_and_list_inputs_agree():
    lengths = [5, 3, 9, 1, 7, 2]
    plan = plan_packs(lengths, 10)
    assert plan == plan_packs(np.asarray(lengths, dtype=np.int32), 10)
    # numpy scalars as options still give a JSON-serialisable plan
    p2 = plan_packs(np.asarray(lengths), np.int64(10), seed=np.int64(0), buffer_size=np.int64(3))
    assert PackPlan.from_json(p2.to_json()) == p2


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", ["ffd", "bfd"])
def test_same_seed_same_plan_and_decreasing_seed_only_shuffles(strategy):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 5000, 500)
    a, b = plan_packs(lengths, 8000, strategy=strategy, seed=7), plan_packs(lengths, 8000, strategy=strategy, seed=7)
    assert a == b and a.to_json() == b.to_json()
    others = [plan_packs(lengths, 8000, strategy=strategy, seed=s) for s in (8, 9)]
    assert all(canon(o) == canon(a) for o in others)
    assert any(o.packs != a.packs for o in others)


def test_pack_order_is_shuffled():
    # sorted planning would emit the longest packs first; the shuffle must break that order
    lengths = list(range(1, 201))
    plan = plan_packs(lengths, 200)
    sums = plan.pack_lengths(lengths)
    firsts = [max(lengths[i] for i in p) for p in plan.packs]
    assert firsts != sorted(firsts, reverse=True)
    assert len(sums) == plan.num_packs


# ----------------------------------------------------------------------------- stats & persistence


def test_stats_exact():
    lengths = [9, 8, 3, 25, 0]
    plan = plan_packs(lengths, 10, min_fill_ratio=0.5, drop_last=True)
    s = plan.stats(lengths)
    assert s == {
        "num_samples": 5, "num_packed": 2, "num_packs": 2, "avg_samples_per_pack": 1.0,
        "packed_tokens": 17, "efficiency": 0.85, "l1_bound": 2, "samples_dropped": 3,
        "tokens_dropped": 28, "min_fill": 0.8, "mean_fill": 0.85, "max_fill": 0.9,
        "dropped_by_reason": {"drop_last": 1, "empty": 1, "overlong": 1},
        "max_length": 10, "strategy": "ffd",
    }
    assert sorted(plan.pack_lengths(lengths)) == [8, 9]


def test_stats_rejects_other_lengths():
    plan = plan_packs([1, 2], 10)
    with pytest.raises(ValueError, match="lengths has 3 entries but this plan was made for 2 samples"):
        plan.stats([1, 2, 3])


def test_json_round_trip_and_save_load(tmp_path):
    lengths = [9, 8, 3, 25, 0, 4, 4]
    plan = plan_packs(lengths, 10, min_fill_ratio=0.5, drop_last=True, buffer_size=3, max_samples_per_pack=2)
    d = json.loads(plan.to_json())
    assert d["format"] == "swiftpack.pack_plan" and d["version"] == 2
    assert all(isinstance(p, list) for p in d["packs"])
    assert PackPlan.from_json(plan.to_json()) == plan
    path = tmp_path / "pack_plan.json"
    plan.save(path)
    assert PackPlan.load(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["pack_plan.json"]  # no temp file left


def test_from_json_rejects_other_documents():
    with pytest.raises(ValueError) as e:
        PackPlan.from_json('{"packs": []}')
    assert str(e.value) == ("not a pack plan: expected format 'swiftpack.pack_plan' version 2, got format None "
                            "version None")


# ----------------------------------------------------------------------------- properties

lengths_st = st.lists(st.integers(0, 60), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(lengths=lengths_st, C=st.integers(1, 50), strategy=st.sampled_from(STRATEGIES),
       buffer_size=st.one_of(st.none(), st.integers(1, 20)), ratio=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       drop_last=st.booleans(), cap=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 3))
def test_plan_invariants(lengths, C, strategy, buffer_size, ratio, drop_last, cap, seed):
    plan = plan_packs(lengths, C, strategy=strategy, buffer_size=buffer_size, min_fill_ratio=ratio,
                      drop_last=drop_last, max_samples_per_pack=cap, seed=seed)
    packed = [i for p in plan.packs for i in p]
    assert len(packed) == len(set(packed))                                  # no index twice
    assert sorted(packed + plan.dropped) == list(range(len(lengths)))       # nothing lost
    assert set(plan.dropped) == set(plan.drop_reasons)
    for p in plan.packs:
        assert p and p == sorted(p)
        assert sum(lengths[i] for i in p) <= C
        assert cap is None or len(p) <= cap
        if drop_last:
            assert sum(lengths[i] for i in p) / C >= ratio
    for i in plan.dropped:                                                  # drops only where options say
        kind = plan.drop_reasons[i].split(":")[0]
        if lengths[i] > C:
            assert plan.drop_reasons[i] == f"overlong: {lengths[i]} > max_length {C}"
        elif lengths[i] == 0:
            assert plan.drop_reasons[i] == "empty: length 0"
        else:
            assert kind == "drop_last" and drop_last and ratio > 0
    if not drop_last or ratio == 0.0:
        assert plan.dropped == [i for i, l in enumerate(lengths) if l == 0 or l > C]


