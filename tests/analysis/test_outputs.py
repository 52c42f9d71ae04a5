"""swift_plugins.analysis.outputs: padding overhead, padding rows, simulation lookup, ZeRO stage, the strict reader."""
import numpy as np
import pytest

from swift_plugins.analysis import outputs
from swift_plugins.errors import UserError


def overhead_by_hand(lengths, b):
    """Padded / real tokens, batches of b consecutive samples: a plain loop, independent of outputs.py."""
    padded = real = 0
    for i in range(0, len(lengths), b):
        batch = lengths[i:i + b]
        padded += len(batch) * max(batch) - sum(batch)
        real += sum(batch)
    return padded, real


def test_padding_overhead_worked_examples():
    r = outputs.padding_overhead([3, 5, 2, 2], 2)
    assert (r["padded_tokens"], r["real_tokens"], r["batches"]) == (2, 12, 2) and r["overhead"] == 2 / 12
    assert r["efficiency"] == 12 / 14
    r = outputs.padding_overhead([3, 5, 2, 2], 3)  # [3, 5, 2] pads 2 + 3, [2] pads 0
    assert (r["padded_tokens"], r["batches"]) == (5, 2)
    perm = np.random.default_rng(7).permutation(4)
    lens = np.array([3, 5, 2, 9])[perm].tolist()
    assert outputs.padding_overhead([3, 5, 2, 9], 2, seed=7)["padded_tokens"] == overhead_by_hand(lens, 2)[0]
    assert outputs.padding_overhead([4, 4, 4], 1)["padded_tokens"] == 0


def test_padding_rows_delete_or_truncate():
    r = outputs.padding_rows([5, 12, 7], 10)
    assert (r["lengths"].tolist(), r["rows"], r["dropped"], r["truncated"]) == ([5, 7], 2, 1, 0)
    r = outputs.padding_rows([5, 12, 7], 10, "right")
    assert (r["lengths"].tolist(), r["rows"], r["dropped"], r["truncated"]) == ([5, 10, 7], 3, 0, 1)


def test_find_simulation_prefers_the_exact_variant_and_names_the_fix():
    sims = [{"global_max_length": 10, "strategy": "bfd", "buffer_size": None, "min_fill_ratio": 0.0,
             "drop_last": False, "n": 1},
            {"global_max_length": 10, "strategy": "bfd", "buffer_size": 4, "min_fill_ratio": 0.5,
             "drop_last": True, "n": 2}]
    assert outputs.find_simulation(sims, 10, "bfd", 4, 0.5, True) == (sims[1], True)
    assert outputs.find_simulation(sims, 10, "bfd", 4, 0.0, False) == (sims[0], False)
    assert outputs.find_simulation(sims, 10, "bfd") == (sims[0], True)
    assert outputs.find_simulation(sims, 10, "bfd", None, 0.5, True) == (sims[0], False)  # drops at the end: differs
    with pytest.raises(UserError, match="--max_lengths 10,12"):
        outputs.find_simulation(sims, 12, "bfd")


def test_zero_stage_from_presets_and_json(repo_root, tmp_path):
    assert outputs.zero_stage_of(None) == 0
    assert outputs.zero_stage_of("zero3_offload") == 3
    assert outputs.zero_stage_of(str(repo_root / "configs/deepspeed/zero2.json")) == 2
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert outputs.zero_stage_of(str(tmp_path / "ds.json")) == 1
    with pytest.raises(UserError, match="nope.json"):
        outputs.zero_stage_of(str(tmp_path / "nope.json"))


# ----------------------------------------------------------------------------------- outputs
def test_read_sample_stats_exact_rows_and_errors(tmp_path):
    path = tmp_path / "sample_stats.jsonl"
    path.write_text('{"line": 1, "text_tokens": 40, "image_tokens": 64, "total_tokens": 104, "num_objects": 2}\n'
                    '\n'
                    '{"line": 3, "text_tokens": 7, "image_tokens": 0, "total_tokens": 7}\n')
    rows = outputs.read_sample_stats(str(path))
    assert rows.dtype == np.int64 and rows.tolist() == [[40, 64, 104], [7, 0, 7]]
    path.write_text("")
    assert outputs.read_sample_stats(str(path)).shape == (0, 3)
    bad = {'{"text_tokens": 1, "image_tokens": 2, "total_tokens": 3.0}':
           "field 'total_tokens' must be a non-negative integer, got 3.0",
           '{"text_tokens": true, "image_tokens": 2, "total_tokens": 3}':
           "field 'text_tokens' must be a non-negative integer, got True",
           '{"text_tokens": 1, "total_tokens": 3}': "field 'image_tokens' must be a non-negative integer, got None",
           '[1, 2, 3]': "field 'text_tokens' must be a non-negative integer, got None",
           '{"text_tokens": 1,': "not valid JSON"}
    for line, message in bad.items():
        path.write_text('{"text_tokens": 1, "image_tokens": 2, "total_tokens": 3}\n' + line + "\n")
        with pytest.raises(UserError) as e:
            outputs.read_sample_stats(str(path))
        assert str(e.value).startswith(f"{path}:2: {message}") and outputs.ANALYZE_HINT in str(e.value)


def test_md_table_escapes_bars_and_setup_lines_name_the_setup():
    assert outputs.md_table(("a", "b"), [[1, "x|y"], ["", 2.5]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |\n|  | 2.5 |"
    setup = outputs.TrainingSetup(
        world_size=4, effective_batch_size=32, padding_batch_size=2, num_train_epochs=1.5, max_steps=None,
        padding_max_length=None, truncation_strategy="delete", global_max_length=8000, packing_strategy="bfd",
        packing_buffer=None, min_fill_ratio=0.0, drop_last=False, packing_overlong="split",
        memory=outputs.MemorySetup(), model_path=None, shuffle_seed=0, source="`c.yaml`", padding_batch_source="c.yaml")
    assert outputs.setup_lines(setup) == [
        "- Training setup from: `c.yaml`",
        "- world_size 4, effective_batch_size 32, padding per-device batch 2 (c.yaml), packing per-device batch 1, "
        "num_train_epochs 1.5"]
