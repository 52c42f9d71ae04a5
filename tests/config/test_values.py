"""swift_plugins.config.values: Issue / ConfigError text, value checks and range problems on real schema leaves."""
import pytest

from swift_plugins.config.schema import SCHEMA_LEAVES
from swift_plugins.config.values import (ConfigError, Issue, check_value, fmt_num, parse_tokens, range_problem, show,
                                         suggest, type_word, unknown_key_issue)
from swift_plugins.errors import UserError, format_user_error

BY_NAME = {leaf.meta["name"]: leaf for leaf in SCHEMA_LEAVES if leaf.meta["name"] is not None}


@pytest.fixture(scope="module")
def leaf():
    """Schema leaves by meta name, each checked to have the type this file relies on."""
    expected = {"lora_rank": "int", "max_steps": "int | null", "lora_dropout": "float", "learning_rate": "float | null",
                "use_dora": "bool", "tuner_type": "str", "torch_dtype": "str | null", "target_modules": "list[str]",
                "train_jsonl": "list[str]", "val_jsonl": "list[str] | null", "modules_to_save": "list[str]",
                "max_pixels": "int | null", "packing_min_fill_ratio": "float"}
    assert {name: BY_NAME[name].type_name() for name in expected} == expected
    return BY_NAME.__getitem__


def test_issue_str_with_and_without_key():
    assert str(Issue("configs/x.yaml:12", "training.lora_rank", "expected int, got str 'eight'")) == (
        "configs/x.yaml:12: training.lora_rank: expected int, got str 'eight'")
    assert str(Issue("environment", "", "SWIFTPACK_X is not a number")) == "environment: SWIFTPACK_X is not a number"


def test_config_error_is_one_issue_per_line():
    issues = [Issue("a.yaml:1", "model.model", "required"), Issue("command line", "", "no config given")]
    e = ConfigError(iter(issues))
    assert isinstance(e, UserError)
    assert e.issues == issues
    assert str(e) == "a.yaml:1: model.model: required\ncommand line: no config given"
    assert format_user_error(e) == "error: a.yaml:1: model.model: required\nerror: command line: no config given"


def test_show():
    assert [show(v) for v in (None, True, False, "a", 3, 2.5, [1, "a"], {"k": None}, (1, 2))] == [
        "null", "true", "false", "'a'", "3", "2.5", '[1, "a"]', '{"k": null}', "[1, 2]"]
    assert show({"p": object}) == '{"p": "<class \'object\'>"}'  # non-JSON values via str


def test_type_word():
    assert [type_word(v) for v in (None, True, 1, 1.0, "s", [], {}, (1,))] == [
        "null", "bool", "int", "float", "str", "list", "mapping", "tuple"]


def test_suggest_close_match_and_no_match():
    assert suggest("learnign_rate", ["weight_decay", "learning_rate"]) == "learning_rate"
    assert suggest("lor", iter(("lora", "full"))) == "lora"
    assert suggest("zzzz", ["learning_rate", "weight_decay"]) is None
    assert suggest("anything", []) is None


def test_unknown_key_in_a_section_suggests_its_sibling():
    assert str(unknown_key_issue("x.yaml:3", ("training", "learnign_rate"))) == (
        "x.yaml:3: training.learnign_rate: unknown key (did you mean 'learning_rate'?)")
    assert str(unknown_key_issue("command line", ("training", "learnign_rate"), flag=True)) == (
        "command line: training.learnign_rate: unknown key (did you mean '--training.learning_rate'?)")
    assert unknown_key_issue("x", ("custom", "coord_tokens", "enabld")).message == (
        "unknown key (did you mean 'enabled'?)")


def test_unknown_key_of_another_section_suggests_it_with_its_section():
    issue = unknown_key_issue("x.yaml:5", ("training", "max_pixels"))
    assert issue == Issue("x.yaml:5", "training.max_pixels", "unknown key (did you mean 'template.max_pixels'?)")
    assert unknown_key_issue("c", ("model", "lora_rank"), flag=True).message == (
        "unknown key (did you mean '--tuner.lora_rank'?)")
    assert unknown_key_issue("c", ("foo", "lora_rank")).message == "unknown key (did you mean 'tuner.lora_rank'?)"
    assert unknown_key_issue("c", ("model", "lora_rnk")).message == "unknown key (did you mean 'tuner.lora_rank'?)"


def test_unknown_section_and_no_suggestion():
    assert str(unknown_key_issue("x.yaml:1", ("trainin",))) == (
        "x.yaml:1: trainin: unknown section (did you mean 'training'?)")
    assert str(unknown_key_issue("x.yaml:1", ("zzzzzz",))) == "x.yaml:1: zzzzzz: unknown section"
    assert unknown_key_issue("c", ("training", "zzzz")).message == "unknown key"
    assert unknown_key_issue("c", ("training", "learning_rate", "x")).message == "unknown key"


def test_check_value_int(leaf):
    rank = leaf("lora_rank")
    assert check_value(rank, 8) == (8, None)
    assert check_value(rank, True) == (None, "expected int, got bool true")
    assert check_value(rank, "8") == (None, "expected int, got str '8'")
    assert check_value(rank, 8.0) == (None, "expected int, got float 8.0")
    assert check_value(rank, None) == (None, "expected int, got null")
    assert check_value(leaf("max_steps"), None) == (None, None)


