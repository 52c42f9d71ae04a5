"""data/ and lengths/ stay pure: no torch / transformers / ms-swift / qwen-vl-utils import, even inside functions."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "swift_plugins"
FORBIDDEN = ("torch", "torchvision", "transformers", "swift", "qwen_vl_utils", "datasets")


def imported_roots(path: pathlib.Path) -> set:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["data", "lengths"])
def test_pure_packages_import_nothing_heavy(package):
    modules = sorted((PKG / package).glob("*.py"))
    assert len(modules) >= 4
    bad = {m.name: sorted(imported_roots(m) & set(FORBIDDEN)) for m in modules}
    assert {k: v for k, v in bad.items() if v} == {}
    assert "messages.py" in {m.name for m in modules} or package == "lengths"
