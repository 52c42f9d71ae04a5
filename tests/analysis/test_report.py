"""scripts/visualize_packing_results.py on a real analysis of the bundled sample: every number in the
tables is recomputed here from the analysis JSON, the PNGs are decoded, memory equals memory_table()."""
from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest

from swift_plugins.packing import DEFAULT_STRATEGY

from swift_plugins.analysis import memory as memory_module
from swift_plugins.analysis import report
from swift_plugins.analysis.outputs import zero_stage_of
from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table

from helpers import ANALYSIS_EFF as EFF, ANALYSIS_EPOCHS as EPOCHS, ANALYSIS_LENGTHS as LENGTHS, ANALYSIS_WORLD as WORLD


@pytest.fixture(scope="module")
def analysis_dir(sample_analysis, tmp_path_factory):
    copy = tmp_path_factory.mktemp("report") / "analysis"  # this module writes figures and a summary into it
    shutil.copytree(sample_analysis, copy)
    return copy


@pytest.fixture(scope="module")
def data(analysis_dir):
    load = lambda name: json.loads((analysis_dir / name).read_text())  # noqa: E731
    rows = [json.loads(x) for x in (analysis_dir / "sample_stats.jsonl").read_text().splitlines()]
    return {"stats": load("dataset_stats.json"), "sims": load("packing_simulations.json"),
            "rec": load("recommendations.json"), "rows": rows}


