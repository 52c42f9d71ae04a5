"""swift_plugins.errors: UserError lines on stderr with exit status 2; other exceptions propagate."""
import pytest

from swift_plugins.errors import EXIT_USER_ERROR, UserError, format_user_error, run_main


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    assert EXIT_USER_ERROR == 2


def test_format_user_error_one_line():
    assert format_user_error(UserError("a.jsonl:3: width: expected a number")) == (
        "error: a.jsonl:3: width: expected a number")


def test_format_user_error_one_error_line_per_non_blank_line():
    e = UserError("x.yaml:1: a: bad\n\n   \nx.yaml:2: b: worse\ncommand line: --c: worst\n")
    assert format_user_error(e) == ("error: x.yaml:1: a: bad\n"
                                    "error: x.yaml:2: b: worse\n"
                                    "error: command line: --c: worst")


def test_format_user_error_keeps_leading_spaces_of_a_line():
    assert format_user_error(UserError("  indented\nplain")) == "error:   indented\nerror: plain"


def test_format_user_error_empty_message_is_the_type_name():
    assert format_user_error(UserError()) == "error: UserError"
    assert format_user_error(UserError(" \n\t\n")) == "error: UserError"


def test_format_user_error_empty_message_of_a_subclass_names_the_subclass():
    class BadRecord(UserError):
        pass

    assert format_user_error(BadRecord("")) == "error: BadRecord"


def test_run_main_user_error_prints_its_lines_on_stderr_and_returns_2(capsys):
    def main(argv):
        print("started", argv)
        raise UserError("first problem\nsecond problem")

    assert run_main(main, ["--x"]) == EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert out == "started ['--x']\n"  # only what main itself printed
    assert err == "error: first problem\nerror: second problem\n"


def test_run_main_user_error_writes_nothing_to_stdout(capsys):
    def main(argv):
        raise UserError("no such file: data/train.jsonl (fix the path)")

    assert run_main(main) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: no such file: data/train.jsonl (fix the path)\n"


def test_run_main_passes_the_return_value_and_argv_through(capsys):
    seen = []

    def main(argv):
        seen.append(argv)
        return 7

    assert run_main(main, ["a", "b"]) == 7
    assert run_main(main) == 7
    assert seen == [["a", "b"], None]
    assert capsys.readouterr() == ("", "")


def test_run_main_lets_other_exceptions_propagate_with_their_traceback(capsys):
    def main(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError) as info:
        run_main(main, [])
    assert info.value.args == ("bug",)
    assert info.traceback[-1].name == "main"  # the traceback still ends where it was raised
    assert capsys.readouterr() == ("", "")


def test_run_main_lets_a_plain_value_error_propagate(capsys):
    def main(argv):
        raise ValueError("not a user error")

    with pytest.raises(ValueError, match="^not a user error$"):
        run_main(main)
    assert capsys.readouterr().err == ""


def test_run_main_ctrl_c_is_one_line_and_exit_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "error: interrupted (Ctrl-C): nothing this run was writing is complete; run the command again\n")


def test_argument_parser_mistakes_are_one_line_user_errors():
    from swift_plugins.errors import ArgumentParser

    p = ArgumentParser(prog="x.py")
    p.add_argument("--n", type=int, required=True)
    with pytest.raises(UserError) as info:
        p.parse_args(["--n", "many"])
    assert str(info.value) == "command line: argument --n: invalid int value: 'many' (see x.py --help)"
    with pytest.raises(UserError, match="the following arguments are required: --n"):
        p.parse_args([])
