"""scripts/visualize_packing_results.py on a real analysis of the bundled sample: every number in the
tables is recomputed here from the analysis JSON, the PNGs are decoded, memory equals memory_table()."""
from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest

from swift_plugins.analysis import memory as memory_module
from swift_plugins.analysis import report, token_analysis
from swift_plugins.analysis.memory import MemorySetup, ModelShape, memory_table

LENGTHS = (4000, 8000, 12000, 16000)
EFF, WORLD, EPOCHS = 8, 2, 2


def run_analysis(model, jsonl, out, cache):
    argv = ["--model_path", str(model), "--train_jsonl", str(jsonl), "--output_dir", str(out), "--cache_dir",
            str(cache), "--max_lengths", ",".join(map(str, LENGTHS)), "--effective_batch_size", str(EFF),
            "--world_size", str(WORLD), "--num_train_epochs", str(EPOCHS)]
    token_analysis.run(token_analysis.build_parser().parse_args(argv))
    return out


@pytest.fixture(scope="module")
def analysis_dir(tiny_model_dir, sample_dir, tmp_path_factory):
    # The length cache is shared with test_migrate.py (same session folder): the second analysis is a cache hit.
    cache = tmp_path_factory.getbasetemp() / "shared-analysis-cache"
    return run_analysis(tiny_model_dir, sample_dir / "train.jsonl", tmp_path_factory.mktemp("analysis"), cache)


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


def num(cell: str) -> float:
    """'1,234' / '45.35%' / '128.0' -> float (percent stays in percent units)."""
    return float(cell.replace(",", "").rstrip("%"))


def table(path, first):
    rows = report.parse_markdown_table(path.read_text(), first)
    return {r[first]: r for r in rows} if first == "parameter" else rows


