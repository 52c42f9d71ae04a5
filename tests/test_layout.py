"""The rules the package layout keeps (CONTRIBUTING.md, Layout), each checked on the source itself."""
from __future__ import annotations

import ast
import dataclasses
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "swift_plugins"
ADAPTER = "swift_plugins.training"   # the one package that may import the frameworks
DEV = "swift_plugins.dev"            # developer tooling (tiny model, demo, doc generators), not imported by users
FRAMEWORKS = {"torch", "transformers", "swift", "peft", "accelerate", "deepspeed", "qwen_vl_utils", "datasets",
              "modelscope", "torchvision", "safetensors", "flash_attn"}
MAX_LINES = 500


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the module, functions included."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports the submodule when there is one
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, node.lineno, id(node) in top))
    return out


def internal_graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        targets = set()
        for target, _, _ in imports(name):
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name and not name.startswith(target + "."):
                targets.add(target)  # a package's own __init__ is imported first by Python anyway
        graph[name] = targets
    return graph


def test_no_import_cycle():
    graph = internal_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(graph) > 30  # the scan sees the package


def test_only_the_adapter_package_imports_the_frameworks():
    offenders = []
    for name in MODULES:
        if name == ADAPTER or name.startswith(ADAPTER + ".") or name == DEV or name.startswith(DEV + "."):
            continue
        for target, line, _ in imports(name):
            if target.split(".")[0] in FRAMEWORKS:
                offenders.append(f"{MODULES[name].relative_to(REPO)}:{line}: imports {target}")
    assert offenders == []


def test_the_adapter_modules_that_the_pure_side_uses_import_ms_swift_only_inside_functions():
    """The analysis calibrates through training.calibration without paying ms-swift's import on a cache hit."""
    for target, line, top in imports("swift_plugins.training.calibration"):
        assert not (top and target.split(".")[0] in FRAMEWORKS), f"calibration.py:{line}: {target} at import time"


