"""scripts/migrate_to_packing.py on the shipped padding configs with a real analysis of the bundled
sample: the written config validates with swift_plugins.config and every rescaled number is
recomputed here from the analysis JSON."""
from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import pytest

from swift_plugins.packing import DEFAULT_STRATEGY

from helpers import ANALYSIS_EFF as EFF, ANALYSIS_LENGTHS as LENGTHS, ANALYSIS_WORLD as WORLD
from swift_plugins.analysis import migrate
from swift_plugins.config import ConfigError, resolve_config

STEP_KEYS = ("eval_steps", "save_steps", "save_delay_steps", "logging_steps", "max_steps")


@pytest.fixture(scope="module")
def analysis(sample_analysis):
    out = sample_analysis
    load = lambda name: json.loads((out / name).read_text())  # noqa: E731
    return {"dir": out, "stats": load("dataset_stats.json"), "sims": load("packing_simulations.json"),
            "rec": load("recommendations.json")}


@pytest.fixture(autouse=True)
def at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # config paths are relative to the working directory


def entry_for(sims, L, strategy, buffer, fill=0.0, drop=False, overlong="split"):
    return next(e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["overlong"])
                == (L, strategy, buffer, overlong) and (buffer is None or (e["min_fill_ratio"], e["drop_last"]) == (fill, drop)))


def scaled(x, new, old):
    """Nearest integer to x * new / old, halves up, at least 1, 0 stays 0: with exact fractions."""
    return 0 if x == 0 else max(1, math.floor(Fraction(x * new, old) + Fraction(1, 2)))


def test_rescale_rename_and_default_output():
    assert [migrate.rescale_steps(x, 59, 777) for x in (280, 700, 5, 0)] == [21, 53, 1, 0]
    assert migrate.rescale_steps(5, 1, 2) == 3 and migrate.rescale_steps(3, 1, 2) == 2  # halves up
    assert migrate.rescale_steps(1, 1, 1000) == 1
    assert migrate.rename_run("./output/12-4/text_only_padded") == "./output/12-4/text_only_packed"
    assert migrate.rename_run("output/tiny/padding") == "output/tiny/packing"
    assert migrate.rename_run("runs/a/") == "runs/a_packed"
    assert migrate.default_output("configs/dlora/sft_text_only_padding.yaml") == \
        os.path.join("configs", "dlora", "sft_text_only_packed.yaml")
    assert migrate.default_output("x/base.yaml") == os.path.join("x", "base_packed.yaml")


def expected_entry(sims, L, strategy, buffer, fill, drop, overlong="split"):
    """The simulated entry of exactly this variant, else the one-window entry (as documented)."""
    exact = [e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["min_fill_ratio"],
                                 e["drop_last"], e["overlong"]) == (L, strategy, buffer, fill, drop, overlong)]
    return (exact[0], True) if exact else (entry_for(sims, L, strategy, None), False)


