"""scripts/analyze_token_lengths.py on the bundled sample: files, keys, numbers, skip/raise, cache, workers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import ANALYSIS_EFF, ANALYSIS_EPOCHS, ANALYSIS_LENGTHS, ANALYSIS_WORLD
from swift_plugins.analysis import token_analysis
from swift_plugins.analyze import load_counter
from swift_plugins.data import RecordError
from swift_plugins.packing import DEFAULT_STRATEGY, STRATEGIES


def _run(model, jsonl, out, cache, *extra):
    argv = ["--model_path", str(model), "--train_jsonl", str(jsonl), "--output_dir", str(out),
            "--cache_dir", str(cache), "--max_lengths", "4000,8000", "--effective_batch_size", "8",
            "--world_size", "2", "--num_train_epochs", "2", *extra]
    return token_analysis.run(token_analysis.options_from_argv(argv), load_counter)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def analysed(sample_analysis):
    return sample_analysis, None


def test_writes_the_seed_files_with_consistent_numbers(analysed, sample_dir):
    out, _ = analysed
    for name in ("dataset_stats.json", "sample_stats.jsonl", "packing_simulations.json", "recommendations.json",
                 "analysis_full.log", "skipped_records.jsonl"):
        assert (out / name).is_file(), name
    stats = json.loads((out / "dataset_stats.json").read_text())
    samples = _rows(out / "sample_stats.jsonl")
    n_records = sum(1 for line in (sample_dir / "train.jsonl").read_text().splitlines() if line.strip())
    assert stats["num_samples"] == len(samples) == n_records and stats["records_skipped"] == 0
    total = np.array([s["total_tokens"] for s in samples])
    assert all(s["total_tokens"] == s["text_tokens"] + s["image_tokens"] for s in samples)
    assert [s["line"] for s in samples] == list(range(1, n_records + 1))
    assert stats["max_total_tokens"] == total.max() and stats["sum_total_tokens"] == total.sum()
    assert stats["median_total_tokens"] == float(np.median(total))
    assert stats["p95_total_tokens"] == round(float(np.percentile(total, 95)), 2)


def test_simulations_cover_every_length_and_strategy_and_account_for_every_sample(analysed):
    out, _ = analysed
    sims = json.loads((out / "packing_simulations.json").read_text())
    keys = [(e["global_max_length"], e["strategy"], e["buffer_size"], e["overlong"]) for e in sims]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(L, s, b, o) for L in ANALYSIS_LENGTHS for o in ("drop", "split")
                         for s, b in [(s, None) for s in STRATEGIES] + [(DEFAULT_STRATEGY, 256)]}
    stats = json.loads((out / "dataset_stats.json").read_text())
    n, longest = stats["num_samples"], stats["max_total_tokens"]
    for e in sims:
        assert e["samples_packed"] + e["samples_dropped"] == e["samples"]
        if e["overlong"] == "drop":  # records are the samples; the overlong ones are lost
            assert e["samples"] == n and e["records_split"] == 0
            assert e["dropped_by_reason"].get("overlong", 0) == e["records_lost"] - e["dropped_by_reason"].get(
                "drop_last", 0)
        else:  # every record over the length becomes pieces that fit
            assert (e["records_split"] > 0) is (longest > e["global_max_length"])
            assert e["samples"] > n or e["records_split"] == 0
            assert "overlong" not in e["dropped_by_reason"]
        assert e["steps_per_epoch"] == round(e["num_packs"] / ANALYSIS_EFF, 2)
        assert e["optimizer_steps_per_epoch"] == -(-e["num_packs"] // ANALYSIS_EFF)
        assert e["total_optimizer_steps"] == ANALYSIS_EPOCHS * e["optimizer_steps_per_epoch"]
        assert 0 < e["efficiency"] <= 1
    by = {(e["global_max_length"], e["strategy"], e["buffer_size"], e["overlong"]): e for e in sims}
    assert by[(8000, DEFAULT_STRATEGY, None, "drop")]["num_packs"] <= by[(8000, "next_fit", None, "drop")]["num_packs"]
    # at 4,000 tokens the sample's dense scenes are over the length: drop loses them, split keeps them
    assert by[(4000, DEFAULT_STRATEGY, None, "drop")]["records_lost"] > 0
    assert by[(4000, DEFAULT_STRATEGY, None, "split")]["records_lost"] == 0


def test_recommendation_is_backed_by_its_simulation(analysed):
    out, _ = analysed
    rec = json.loads((out / "recommendations.json").read_text())
    sims = json.loads((out / "packing_simulations.json").read_text())
    r = rec["recommended"]
    assert r["packing_overlong"] == "split"  # detection data
    chosen = next(e for e in sims if e["global_max_length"] == r["global_max_length"] and e["strategy"] == DEFAULT_STRATEGY
                  and e["buffer_size"] is None and e["overlong"] == "split")
    assert rec["why"]["efficiency"] == chosen["efficiency"]
    assert rec["why"]["records_lost"] == chosen["records_lost"] == 0  # a setting that trains every record fits
    assert rec["why"]["records_split"] == chosen["records_split"]
    assert r["global_max_length"] == min(c["global_max_length"] for c in rec["candidates"]
                                         if c["fits_memory"] and c["records_lost"] == 0)
    assert r["gradient_accumulation_steps"] == ANALYSIS_EFF // (1 * ANALYSIS_WORLD)
    assert rec["padding_baseline"]["samples_per_step"] == ANALYSIS_EFF
    match = rec["match_padding_samples_per_step"]
    assert match["effective_batch_size"] % ANALYSIS_WORLD == 0


def test_skip_policy_reports_bad_records_and_raise_names_them(tiny_model_dir, sample_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(sample_dir, data_dir)
    lines = (data_dir / "train.jsonl").read_text().splitlines()[:20]
    lines.insert(3, '{"images": ["images/nope.jpg"], "width": 64, "height": 64, "objects": []}')
    lines.insert(7, "{not json")
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    _run(tiny_model_dir, data_dir / "train.jsonl", out, tmp_path / "cache", "--on_error", "skip")
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert (stats["num_samples"], stats["records_read"], stats["records_skipped"]) == (20, 22, 2)
    skipped = _rows(out / "skipped_records.jsonl")
    assert [(s["line"], s["kind"]) for s in skipped] == [(4, skipped[0]["kind"]), (8, "invalid_json")]
    with pytest.raises(RecordError) as e:
        _run(tiny_model_dir, data_dir / "train.jsonl", tmp_path / "out2", tmp_path / "cache")
    assert str(e.value).startswith(f"{data_dir / 'train.jsonl'}:4: ")


def test_cache_reuses_and_invalidates_and_workers_do_not_change_results(tiny_model_dir, sample_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(sample_dir, data_dir)
    jsonl, cache = data_dir / "train.jsonl", tmp_path / "cache"
    _run(tiny_model_dir, jsonl, tmp_path / "a", cache)
    first = (tmp_path / "a" / "sample_stats.jsonl").read_text()
    _run(tiny_model_dir, jsonl, tmp_path / "b", cache)
    assert "from cache" in (tmp_path / "b" / "analysis_full.log").read_text()
    assert (tmp_path / "b" / "sample_stats.jsonl").read_text() == first
    _run(tiny_model_dir, jsonl, tmp_path / "c", tmp_path / "cache2", "--num_workers", "2")
    assert (tmp_path / "c" / "sample_stats.jsonl").read_text() == first
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:-1]) + "\n")  # data changed -> cache miss, new numbers
    _run(tiny_model_dir, jsonl, tmp_path / "d", cache)
    assert "from cache" not in (tmp_path / "d" / "analysis_full.log").read_text()
    assert len(_rows(tmp_path / "d" / "sample_stats.jsonl")) == len(lines) - 1
    _run(tiny_model_dir, jsonl, tmp_path / "e", cache, "--clear_cache")
    assert "from cache" not in (tmp_path / "e" / "analysis_full.log").read_text()


def test_several_files_of_both_kinds_give_per_file_rows_and_one_simulation(tiny_model_dir, sample_dir, repo_root,
                                                                           tmp_path):
    """LVIS sample (first 30 records) + the messages sample: every record is one sample_stats row
    naming its file and kind, per-file rows add up to the totals, the report shows them, and
    overlong messages rows are lost (not split) in the split simulation."""
    from swift_plugins.analysis import report
    from swift_plugins.analysis.outputs import fmt_val, load_analysis, setup_from_analysis
    from swift_plugins.analysis.summary import summary_md

    messages = repo_root / "public_data" / "messages" / "sample" / "train.jsonl"
    out = tmp_path / "out"
    argv = ["--model_path", str(tiny_model_dir), "--train_jsonl", str(sample_dir / "train.jsonl"), str(messages),
            "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_lengths", "900,4000",
            "--max_samples", "30", "--effective_batch_size", "8", "--world_size", "2"]
    token_analysis.run(token_analysis.options_from_argv(argv), load_counter)
    stats = json.loads((out / "dataset_stats.json").read_text())
    rows = _rows(out / "sample_stats.jsonl")
    assert stats["inputs"]["train_jsonl"] == [str(sample_dir / "train.jsonl"), str(messages)]
    assert [(r["file"], r["line"], r["kind"]) for r in rows] == (
        [(0, i, "lvis") for i in range(1, 31)] + [(1, i, "messages") for i in range(1, 31)])
    assert all(r["num_images"] == 1 for r in rows[:30]) and {r["num_images"] for r in rows[30:]} >= {0, 1, 2}
    lvis, msgs = stats["files"]
    assert (lvis["jsonl"], lvis["records_read"], lvis["num_samples"], lvis["lvis"], lvis["messages"]) == (
        str(sample_dir / "train.jsonl"), 30, 30, 30, 0)
    assert (msgs["records_read"], msgs["num_samples"], msgs["lvis"], msgs["messages"]) == (30, 30, 0, 30)
    assert stats["num_samples"] == 60 and stats["sum_total_tokens"] == lvis["sum_total_tokens"] + msgs["sum_total_tokens"]
    assert msgs["max_total_tokens"] == max(r["total_tokens"] for r in rows[30:])
    sims = json.loads((out / "packing_simulations.json").read_text())
    split = next(e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["overlong"]) ==
                 (900, DEFAULT_STRATEGY, None, "split"))
    over_messages = sum(1 for r in rows[30:] if r["total_tokens"] > 900)  # line 26: 960 tokens
    over_lvis = sum(1 for r in rows[:30] if r["total_tokens"] > 900)
    assert over_messages == 1 and over_lvis > 0 and split["records_split"] == over_lvis - split["records_lost"] + over_messages
    assert split["records_lost"] >= over_messages
    analysis = load_analysis(str(out))
    setup = setup_from_analysis(analysis)
    summary = summary_md(analysis, setup, report.comparison_rows(analysis, setup), figures_rel="figures",
                         est={"rows": []})
    assert "### Per file" in summary
    assert f"| `{messages}` | 30 | 0 | 30 | 0 | 30 | {fmt_val(msgs['mean_total_tokens'])} |" in summary
    assert f"- Dataset: `{sample_dir / 'train.jsonl'}` + `{messages}`, 60 samples" in summary


def test_beyond_context_lists_each_record_longer_than_the_model_context():
    import numpy as np
    from types import SimpleNamespace

    from swift_plugins.analysis.token_analysis import beyond_context

    counted = SimpleNamespace(paths=["a.jsonl", "b.jsonl"], file=np.array([0, 0, 1]), line=np.array([1, 4, 2]),
                              total_tokens=np.array([100, 5000, 4097]))
    reason = "longer than the model's context (max_position_embeddings 4096)"
    assert beyond_context(counted, 4096) == {"max_position_embeddings": 4096, "records": [
        {"jsonl": "a.jsonl", "line": 4, "total_tokens": 5000, "reason": reason},
        {"jsonl": "b.jsonl", "line": 2, "total_tokens": 4097, "reason": reason}]}
    assert beyond_context(counted, None) == {"max_position_embeddings": None, "records": []}