@pytest.fixture(scope="module")
def default_report(analysis_dir):
    out = analysis_dir / "figures"
    assert report.main(["--input_dir", str(analysis_dir), "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dlora_report(analysis_dir, repo_root, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.chdir(repo_root)  # config paths (deepspeed json) are relative to the repository root
    copy = tmp_path_factory.mktemp("dlora") / "analysis"  # its own FULL_RESULTS_SUMMARY.md
    shutil.copytree(analysis_dir, copy)
    out = copy / "figures"
    assert report.main(["--input_dir", str(copy), "--output_dir", str(out), "--config",
                        "configs/dlora/sft_text_only_padding.yaml", "--world_size", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def parse_markdown_table(text: str, first_header: str) -> list[dict]:
    """The first Markdown table whose first header cell is ``first_header``, as dicts (cells stripped)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            header, out = cells, []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                out.append(dict(zip(header, [c.strip() for c in row.strip().strip("|").split(" | ")])))
            return out
    raise ValueError(f"no table starting with column {first_header!r}")


def num(cell: str) -> float:
    """'1,234' / '45.35%' / '128.0' -> float (percent stays in percent units)."""
    return float(cell.replace(",", "").rstrip("%"))


def table(path, first):
    rows = parse_markdown_table(path.read_text(), first)
    return {r[first]: r for r in rows} if first == "parameter" else rows


def entry_for(sims, L, strategy=DEFAULT_STRATEGY, buffer=None, overlong="split"):
    return next(e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["overlong"])
                == (L, strategy, buffer, overlong))


def overhead_by_hand(lengths, b):
    """Padded / real tokens, batches of b consecutive samples: a plain loop, independent of report.py."""
    padded = real = 0
    for i in range(0, len(lengths), b):
        batch = lengths[i:i + b]
        padded += len(batch) * max(batch) - sum(batch)
        real += sum(batch)
    return padded, real


def test_writes_every_output_and_the_pngs_decode_at_full_size(default_report, analysis_dir):
    import matplotlib.image

    for name in ("token_distribution.png", "packing_efficiency.png", "comparison_table.md", "memory_estimates.md"):
        assert (default_report / name).is_file(), name
    assert (analysis_dir / "FULL_RESULTS_SUMMARY.md").is_file()
    assert not [p for p in default_report.iterdir() if p.name.startswith(".")], "temporary files left behind"
    for name in ("token_distribution.png", "packing_efficiency.png"):
        raw = (default_report / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
        assert struct.unpack(">II", raw[16:24]) == (1540, 1100)  # figsize 14 x 10 inches at 110 dpi
        pixels = matplotlib.image.imread(str(default_report / name))
        assert pixels.shape[:2] == (1100, 1540)
        assert (pixels[..., :3] < 0.5).mean() > 0.005, "almost blank figure"


def test_comparison_table_numbers_are_the_analysis_numbers(default_report, data):
    t = table(default_report / "comparison_table.md", "parameter")
    stats, sims, rec, rows = data["stats"], data["sims"], data["rec"], data["rows"]
    L = rec["recommended"]["global_max_length"]
    e = entry_for(sims, L)
    n = stats["num_samples"]
    pad_b = rec["padding_baseline"]["per_device_train_batch_size"]
    lengths = [r["total_tokens"] for r in rows]

    def both(key):
        return num(t[key]["padding"]), num(t[key]["packing"])

    assert both("samples analysed") == (n, n)
    assert num(t["max sequence length (tokens)"]["packing"]) == L
    assert t["packing plan"]["packing"] == f"{DEFAULT_STRATEGY}, one window, overlong split"
    assert rec["recommended"]["packing_overlong"] == "split" and e["records_split"] > 0  # dense scenes in the sample
    assert both("records lost (not trained)") == (0, e["records_lost"]) and e["records_lost"] == 0
    assert num(t["records split into pieces"]["packing"]) == e["records_split"]
    assert both("samples trained per epoch") == (n, e["samples_packed"])
    assert e["samples_packed"] + e["samples_dropped"] == e["samples"] > n  # a split record trains as its pieces
    assert both("rows per epoch (samples or packs)") == (n, e["num_packs"])
    assert both("per_device_train_batch_size") == (pad_b, 1)
    assert both("effective_batch_size") == (EFF, EFF)
    assert both("gradient_accumulation_steps") == (EFF // (pad_b * WORLD), EFF // WORLD)
    assert both("steps_per_epoch") == (math.ceil(n / EFF), e["optimizer_steps_per_epoch"])
    assert both("steps_per_epoch")[0] == rec["padding_baseline"]["optimizer_steps_per_epoch"]
    assert both("total_optimizer_steps") == (rec["padding_baseline"]["total_optimizer_steps"],
                                             e["total_optimizer_steps"])
    assert both("samples_per_step") == (EFF, round(e["samples_packed"] / e["num_packs"] * EFF, 1))
    padded, real = overhead_by_hand(lengths, pad_b)
    packed_tokens = e["packed_tokens"]  # the pieces of a split record each repeat its prompt and image
    assert packed_tokens > sum(lengths) and e["tokens_dropped"] == 0
    assert both("real tokens per epoch") == (real, packed_tokens)
    assert both("padded tokens per epoch") == (padded, 0)
    assert both("padding_overhead") == (round(100 * padded / real, 2), 0.0)
    shuffled = [lengths[i] for i in np.random.default_rng(stats["inputs"]["conversation"]["seed"]).permutation(n)]
    key = f"padding_overhead, shuffled (seed {stats['inputs']['conversation']['seed']})"
    assert num(t[key]["padding"]) == round(100 * overhead_by_hand(shuffled, pad_b)[0] / real, 2)
    assert both("efficiency") == (round(100 * real / (real + padded), 2), round(100 * e["efficiency"], 2))
    assert num(t["unused pack capacity (tokens)"]["packing"]) == e["num_packs"] * L - packed_tokens


def test_memory_estimates_equal_memory_table_and_carry_the_module_docstring(default_report, data, tiny_model_dir):
    text = (default_report / "memory_estimates.md").read_text()
    rows = parse_markdown_table(text, "max_length")
    setup = MemorySetup(**data["rec"]["memory"]["setup"])
    expected = memory_table(ModelShape.from_config(tiny_model_dir), LENGTHS, setup)
    assert [num(r["max_length"]) for r in rows] == list(LENGTHS)
    for got, want in zip(rows, expected):
        for col in report.MEMORY_COLUMNS:
            assert num(got[f"{col} (GiB)"]) == want[f"{col}_gib"], col
        for col in report.BOTH_PATHS:  # both loss paths side by side; the setup's is the fused one
            assert num(got[f"{col} (GiB)"]) == want[f"{col}_gib"], col
        assert (want["logits_gib"], want["total_gib"]) == (want["logits_fused_gib"], want["total_fused_gib"])
        assert num(got["left (GiB)"]) == round(data["rec"]["memory"]["gpu_memory_gib"] - want["total_gib"], 2)
    assert expected == data["rec"]["memory"]["per_length"]  # same function, same setup as the analysis
    assert memory_module.__doc__.strip() in text
    assert f"ZeRO stage {setup.zero_stage}" in text and f"world size {setup.world_size}" in text
    assert "- Loss: fused linear cross-entropy, one chunk of logits (`training.fused_loss true`)" in text


def test_summary_has_recommendation_stats_and_every_simulation(default_report, analysis_dir, data):
    text = (analysis_dir / "FULL_RESULTS_SUMMARY.md").read_text()
    stats, sims, rec = data["stats"], data["sims"], data["rec"]
    L = rec["recommended"]["global_max_length"]
    assert f"global_max_length: {L}\n" in text and rec["reason"] in text
    st = {r["statistic"]: r for r in parse_markdown_table(text, "statistic")}
    for name in ("mean", "median", "min", "p95", "p99", "max", "sum"):
        for col, key in (("total tokens", "total_tokens"), ("text tokens", "text_tokens"),
                         ("image tokens", "image_tokens"), ("objects", "num_objects")):
            assert num(st[name][col]) == stats[f"{name}_{key}"], (name, col)
    sim_rows = parse_markdown_table(text, "max_length")
    assert len(sim_rows) == len(sims)
    for row, e in zip(sim_rows, sims):
        assert (num(row["max_length"]), row["strategy"], row["overlong"], num(row["records split"]),
                num(row["packs"]), num(row["L1 bound"]), num(row["records lost"]), num(row["optimizer steps/epoch"]),
                num(row["efficiency"])) == (
            e["global_max_length"], e["strategy"], e["overlong"], e["records_split"], e["num_packs"], e["l1_bound"],
            e["records_lost"], e["optimizer_steps_per_epoch"], round(100 * e["efficiency"], 2))
    assert "figures/token_distribution.png" in text and "## Migration checklist" in text
    assert f"torchrun --nproc_per_node={WORLD} -m swift_plugins.sft --config" in text


def test_config_supplies_the_training_setup(dlora_report, data, tiny_model_dir, repo_root):
    from swift_plugins.config import resolve_config

    t = table(dlora_report / "comparison_table.md", "parameter")
    sims, rec, n = data["sims"], data["rec"], data["stats"]["num_samples"]
    L = rec["recommended"]["global_max_length"]
    cfg = resolve_config(str(repo_root / "configs/dlora/sft_text_only_padding.yaml"), world_size=4).config
    pt = cfg.training
    variant = (L, DEFAULT_STRATEGY, pt.packing_buffer, pt.packing_min_fill_ratio, pt.packing_drop_last, "split")
    exact = [e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["min_fill_ratio"],
                                 e["drop_last"], e["overlong"]) == variant]
    e = exact[0] if exact else entry_for(sims, L)
    eff, b = pt.effective_batch_size, pt.per_device_train_batch_size
    assert t["packing plan"]["packing"] == report.variant_text(e)
    assert num(t["world_size"]["padding"]) == 4 and num(t["per_device_train_batch_size"]["padding"]) == b
    assert (num(t["gradient_accumulation_steps"]["padding"]), num(t["gradient_accumulation_steps"]["packing"])) == (
        eff // (b * 4), eff // 4)
    assert num(t["steps_per_epoch"]["padding"]) == math.ceil(n / eff)
    assert num(t["steps_per_epoch"]["packing"]) == math.ceil(e["num_packs"] / eff)
    per_epoch = math.ceil(e["num_packs"] / eff)
    assert num(t["total_optimizer_steps"]["packing"]) == math.ceil(pt.num_train_epochs * per_epoch)
    assert num(t["records lost (not trained)"]["packing"]) == e["records_lost"]
    assert f"padding_overhead, shuffled (seed {pt.data_seed})" in t
    mem = parse_markdown_table((dlora_report / "memory_estimates.md").read_text(), "max_length")
    want = memory_table(ModelShape.from_config(tiny_model_dir), LENGTHS,
                        MemorySetup(tuner="dora" if cfg.tuner.use_dora else cfg.tuner.tuner_type,
                                    lora_rank=cfg.tuner.lora_rank,
                                    zero_stage=zero_stage_of(cfg.deepspeed.config),
                                    gradient_checkpointing=pt.gradient_checkpointing, world_size=4,
                                    fused_loss=pt.fused_loss))
    assert [num(r["total (GiB)"]) for r in mem] == [w["total_gib"] for w in want]
    assert f"No config.json in `{cfg.model.model}`" in (dlora_report / "memory_estimates.md").read_text()


def test_bad_inputs_fail_with_the_fix_and_write_nothing(analysis_dir, tmp_path, capsys):
    assert report.main(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "missing dataset_stats.json, sample_stats.jsonl" in err and "analyze_token_lengths.py" in err
    assert report.main(["--input_dir", str(analysis_dir), "--output_dir", str(tmp_path / "g"),
                        "--global_max_length", "5000"]) == 2
    assert "--max_lengths 4000,5000,8000,12000,16000" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()




def test_gradient_accumulation_cell():
    assert (report._ga(8, 2, 2), report._ga(8, 3, 2), report._ga(8, 1, 8)) == ("2", "not integral (8 / (3 x 2))", "1")
