"""swift_plugins.analysis.simulate: drop vs split simulations and the recommendation, exactly, on hand-made lengths."""
import numpy as np
import pytest

from swift_plugins.analysis import simulate as S

SETUP = dict(seed=0, effective_batch_size=2, num_train_epochs=1, packing_buffer=None, min_fill_ratio=0.0,
             drop_last=False)


def test_auto_max_lengths_bracket_the_p99():
    assert S.auto_max_lengths(np.array([7888.1])) == [12000, 16000, 20000, 24000]
    assert S.auto_max_lengths(np.arange(1, 101)) == [1000]  # p99 99.01 -> all round up to 1,000


def test_split_entries_plan_the_pieces_and_count_what_is_lost():
    # records [30, 120, 50]; at 100 the 120 becomes pieces 60 + 60, at 200 nothing is split
    split = {100: (np.array([30, 60, 60, 50]), 1, 0), 200: (np.array([30, 120, 50]), 0, 0)}
    sims = S.simulate(np.array([30, 120, 50]), [100, 200], ["ffd"], split_samples=split, **SETUP)
    by = {(e["global_max_length"], e["overlong"]): e for e in sims}
    assert [(e["global_max_length"], e["overlong"]) for e in sims] == [(100, "drop"), (100, "split"), (200, "drop"),
                                                                      (200, "split")]
    drop, cut = by[(100, "drop")], by[(100, "split")]
    assert (drop["samples"], drop["samples_packed"], drop["samples_dropped"], drop["records_lost"],
            drop["num_packs"], drop["packed_tokens"], drop["tokens_dropped"]) == (3, 2, 1, 1, 1, 80, 120)
    assert drop["dropped_by_reason"] == {"overlong": 1}
    # ffd on [30, 60, 60, 50] at 100: [60, 30] [60] [50] -> 3 packs, 200 / 300 tokens
    assert (cut["samples"], cut["samples_packed"], cut["records_split"], cut["records_lost"], cut["num_packs"],
            cut["packed_tokens"], cut["efficiency"], cut["dropped_by_reason"]) == (4, 4, 1, 0, 3, 200, 0.666667, {})
    assert by[(200, "drop")]["records_lost"] == by[(200, "split")]["records_lost"] == 0


def test_unsplittable_records_are_lost_under_split():
    sims = S.simulate(np.array([30, 500]), [100], ["ffd"], split_samples={100: (np.array([30]), 0, 1)}, **SETUP)
    cut = next(e for e in sims if e["overlong"] == "split")
    assert (cut["samples"], cut["records_unsplittable"], cut["records_lost"]) == (1, 1, 1)


def rec(sims, memory, **kw):
    rows = {L: {"total_gib": g} for L, g in memory.items()}
    return S.recommend(sims, {"num_samples": 100}, memory_rows=rows, gpu_memory_gib=10, memory_headroom=0.0,
                       max_drop_fraction=0.05, effective_batch_size=8, world_size=2, per_device_train_batch_size=1,
                       padding_batch_size=2, num_train_epochs=1, **kw)


def entry(L, overlong, lost, packs=10):
    return {"global_max_length": L, "strategy": "ffd", "buffer_size": None, "overlong": overlong, "records_lost": lost,
            "records_split": 3 if overlong == "split" else 0, "samples_dropped": lost, "num_packs": packs,
            "efficiency": 0.9, "avg_samples_per_pack": 5.0, "tokens_dropped": 0, "steps_per_epoch": 1.25,
            "optimizer_steps_per_epoch": 2, "total_optimizer_steps": 2, "samples_per_step": 40.0}


def test_recommendation_prefers_the_smallest_length_that_loses_nothing():
    sims = [entry(1000, "split", 2), entry(2000, "split", 0), entry(4000, "split", 0),
            entry(1000, "drop", 9), entry(2000, "drop", 4)]
    r = rec(sims, {1000: 3, 2000: 5, 4000: 9}, overlong="split")
    assert r["recommended"]["global_max_length"] == 2000 and r["recommended"]["packing_overlong"] == "split"
    assert r["why"]["records_lost"] == 0 and "trains every record" in r["reason"]
    assert [c["global_max_length"] for c in r["candidates"]] == [1000, 2000, 4000]  # only the split entries
    # nothing lossless fits: the smallest within max_drop_fraction (5 of 100)
    r = rec(sims, {1000: 3, 2000: 11, 4000: 12}, overlong="split")
    assert r["recommended"]["global_max_length"] == 1000 and "at most 5.00%" in r["reason"]
    # drop policy: 2000 loses 4 (<= 5%), 1000 loses 9
    r = rec(sims, {1000: 3, 2000: 5, 4000: 9}, overlong="drop")
    assert r["recommended"]["global_max_length"] == 2000 and r["recommended"]["packing_overlong"] == "drop"
    assert "loses at most" in r["reason"]


def test_recommendation_without_a_fitting_length_takes_the_smallest_estimate():
    r = rec([entry(1000, "split", 0), entry(2000, "split", 0)], {1000: 30, 2000: 50}, overlong="split")
    assert r["recommended"]["global_max_length"] == 1000 and "fits the memory budget" in r["reason"]
    with pytest.raises(KeyError):
        rec([entry(3000, "split", 0)], {1000: 1}, overlong="split")  # a simulated length needs its estimate