def test_dlora_padding_config_migrates_with_exact_rescaled_steps(analysis, tmp_path, capsys):
    out = tmp_path / "configs" / "sft_text_only_packed.yaml"
    argv = ["--padding_config", "configs/dlora/sft_text_only_padding.yaml", "--analysis_dir", str(analysis["dir"]),
            "--output", str(out), "--world_size", "4"]
    assert migrate.main(argv) == 0
    printed = capsys.readouterr().out
    rec, n = analysis["rec"], analysis["stats"]["num_samples"]
    L = rec["recommended"]["global_max_length"]
    padding = resolve_config("configs/dlora/sft_text_only_padding.yaml", world_size=4)
    pt = padding.config.training
    variant = (pt.packing_buffer, pt.packing_min_fill_ratio, pt.packing_drop_last)  # the padding config's
    e, exact = expected_entry(analysis["sims"], L, DEFAULT_STRATEGY, *variant)
    eff = pt.effective_batch_size
    old, new = math.ceil(n / eff), math.ceil(e["num_packs"] / eff)
    packed = resolve_config(str(out), world_size=4)
    t = packed.config.training
    assert (t.packing, t.global_max_length, t.packing_strategy, t.per_device_train_batch_size) == (True, L, DEFAULT_STRATEGY, 1)
    assert (t.packing_buffer, t.packing_min_fill_ratio, t.packing_drop_last) == variant
    assert rec["recommended"]["packing_overlong"] == t.packing_overlong == "split"  # detection data
    assert t.per_device_eval_batch_size == 1 != pt.per_device_eval_batch_size
    assert t.effective_batch_size == eff and packed.gradient_accumulation_steps == eff // 4
    for key in STEP_KEYS:
        assert getattr(t, key) == (None if getattr(pt, key) is None else scaled(getattr(pt, key), new, old)), key
    assert t.output_dir == migrate.rename_run(pt.output_dir) != pt.output_dir
    assert t.logging_dir == migrate.rename_run(pt.logging_dir) != pt.logging_dir
    assert t.learning_rate == pt.learning_rate and t.num_train_epochs == pt.num_train_epochs  # inherited
    text = out.read_text()
    assert f"extends: {os.path.relpath(os.path.abspath('configs/dlora/sft_text_only_padding.yaml'), out.parent)}\n" \
        in text
    assert packed.files[-1] == str(out) and packed.files[-2].endswith("sft_text_only_padding.yaml")
    assert f"torchrun --nproc_per_node=4 -m swift_plugins.sft --config {out}" in text
    assert f"ceil({n} samples / effective_batch_size {eff}) = {old}" in text
    assert f"ceil({e['num_packs']} packs / effective_batch_size {eff}) = {new}" in text
    assert ("was not simulated" in text) is (not exact)
    lines = {line.split("  ")[0]: line.split() for line in printed.splitlines()}
    assert lines["steps per epoch"][-2:] == [str(old), str(new)]
    assert lines["eval_steps"][-2:] == [str(pt.eval_steps), str(t.eval_steps)]
    assert lines["gradient_accumulation_steps"][-2:] == [str(eff // (pt.per_device_train_batch_size * 4)),
                                                         str(eff // 4)]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_flags_choosing_the_simulated_buffered_variant_use_its_entry(analysis, tmp_path):
    sims, rec, n = analysis["sims"], analysis["rec"], analysis["stats"]["num_samples"]
    L = rec["recommended"]["global_max_length"]
    buffered = next(e for e in sims if e["global_max_length"] == L and e["buffer_size"] is not None
                    and e["overlong"] == "split")
    out = tmp_path / "p.yaml"
    res = migrate.migrate("configs/dlora/sft_text_only_padding.yaml", str(analysis["dir"]), str(out), world_size=4,
                          packing_buffer=buffered["buffer_size"], packing_min_fill_ratio=buffered["min_fill_ratio"],
                          packing_drop_last=buffered["drop_last"], log=lambda *_: None)
    assert res.exact_variant and res.entry == buffered
    assert res.new_steps_per_epoch == math.ceil(buffered["num_packs"] / 128)
    t = resolve_config(str(out), world_size=4).config.training
    assert (t.packing_buffer, t.packing_min_fill_ratio, t.packing_drop_last) == (
        buffered["buffer_size"], buffered["min_fill_ratio"], buffered["drop_last"])
    assert (f"{buffered['records_lost']} of {n} records lost by this plan" in out.read_text()
            and f"{buffered['records_split']} split into pieces" in out.read_text())


def test_tiny_padding_config_migrates_on_the_recommended_plan(analysis, tmp_path):
    out = tmp_path / "tiny_packed.yaml"
    res = migrate.migrate("configs/tiny/sft_padding.yaml", str(analysis["dir"]), str(out), log=lambda *_: None)
    rec, n = analysis["rec"], analysis["stats"]["num_samples"]
    L = rec["recommended"]["global_max_length"]
    padding = resolve_config("configs/tiny/sft_padding.yaml", world_size=WORLD).config.training
    # schema defaults (one window, min fill 0, no drop_last): the plan recommendations.json is built on
    assert (padding.packing_buffer, padding.packing_min_fill_ratio, padding.packing_drop_last) == (None, 0.0, False)
    e = entry_for(analysis["sims"], L, DEFAULT_STRATEGY, None)
    assert res.exact_variant and res.entry == e and e["num_packs"] == rec["why"]["num_packs"]
    assert res.world_size == rec["recommended"]["world_size"] == WORLD
    old, new = math.ceil(n / padding.effective_batch_size), math.ceil(e["num_packs"] / padding.effective_batch_size)
    assert (res.old_steps_per_epoch, res.new_steps_per_epoch) == (old, new)
    t = resolve_config(str(out), world_size=WORLD).config.training
    for key in STEP_KEYS:
        assert getattr(t, key) == scaled(getattr(padding, key), new, old), key
    assert t.max_steps == scaled(4, new, old) and t.output_dir == "output/tiny/packing"
    assert (t.packing_buffer, t.packing_min_fill_ratio, t.packing_drop_last) == (None, 0.0, False)
    assert "was not simulated" not in out.read_text()


def test_unsimulated_variant_uses_the_one_window_plan_and_says_so(analysis, tmp_path):
    out = tmp_path / "tiny_packed.yaml"
    res = migrate.migrate("configs/tiny/sft_padding.yaml", str(analysis["dir"]), str(out), packing_buffer=64,
                          log=lambda *_: None)
    L = analysis["rec"]["recommended"]["global_max_length"]
    assert not res.exact_variant and res.entry == entry_for(analysis["sims"], L, DEFAULT_STRATEGY, None)
    assert resolve_config(str(out), world_size=WORLD).config.training.packing_buffer == 64
    assert "buffer 64, min fill 0.0, drop_last false was not simulated" in out.read_text()


def test_match_samples_per_step_uses_the_recommendation(analysis, tmp_path):
    base = tmp_path / "padding8.yaml"  # padding run with the analysis' effective batch (8) on its 2 processes
    base.write_text(f"extends: {os.path.abspath('configs/tiny/sft_padding.yaml')}\n"
                    "training:\n  effective_batch_size: 8\n  max_steps: null\n")
    res = migrate.migrate(str(base), str(analysis["dir"]), str(tmp_path / "p.yaml"), match_samples_per_step=True,
                          log=lambda *_: None)
    match = analysis["rec"]["match_padding_samples_per_step"]
    t = resolve_config(str(tmp_path / "p.yaml"), world_size=WORLD).config.training
    assert t.effective_batch_size == res.new_effective_batch_size == match["effective_batch_size"]
    assert res.new_steps_per_epoch == match["optimizer_steps_per_epoch"]
    assert res.old_steps_per_epoch == analysis["rec"]["padding_baseline"]["optimizer_steps_per_epoch"]
    with pytest.raises(ValueError, match="--effective_batch_size 4 --world_size 2"):
        migrate.migrate("configs/tiny/sft_padding.yaml", str(analysis["dir"]), str(tmp_path / "q.yaml"),
                        match_samples_per_step=True, log=lambda *_: None)


def test_refusals_name_the_fix_and_write_nothing(analysis, tmp_path, capsys):
    d = str(analysis["dir"])
    with pytest.raises(ValueError, match="already true"):
        migrate.migrate("configs/tiny/sft_packing.yaml", d, str(tmp_path / "a.yaml"), log=lambda *_: None)
    with pytest.raises(ValueError, match="--max_lengths 4000,5000,8000"):
        migrate.migrate("configs/tiny/sft_padding.yaml", d, str(tmp_path / "b.yaml"), global_max_length=5000,
                        log=lambda *_: None)
    with pytest.raises(ConfigError, match="effective_batch_size values that work"):
        migrate.migrate("configs/tiny/sft_padding.yaml", d, str(tmp_path / "c.yaml"), world_size=3,
                        log=lambda *_: None)
    # the written file must validate: a value the schema refuses is caught before the rename
    with pytest.raises(ConfigError, match="packing_min_fill_ratio"):
        migrate.migrate("configs/tiny/sft_padding.yaml", d, str(tmp_path / "d.yaml"), packing_min_fill_ratio=1.5,
                        log=lambda *_: None)
    assert sorted(os.listdir(tmp_path)) == []
    assert migrate.main(["--padding_config", "configs/tiny/sft_packing.yaml", "--analysis_dir", d,
                         "--output", str(tmp_path / "e.yaml")]) == 2
    assert "give the padding config" in capsys.readouterr().err
