"""swift_plugins.config.cli: flags and --section.key overrides, all problems at once."""
import pytest

from swift_plugins import config as C


def test_parse_cli_groups_flags_and_values():
    cli = C.parse_cli(["--config", "c.yaml", "--training.learning_rate", "1e-4", "--tuner.target_modules", "q_proj",
                       "v_proj", "--model.model=/m", "--print_config", "--world_size", "4", "--export_flat", "o.yaml"])
    assert cli == C.CliArgs(config="c.yaml", print_config=True, export_flat="o.yaml", world_size=4, overrides=(
        ("training.learning_rate", ("1e-4",)), ("tuner.target_modules", ("q_proj", "v_proj")),
        ("model.model", ("/m",))))


def test_parse_cli_errors_all_at_once():
    with pytest.raises(C.ConfigError) as e:
        C.parse_cli(["stray", "--config", "c.yaml", "--learning_rate", "1e-4", "--world_size", "0", "--lerning_rate",
                     "1", "--print_config", "yes"])
    assert [str(i) for i in e.value.issues] == [
        "command line: unexpected argument 'stray' (options start with --)",
        "command line: --learning_rate: unknown option (did you mean '--training.learning_rate'?); keys are set as "
        "--section.key value",
        "command line: --world_size: expected a positive int, got '0'",
        "command line: --lerning_rate: unknown option (did you mean '--training.learning_rate'?); keys are set as "
        "--section.key value",
        "command line: --print_config: takes no value, got 'yes'",
    ]
    with pytest.raises(C.ConfigError) as e:
        C.parse_cli(["--training.seed", "1"])
    assert str(e.value) == ("command line: --config: required (the YAML file, e.g. configs/tiny/sft_padding.yaml)")