def test_check_value_float_accepts_yaml_1_1_exponent_strings_and_ints(leaf):
    lr = leaf("learning_rate")
    assert check_value(lr, "1e-4") == (0.0001, None)
    assert check_value(lr, " 5E3 ") == (5000.0, None)
    value, problem = check_value(lr, 2)
    assert (value, type(value), problem) == (2.0, float, None)
    assert check_value(lr, "fast") == (None, "expected float | null, got str 'fast'")
    assert check_value(lr, False) == (None, "expected float | null, got bool false")


def test_check_value_bool_and_str(leaf):
    assert check_value(leaf("use_dora"), True) == (True, None)
    assert check_value(leaf("use_dora"), "true") == (None, "expected bool, got str 'true'")
    assert check_value(leaf("use_dora"), 1) == (None, "expected bool, got int 1")
    assert check_value(leaf("tuner_type"), "anything") == ("anything", None)  # choices: range_problem
    assert check_value(leaf("tuner_type"), 3) == (None, "expected str, got int 3")


def test_check_value_lists(leaf):
    tm = leaf("target_modules")
    assert check_value(tm, "all-linear") == (["all-linear"], None)
    assert check_value(tm, ["q_proj", "v_proj"]) == (["q_proj", "v_proj"], None)
    assert check_value(tm, [1]) == (None, "expected list[str], got list [1]")
    assert check_value(tm, {"a": 1}) == (None, 'expected list[str], got mapping {"a": 1}')
    assert check_value(tm, None) == (None, "expected list[str], got null")
    assert check_value(leaf("train_jsonl"), []) == (None, "required, got an empty list")
    assert check_value(leaf("modules_to_save"), []) == ([], None)
    assert check_value(leaf("val_jsonl"), None) == (None, None)


def test_parse_tokens_int_and_bool(leaf):
    rank = leaf("lora_rank")
    assert parse_tokens(rank, ["8"]) == (8, None)
    assert parse_tokens(rank, ["+3"]) == (3, None)
    assert parse_tokens(rank, ["eight"]) == (None, "expected int, got 'eight'")
    assert parse_tokens(rank, ["null"]) == (None, "expected int, got 'null'")
    assert parse_tokens(rank, ["1", "2"]) == (None, "expected one value (int), got 2: 1 2")
    assert parse_tokens(rank, []) == (None, "expected one value (int), got 0: (none)")
    assert parse_tokens(leaf("max_steps"), ["None"]) == (None, None)
    dora = leaf("use_dora")
    assert [parse_tokens(dora, [t]) for t in ("TRUE", "1", "yes", "False", "0", "no")] == [
        (True, None)] * 3 + [(False, None)] * 3
    assert parse_tokens(dora, ["maybe"]) == (None, "expected bool (true or false), got 'maybe'")


def test_parse_tokens_float_str_and_lists(leaf):
    lr = leaf("learning_rate")
    assert parse_tokens(lr, ["1e-4"]) == (0.0001, None)
    assert parse_tokens(lr, [".5"]) == (0.5, None)
    assert parse_tokens(lr, ["1e"]) == (None, "expected float, got '1e'")
    assert parse_tokens(lr, ["nan"]) == (None, "expected float, got 'nan'")
    assert parse_tokens(lr, ["null"]) == (None, None)
    assert parse_tokens(leaf("torch_dtype"), ["bf16"]) == ("bf16", None)
    assert parse_tokens(leaf("target_modules"), ["q", "v"]) == (["q", "v"], None)
    assert parse_tokens(leaf("target_modules"), ["null"]) == (["null"], None)  # not optional
    assert parse_tokens(leaf("val_jsonl"), ["none"]) == (None, None)


def test_range_problem_choices(leaf):
    tt = leaf("tuner_type")
    assert range_problem(tt, "lora") is None
    assert range_problem(tt, "lor") == "'lor' is not one of 'lora', 'full' (did you mean 'lora'?)"
    assert range_problem(tt, "xyz") == "'xyz' is not one of 'lora', 'full'"
    assert range_problem(leaf("torch_dtype"), None) is None


def test_range_problem_bounds(leaf):
    assert range_problem(leaf("lora_rank"), 1) is None
    assert range_problem(leaf("lora_rank"), 0) == "must be >= 1, got 0"
    assert range_problem(leaf("lora_dropout"), 1.0) == "must be >= 0 and < 1, got 1"
    assert range_problem(leaf("lora_dropout"), -0.5) == "must be >= 0 and < 1, got -0.5"
    assert range_problem(leaf("packing_min_fill_ratio"), 1.5) == "must be >= 0 and <= 1, got 1.5"
    assert range_problem(leaf("learning_rate"), 0.0) == "must be > 0, got 0"
    assert range_problem(leaf("max_pixels"), 1000) == "must be >= 1024, got 1000"
    assert range_problem(leaf("max_pixels"), None) is None
    assert range_problem(leaf("use_dora"), True) is None


def test_fmt_num():
    assert [fmt_num(x) for x in (3, 3.0, -0.0, 0.5, 1e-05, 1e20, float("inf"))] == [
        "3", "3", "0", "0.5", "1e-05", "100000000000000000000", "inf"]