def entry_for(sims, L, strategy="bfd", buffer=None):
    return next(e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"]) == (L, strategy, buffer))


def overhead_by_hand(lengths, b):
    """Padded / real tokens, batches of b consecutive samples: a plain loop, independent of report.py."""
    padded = real = 0
    for i in range(0, len(lengths), b):
        batch = lengths[i:i + b]
        padded += len(batch) * max(batch) - sum(batch)
        real += sum(batch)
    return padded, real


# ----------------------------------------------------------------------------------- unit
def test_padding_overhead_worked_examples():
    r = report.padding_overhead([3, 5, 2, 2], 2)
    assert (r["padded_tokens"], r["real_tokens"], r["batches"]) == (2, 12, 2) and r["overhead"] == 2 / 12
    assert r["efficiency"] == 12 / 14
    r = report.padding_overhead([3, 5, 2, 2], 3)  # [3, 5, 2] pads 2 + 3, [2] pads 0
    assert (r["padded_tokens"], r["batches"]) == (5, 2)
    perm = np.random.default_rng(7).permutation(4)
    lens = np.array([3, 5, 2, 9])[perm].tolist()
    assert report.padding_overhead([3, 5, 2, 9], 2, seed=7)["padded_tokens"] == overhead_by_hand(lens, 2)[0]
    assert report.padding_overhead([4, 4, 4], 1)["padded_tokens"] == 0


def test_padding_rows_delete_or_truncate():
    r = report.padding_rows([5, 12, 7], 10)
    assert (r["lengths"].tolist(), r["rows"], r["dropped"], r["truncated"]) == ([5, 7], 2, 1, 0)
    r = report.padding_rows([5, 12, 7], 10, "right")
    assert (r["lengths"].tolist(), r["rows"], r["dropped"], r["truncated"]) == ([5, 10, 7], 3, 0, 1)


def test_find_simulation_prefers_the_exact_variant_and_names_the_fix():
    sims = [{"global_max_length": 10, "strategy": "bfd", "buffer_size": None, "min_fill_ratio": 0.0,
             "drop_last": False, "n": 1},
            {"global_max_length": 10, "strategy": "bfd", "buffer_size": 4, "min_fill_ratio": 0.5,
             "drop_last": True, "n": 2}]
    assert report.find_simulation(sims, 10, "bfd", 4, 0.5, True) == (sims[1], True)
    assert report.find_simulation(sims, 10, "bfd", 4, 0.0, False) == (sims[0], False)
    assert report.find_simulation(sims, 10, "bfd") == (sims[0], True)
    assert report.find_simulation(sims, 10, "bfd", None, 0.5, True) == (sims[0], False)  # drops at the end: differs
    with pytest.raises(ValueError, match="--max_lengths 10,12"):
        report.find_simulation(sims, 12, "bfd")


def test_zero_stage_from_presets_and_json(repo_root, tmp_path):
    assert report.zero_stage_of(None) == 0
    assert report.zero_stage_of("zero3_offload") == 3
    assert report.zero_stage_of(str(repo_root / "configs/deepspeed/zero2.json")) == 2
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert report.zero_stage_of(str(tmp_path / "ds.json")) == 1
    with pytest.raises(FileNotFoundError, match="nope.json"):
        report.zero_stage_of(str(tmp_path / "nope.json"))


# ----------------------------------------------------------------------------------- outputs
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
    assert t["packing plan"]["packing"] == "bfd, one window"
    assert both("samples dropped") == (0, e["samples_dropped"])
    assert both("samples trained per epoch") == (n, e["samples_packed"]) and e["samples_packed"] + e[
        "samples_dropped"] == n
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
    packed_tokens = sum(lengths) - e["tokens_dropped"]
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
    rows = report.parse_markdown_table(text, "max_length")
    setup = MemorySetup(**data["rec"]["memory"]["setup"])
    expected = memory_table(ModelShape.from_config(tiny_model_dir), LENGTHS, setup)
    assert [num(r["max_length"]) for r in rows] == list(LENGTHS)
    for got, want in zip(rows, expected):
        for col in report.MEMORY_COLUMNS:
            assert num(got[f"{col} (GiB)"]) == want[f"{col}_gib"], col
        assert num(got["left (GiB)"]) == round(data["rec"]["memory"]["gpu_memory_gib"] - want["total_gib"], 2)
    assert expected == data["rec"]["memory"]["per_length"]  # same function, same setup as the analysis
    assert memory_module.__doc__.strip() in text
    assert f"ZeRO stage {setup.zero_stage}" in text and f"world size {setup.world_size}" in text


def test_summary_has_recommendation_stats_and_every_simulation(default_report, analysis_dir, data):
    text = (analysis_dir / "FULL_RESULTS_SUMMARY.md").read_text()
    stats, sims, rec = data["stats"], data["sims"], data["rec"]
    L = rec["recommended"]["global_max_length"]
    assert f"global_max_length: {L}\n" in text and rec["reason"] in text
    st = {r["statistic"]: r for r in report.parse_markdown_table(text, "statistic")}
    for name in ("mean", "median", "min", "p95", "p99", "max", "sum"):
        for col, key in (("total tokens", "total_tokens"), ("text tokens", "text_tokens"),
                         ("image tokens", "image_tokens"), ("objects", "num_objects")):
            assert num(st[name][col]) == stats[f"{name}_{key}"], (name, col)
    sim_rows = report.parse_markdown_table(text, "max_length")
    assert len(sim_rows) == len(sims)
    for row, e in zip(sim_rows, sims):
        assert (num(row["max_length"]), row["strategy"], num(row["packs"]), num(row["L1 bound"]),
                num(row["dropped"]), num(row["optimizer steps/epoch"]), num(row["efficiency"])) == (
            e["global_max_length"], e["strategy"], e["num_packs"], e["l1_bound"], e["samples_dropped"],
            e["optimizer_steps_per_epoch"], round(100 * e["efficiency"], 2))
    assert "figures/token_distribution.png" in text and "## Migration checklist" in text
    assert f"torchrun --nproc_per_node={WORLD} -m swift_plugins.sft --config" in text


def test_config_supplies_the_training_setup(dlora_report, data, tiny_model_dir, repo_root):
    from swift_plugins.config import resolve_config

    t = table(dlora_report / "comparison_table.md", "parameter")
    sims, rec, n = data["sims"], data["rec"], data["stats"]["num_samples"]
    L = rec["recommended"]["global_max_length"]
    cfg = resolve_config(str(repo_root / "configs/dlora/sft_text_only_padding.yaml"), world_size=4).config
    pt = cfg.training
    variant = (L, "bfd", pt.packing_buffer, pt.packing_min_fill_ratio, pt.packing_drop_last)
    exact = [e for e in sims if (e["global_max_length"], e["strategy"], e["buffer_size"], e["min_fill_ratio"],
                                 e["drop_last"]) == variant]
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
    assert num(t["samples dropped"]["packing"]) == e["samples_dropped"]
    assert f"padding_overhead, shuffled (seed {pt.data_seed})" in t
    mem = report.parse_markdown_table((dlora_report / "memory_estimates.md").read_text(), "max_length")
    want = memory_table(ModelShape.from_config(tiny_model_dir), LENGTHS,
                        MemorySetup(tuner="dora" if cfg.tuner.use_dora else cfg.tuner.tuner_type,
                                    lora_rank=cfg.tuner.lora_rank,
                                    zero_stage=report.zero_stage_of(cfg.deepspeed.config),
                                    gradient_checkpointing=pt.gradient_checkpointing, world_size=4))
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


# ----------------------------------------------------------------------------------- docs
DOCS = ("docs/temp_packed_dataset/README.md", "docs/temp_packed_dataset/equivalence-analysis.md", "docs/migration.md")


def _blocks(text):
    """Shell commands of each ```bash block (continuation lines joined, comments dropped), per block."""
    import re
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        cmds = []
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#")[0].strip()
            if cmd:
                cmds.append(shlex.split(cmd))
        out.append(cmds)
    return out


def _check_setup_matches_config(analyze, visualize):
    """The analysis flags of a doc block repeat the training setup of the block's --config."""
    from swift_plugins.config import resolve_config

    resolved = resolve_config(visualize.config, world_size=visualize.world_size)
    t, tuner = resolved.config.training, resolved.config.tuner
    assert analyze.world_size == visualize.world_size
    assert analyze.effective_batch_size == t.effective_batch_size
    assert analyze.padding_batch_size == t.per_device_train_batch_size
    assert analyze.num_train_epochs == t.num_train_epochs
    assert analyze.max_pixels == resolved.config.template.max_pixels
    assert analyze.tuner == ("full" if tuner.tuner_type == "full" else "dora" if tuner.use_dora else "lora")
    assert analyze.lora_rank == tuner.lora_rank
    assert analyze.zero_stage == report.zero_stage_of(resolved.config.deepspeed.config)
    assert analyze.gradient_checkpointing == t.gradient_checkpointing
    assert analyze.train_jsonl == resolved.config.custom.train_jsonl


def test_doc_commands_parse_with_the_real_parsers_and_repeat_the_config(repo_root, monkeypatch):
    """Every analyse / visualize / migrate / sft command in the docs is accepted by its CLI parser, and an
    analysis next to a visualize --config uses that config's training setup."""
    from swift_plugins.analysis import migrate
    from swift_plugins.config import parse_cli

    monkeypatch.chdir(repo_root)
    parsers = {"scripts/analyze_token_lengths.py": token_analysis.build_parser(),
               "scripts/visualize_packing_results.py": report.build_parser(),
               "scripts/migrate_to_packing.py": migrate.build_parser()}
    seen, paired = set(), 0
    for doc in DOCS:
        analyze = None  # the latest analysis command of this doc: the one a following visualize reads
        for block in _blocks((repo_root / doc).read_text()):
            for argv in block:
                if argv[0] == "python" and argv[1] in parsers:
                    assert (repo_root / argv[1]).is_file()
                    args = parsers[argv[1]].parse_args(argv[2:])  # SystemExit on an unknown flag
                    seen.add(argv[1])
                    if argv[1] == "scripts/analyze_token_lengths.py":
                        analyze = args
                    elif argv[1] == "scripts/visualize_packing_results.py" and args.config:
                        _check_setup_matches_config(analyze, args)
                        paired += 1
                elif "swift_plugins.sft" in argv:
                    parse_cli(argv[argv.index("swift_plugins.sft") + 1:])
                    seen.add("sft")
                elif argv[0] == "python":
                    assert (repo_root / argv[1]).is_file(), argv
    assert seen == set(parsers) | {"sft"} and paired >= 3  # README: dlora + tiny, migration.md: dlora


def test_equivalence_doc_generated_sections_are_current(repo_root):
    path = repo_root / "docs/temp_packed_dataset/equivalence-analysis.md"
    text = path.read_text()
    sections = report.generated_sections()
    for name in sections:
        assert report.GENERATED_BEGIN.format(name=name) in text, name
    assert report.update_generated_docs(text, sections) == text, (
        "stale generated sections: python scripts/visualize_packing_results.py --update_docs " + str(path))


def test_equivalence_doc_prose_states_the_mechanism_and_quotes_no_numbers(repo_root):
    import re

    text = (repo_root / "docs/temp_packed_dataset/equivalence-analysis.md").read_text()
    prose = re.sub(r"<!-- generated:(\S+) begin.*?<!-- generated:\1 end -->", "", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    for term in ("num_items_in_batch", "-100", "cu_seqlens", "block-diagonal", "get_rope_index", "mrope",
                 "token mean", "warmup_ratio", "eval_steps", "save_steps", "save_delay_steps", "logging_steps",
                 "learning-rate schedule", "samples per step", "optimizer steps per epoch",
                 "ceil(packs / effective_batch_size)", "average_tokens_across_devices"):
        assert term in prose, term
    prose = re.sub(r"(?m)^(#+ )?\d+\. ", "", prose)  # section and list numbering
    prose = prose.replace("ms-swift 4.6", "").replace("transformers 5.x", "").replace("arXiv 2410.08081", "")
    numbers = {m.rstrip(".,") for m in re.findall(r"(?<![\w.-])\d[\d,.]*(?![\w])", prose)}
    assert numbers <= {"0", "1", "2"}, numbers  # formulas only (x + 1, 1/2); results live in generated files


def test_read_sample_stats_exact_rows_and_errors(tmp_path):
    path = tmp_path / "sample_stats.jsonl"
    path.write_text('{"line": 1, "text_tokens": 40, "image_tokens": 64, "total_tokens": 104, "num_objects": 2}\n'
                    '\n'
                    '{"line": 3, "text_tokens": 7, "image_tokens": 0, "total_tokens": 7}\n')
    rows = report.read_sample_stats(str(path))
    assert rows.dtype == np.int64 and rows.tolist() == [[40, 64, 104], [7, 0, 7]]
    path.write_text("")
    assert report.read_sample_stats(str(path)).shape == (0, 3)
    bad = {'{"text_tokens": 1, "image_tokens": 2, "total_tokens": 3.0}':
           "field 'total_tokens' must be a non-negative integer, got 3.0",
           '{"text_tokens": true, "image_tokens": 2, "total_tokens": 3}':
           "field 'text_tokens' must be a non-negative integer, got True",
           '{"text_tokens": 1, "total_tokens": 3}': "field 'image_tokens' must be a non-negative integer, got None",
           '[1, 2, 3]': "field 'text_tokens' must be a non-negative integer, got None",
           '{"text_tokens": 1,': "not valid JSON"}
    for line, message in bad.items():
        path.write_text('{"text_tokens": 1, "image_tokens": 2, "total_tokens": 3}\n' + line + "\n")
        with pytest.raises(ValueError) as e:
            report.read_sample_stats(str(path))
        assert str(e.value).startswith(f"{path}:2: {message}") and report.ANALYZE_HINT in str(e.value)
