"""swift_plugins.analysis.folder: a folder holds one analysis or none; readers refuse a mix, in one line."""
from __future__ import annotations

import json
import os

import pytest

from swift_plugins.analysis import folder as F
from swift_plugins.errors import UserError


def write_analysis(out, **texts):
    with F.staged_analysis(str(out)) as stage:
        for name in F.ANALYSIS_OUTPUTS:
            with open(os.path.join(stage, name), "w") as f:
                f.write(texts.get(name.split(".")[0], name))
    return json.loads((out / F.MANIFEST).read_text())


def test_outputs_arrive_together_with_a_manifest_of_their_digests(tmp_path):
    out = tmp_path / "a"
    manifest = write_analysis(out)
    assert sorted(os.listdir(out)) == sorted(F.ANALYSIS_OUTPUTS + (F.MANIFEST,))  # no staging folder left
    assert sorted(manifest["files"]) == sorted(F.ANALYSIS_OUTPUTS) and len(manifest["run_id"]) == 16
    assert F.check_analysis(str(out)) == manifest


def test_a_failed_run_leaves_no_analysis_and_nothing_staged(tmp_path):
    out = tmp_path / "a"
    write_analysis(out)
    (out / "README.md").write_text("mine")
    with pytest.raises(RuntimeError):
        with F.staged_analysis(str(out)) as stage:
            (open(os.path.join(stage, "dataset_stats.json"), "w")).close()
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["README.md"]  # the earlier analysis went first; a README stays
    with pytest.raises(UserError, match="analysis_manifest.json missing: these files are not one complete analysis"):
        F.check_analysis(str(out))


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / F.MANIFEST).unlink(), "analysis_manifest.json missing"),
    (lambda out: (out / "sample_stats.jsonl").write_text("{}\n"), "sample_stats.jsonl: changed since analysis run"),
    (lambda out: (out / "recommendations.json").unlink(), "recommendations.json: missing, but analysis run"),
    (lambda out: (out / F.MANIFEST).write_text("[]"), "not a manifest this project wrote"),
])
def test_readers_refuse_a_folder_whose_files_do_not_belong_together(tmp_path, damage, message):
    out = tmp_path / "a"
    write_analysis(out)
    damage(out)
    with pytest.raises(UserError) as info:
        F.check_analysis(str(out))
    text = str(info.value)
    assert message in text and text.endswith(f"re-run scripts/analyze_token_lengths.py --output_dir {out}")
    assert "\n" not in text


def test_a_re_run_removes_the_figures_made_from_the_earlier_analysis(tmp_path):
    out, elsewhere = tmp_path / "a", tmp_path / "figs"
    write_analysis(out)
    (out / "figures").mkdir()
    elsewhere.mkdir()
    made = [out / "figures" / "token_distribution.png", out / "FULL_RESULTS_SUMMARY.md", elsewhere / "table.md"]
    for path in made:
        path.write_text("old")
    (elsewhere / "keep.txt").write_text("not ours")
    F.record_derived(str(out), map(str, made[:2]))
    F.record_derived(str(out), [str(made[2]), str(made[0])])  # listed once
    assert json.loads((out / F.DERIVED).read_text()) == ["figures/token_distribution.png", "FULL_RESULTS_SUMMARY.md",
                                                         str(made[2])]
    os.makedirs(out / (F.STAGING_PREFIX + "killed"))  # a killed run's leftover
    write_analysis(out, dataset_stats="new")
    assert not any(p.exists() for p in made) and not (out / "figures").exists()
    assert (elsewhere / "keep.txt").read_text() == "not ours"
    assert sorted(os.listdir(out)) == sorted(F.ANALYSIS_OUTPUTS + (F.MANIFEST,))
    assert (out / "dataset_stats.json").read_text() == "new"
