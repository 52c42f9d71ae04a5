"""The commands in the docs run with the real parsers, and an analysis next to a visualize --config
repeats that config's training setup."""
import importlib.util

from swift_plugins.analysis import migrate, report, token_analysis
from swift_plugins.analysis.outputs import zero_stage_of


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
    assert analyze.zero_stage == zero_stage_of(resolved.config.deepspeed.config)
    assert analyze.gradient_checkpointing == t.gradient_checkpointing
    assert analyze.train_jsonl == resolved.config.custom.train_jsonl


def test_doc_commands_parse_with_the_real_parsers_and_repeat_the_config(repo_root, monkeypatch):
    """Every analyse / visualize / migrate / sft command in the docs is accepted by its CLI parser, and an
    analysis next to a visualize --config uses that config's training setup."""
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
                elif argv[0] == "python" and argv[1] == "-m":
                    assert importlib.util.find_spec(argv[2]) is not None, argv
                elif argv[0] == "python":
                    assert (repo_root / argv[1]).is_file(), argv
    assert seen == set(parsers) | {"sft"} and paired >= 3  # README: dlora + tiny, migration.md: dlora