def test_importing_the_pure_package_loads_no_framework():
    code = ("import sys, swift_plugins.data, swift_plugins.lengths, swift_plugins.packing, swift_plugins.config, "
            "swift_plugins.analysis.report, swift_plugins.analysis.migrate, swift_plugins.analysis.token_analysis, "
            "swift_plugins.sft, swift_plugins.training; "
            "print(sorted(m for m in ('torch', 'swift', 'transformers', 'qwen_vl_utils') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Modules without logic of their own to test: what covers them instead.
UNMIRRORED = {"swift_plugins.names": "constants only; registration under them: "
                                     "test_one_registration_entry_idempotent_and_nothing_registers_at_import"}


def test_tests_mirror_the_package():
    """swift_plugins/<pkg>/<mod>.py is tested in tests/<pkg>/test_<mod>.py (top-level modules in tests/)."""
    missing = []
    for name, path in MODULES.items():
        if path.name == "__init__.py" or name in UNMIRRORED:
            continue
        rel = path.relative_to(PACKAGE)
        if not (REPO / "tests" / rel.parent / f"test_{rel.name}").is_file():
            missing.append(str(pathlib.Path("tests") / rel.parent / f"test_{rel.name}"))
    assert missing == [], f"modules without their test module: {missing}"
    assert all(name in MODULES for name in UNMIRRORED)


def test_tests_hold_test_modules_fixtures_in_conftest_and_helpers_in_one_module():
    """tests/ holds test_*.py, conftest.py (fixtures and pytest hooks only) and helpers.py (the plain
    helpers and constants the tests share, ``from helpers import ...``); nothing imports from conftest."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py"))
    assert [f for f in files if not pathlib.Path(f).name.startswith("test_")] == ["tests/conftest.py",
                                                                                   "tests/helpers.py"]
    conftest = ast.parse((REPO / "tests" / "conftest.py").read_text())
    functions = [n for n in conftest.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    not_fixtures = [n.name for n in functions if not n.name.startswith("pytest_")
                    and not any("fixture" in ast.unparse(d) for d in n.decorator_list)]
    assert len(functions) > 5 and not_fixtures == [], "plain helpers belong in tests/helpers.py"
    importers = sorted(f for f in files for node in ast.walk(ast.parse((REPO / f).read_text()))
                       if isinstance(node, (ast.Import, ast.ImportFrom))
                       and "conftest" in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                          else [node.module]))
    assert importers == [], "import shared helpers from helpers, not conftest"


def test_no_module_over_about_500_lines():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def string_constants(name: str) -> list[tuple[str, int]]:
    tree = ast.parse(MODULES[name].read_text())
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_registered_names_and_env_reads_are_spelled_once():
    from swift_plugins import names

    REGISTERED_NAMES = {v for k, v in vars(names).items() if k.isupper()}
    where: dict[str, list[str]] = {}
    for name in MODULES:
        for value, line in string_constants(name):
            if value in REGISTERED_NAMES or value == "WORLD_SIZE":
                where.setdefault(value, []).append(f"{name}:{line}")
    for value, places in where.items():
        expected = "swift_plugins.config.resolve" if value == "WORLD_SIZE" else "swift_plugins.names"
        assert all(p.startswith(expected + ":") for p in places), (value, places)
    assert set(REGISTERED_NAMES) <= set(where) and "WORLD_SIZE" in where


def tuple_literals(name: str) -> list[tuple[tuple, int]]:
    tree = ast.parse(MODULES[name].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts and all(isinstance(e, ast.Constant) for e in node.elts):
            out.append((tuple(e.value for e in node.elts), node.lineno))
    return out


def test_each_choice_list_is_defined_once():
    from swift_plugins.config.schema import SCHEMA_LEAVES
    from swift_plugins.data import EMIT_NORMS, OBJECT_ORDERINGS, ON_ERROR_CHOICES
    from swift_plugins.packing import OVERLONG_CHOICES, STRATEGIES

    lists = {STRATEGIES: "swift_plugins.packing.planner", OVERLONG_CHOICES: "swift_plugins.packing.planner",
             ON_ERROR_CHOICES: "swift_plugins.data.records", OBJECT_ORDERINGS: "swift_plugins.data.conversation",
             EMIT_NORMS: "swift_plugins.data.conversation"}
    for choices, home in lists.items():
        places = [f"{name}:{line}" for name in MODULES for value, line in tuple_literals(name) if value == choices]
        assert places and all(p.startswith(home + ":") for p in places), (choices, places)
    by_key = {leaf.dotted: leaf.meta["choices"] for leaf in SCHEMA_LEAVES}
    assert by_key["training.packing_strategy"] is STRATEGIES and by_key["training.packing_overlong"] is OVERLONG_CHOICES
    assert by_key["data.on_error"] is ON_ERROR_CHOICES and by_key["custom.emit_norm"] is EMIT_NORMS


def test_one_aspect_ratio_limit():
    from swift_plugins.data.image_size import MAX_ASPECT_RATIO
    from swift_plugins.lengths import ImageTokenRule

    assert ImageTokenRule.__dataclass_fields__["max_ratio"].default == MAX_ASPECT_RATIO == 200
    for name in MODULES:
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.Assign) and any(ast.unparse(t).endswith(("ASPECT_RATIO", "MAX_RATIO"))
                                                    for t in node.targets):
                assert name == "swift_plugins.data.image_size", f"{name}:{node.lineno}: a second aspect-ratio limit"


def test_one_atomic_writer_for_results_and_caches():
    """Only files.py renames temporary files; nothing else opens a file for writing, but logs."""
    allowed_appends = {"swift_plugins.training.callbacks"}  # the per-step served log, appended, not a result
    for name in MODULES:
        if name in ("swift_plugins.files", "swift_plugins.dev.tiny_model"):  # the tiny model is built in an atomic_dir
            continue
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "mkstemp", "mkdtemp") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("os", "tempfile"):
                raise AssertionError(f"{name}:{node.lineno}: {node.value.id}.{node.attr} outside files.py")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open" and len(node.args) > 1:
                mode = node.args[1].value if isinstance(node.args[1], ast.Constant) else "?"
                if any(c in mode for c in "wax+"):
                    assert mode == "a" and name in allowed_appends, f"{name}:{node.lineno}: open(..., {mode!r})"
            if isinstance(node, ast.Attribute) and node.attr in ("write_text", "write_bytes"):
                raise AssertionError(f"{name}:{node.lineno}: .{node.attr} outside files.py (not atomic)")


def test_no_library_function_takes_an_argparse_namespace():
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    assert "Namespace" not in ast.unparse(arg.annotation or ast.Constant("")), \
                        f"{name}:{node.lineno}: {node.name}({arg.arg}: Namespace)"


def test_one_registration_entry_idempotent_and_nothing_registers_at_import():
    code = """
import importlib, pkgutil, sys
import swift_plugins
for m in pkgutil.walk_packages(swift_plugins.__path__, "swift_plugins."):
    importlib.import_module(m.name)
from swift.callbacks import callbacks_map
from swift.optimizers import optimizers_map
from swift.template import TEMPLATE_MAPPING
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from swift_plugins.families import FAMILIES
from swift_plugins.names import CALLBACK_DATA_ORDER, CALLBACK_EVAL_TOKEN_MEAN, OPTIMIZER_NAME, VARLEN_ATTENTION
from swift_plugins.training import attention
names = lambda: (all(f.packing_template in TEMPLATE_MAPPING for f in FAMILIES.values()), OPTIMIZER_NAME in optimizers_map,
                 all(n in callbacks_map for n in (CALLBACK_DATA_ORDER, CALLBACK_EVAL_TOKEN_MEAN)),
                 AttentionInterface._global_mapping.get(VARLEN_ATTENTION) is attention.varlen_attention_forward,
                 AttentionMaskInterface._global_mapping.get(VARLEN_ATTENTION) is attention.varlen_attention_mask)
registries = lambda: (dict(callbacks_map), dict(optimizers_map), len(TEMPLATE_MAPPING),
                      dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping))
before = names()
swift_plugins.register_plugins()
first = registries()
swift_plugins.register_plugins()
print(before, names(), registries() == first)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == ("(False, False, False, False, False) (True, True, True, True, True) "
                                                   "True")


def test_runtime_options_carry_the_schema_types_and_help():
    from swift_plugins.config.export import RuntimeOptions
    from swift_plugins.config.schema import OURS, SCHEMA_LEAVES

    leaves = {leaf.meta["name"]: leaf for leaf in SCHEMA_LEAVES if leaf.meta["target"] == OURS}
    fields = {f.name: f for f in dataclasses.fields(RuntimeOptions)}
    assert sorted(fields) == sorted(leaves)
    for name, leaf in leaves.items():
        assert fields[name].type == leaf.type and fields[name].metadata["help"] == leaf.meta["help"] != "", name


def repository_texts() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted(p for p in listed if pathlib.Path(p).suffix in (".py", ".md", ".yaml", ".toml", ".cfg", ".txt")
                  and p != "tests/test_layout.py" and (REPO / p).is_file())


OUTSIDE = ("../" + "shared", "shared/" + "notes", "shared/" + "seeds", "DEVELOPERS" + ".md")


def test_nothing_points_outside_the_repository():
    found = [f"{p}: {needle}" for p in repository_texts() for needle in OUTSIDE
             if needle in (REPO / p).read_text(errors="replace")]
    assert found == []
