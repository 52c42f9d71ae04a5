"""swift_plugins.dev.update_docs: which regions of a Markdown file are regenerated, and the command's contract."""
from __future__ import annotations

from swift_plugins.config.docs import DOC_BEGIN, DOC_END, schema_markdown
from swift_plugins.dev.equivalence_docs import GENERATED_BEGIN, GENERATED_END
from swift_plugins.dev.update_docs import main, update_files, update_text

HEAD, TAIL = "# Title\n\nkept before\n", "\nkept after\n"
BEGIN, END = GENERATED_BEGIN.format(name="demo"), GENERATED_END.format(name="demo")


def test_the_schema_region_is_replaced_and_the_rest_kept():
    text = f"{HEAD}{DOC_BEGIN}\nstale table\n{DOC_END}{TAIL}"
    assert update_text(text, sections={}) == f"{HEAD}{DOC_BEGIN}\n{schema_markdown()}{DOC_END}{TAIL}"


def test_a_generated_section_is_replaced_by_its_body():
    text = f"{HEAD}{BEGIN}\nold\nlines\n{END}{TAIL}"
    assert update_text(text, sections={"demo": "\n\nnew body\n\n", "absent": "never written"}) == (
        f"{HEAD}{BEGIN}\nnew body\n{END}{TAIL}")


def test_a_text_without_regions_is_returned_unchanged():
    assert update_text(HEAD + TAIL, sections={"demo": "x"}) == HEAD + TAIL


def test_update_files_rewrites_and_reports_each_file(tmp_path, capsys):
    stale, fresh = tmp_path / "stale.md", tmp_path / "fresh.md"
    stale.write_text(f"{HEAD}{DOC_BEGIN}\nstale\n{DOC_END}{TAIL}")
    fresh.write_text(HEAD + TAIL)
    update_files([str(stale), str(fresh)])
    assert stale.read_text() == f"{HEAD}{DOC_BEGIN}\n{schema_markdown()}{DOC_END}{TAIL}"
    assert fresh.read_text() == HEAD + TAIL
    assert capsys.readouterr().out == f"{stale}: updated\n{fresh}: up to date\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.md", "stale.md"]  # no temporary file left


def test_main_takes_files_and_refuses_flags(tmp_path, capsys):
    path = tmp_path / "doc.md"
    path.write_text(HEAD)
    assert main([str(path)]) == 0 and capsys.readouterr().out == f"{path}: up to date\n"
    assert main(["--help"]) == 2
    assert capsys.readouterr().err.startswith("``python -m swift_plugins.dev.update_docs [FILE ...]``")
