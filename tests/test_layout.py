"""The layout's direction: ``pipeline`` <- ``classify`` (the served model) <- ``train``
and ``serve`` (siblings: neither imports the other) <- ``ingestion`` (which needs
``classify`` and ``serve``, not training code) <- ``signals`` (the command that composes
them all, and the demo), and ``bench`` uses the product, never
``tests``; no import cycle between project modules.

Every ``import`` statement of every project module is read from its syntax tree,
function-level imports included (an import hidden in a function is still a dependency,
and the usual way to dodge a cycle). There is no exception: each package keeps its own
commands, and only ``signals`` (right of everything) puts them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "classify", "train", "serve", "ingestion", "signals", "bench",
            "tests")

MAY_IMPORT = {
    "pipeline": {"pipeline"},
    "classify": {"pipeline", "classify"},
    "train": {"pipeline", "classify", "train"},
    "serve": {"pipeline", "classify", "serve"},
    "ingestion": {"pipeline", "classify", "serve", "ingestion"},
    "signals": {"pipeline", "classify", "train", "serve", "ingestion", "signals"},
    "bench": {"pipeline", "classify", "train", "serve", "ingestion", "signals", "bench"},
    "tests": set(PACKAGES),
}
"""Packages each package may import (its own included); a package not listed imports
nothing of the project."""


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the project's packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (its longest existing prefix); None when
    it is not a project module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        allowed = MAY_IMPORT.get(package, set())
        for target in sorted(targets):
            if target.split(".")[0] not in allowed:
                problems.append(f"{module} imports {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# --- the checks on this repository ----------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_imports_go_one_way(graph):
    assert direction_violations(graph) == []


def test_no_import_cycles_between_project_modules(graph):
    assert cycles(graph) == []


def test_graph_sees_the_packages_and_function_level_imports(graph):
    # The checks above are only as good as the graph: it must know every package and
    # see imports made inside functions (the ingestion CLI imports its modules there).
    assert {m.split(".")[0] for m in graph} >= {"pipeline", "classify", "train", "serve",
                                                 "ingestion", "signals", "bench", "tests"}
    assert "ingestion.api" in graph["ingestion.cli"]
    assert {"pipeline.data_cli", "train.cli", "serve.cli", "ingestion.cli"} <= graph["signals.cli"]
    assert "pipeline.stage" in graph["pipeline.labels"]


def test_nothing_in_the_product_imports_the_composed_command(graph):
    # `signals` is the right-most layer: the direction rule already forbids importing it
    # from the product packages; this says so by name, should MAY_IMPORT ever change.
    importers = {module for module, targets in graph.items()
                 if any(t.split(".")[0] == "signals" for t in targets)}
    assert {m.split(".")[0] for m in importers} <= {"signals", "tests"}


def test_every_package_says_what_it_owns_and_may_import():
    for package in ("pipeline", "classify", "train", "serve", "ingestion", "signals"):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{package}/__init__.py: no docstring saying " \
                                            "what it owns and may import"


# --- the checker catches what it should ----------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_checker_finds_an_upward_import_in_a_function(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/a.py": "def f():\n    from train.b import g\n",
        "train/b.py": "def g():\n    pass\n",
        "bench/x.py": "from tests import helpers\n",
        "tests/helpers.py": "",
        "serve/cli.py": "def register(commands):\n    from ingestion import cli\n",
        "ingestion/cli.py": "from signals.cli import main\n",
        "signals/cli.py": "",
    })
    assert direction_violations(import_graph(root)) == [
        "bench.x imports tests.helpers", "ingestion.cli imports signals.cli",
        "pipeline.a imports train.b", "serve.cli imports ingestion.cli"]


def test_checker_finds_a_cycle_through_function_level_and_relative_imports(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/a.py": "from pipeline.b import x\n",
        "pipeline/b.py": "def x():\n    from .c import y\n",
        "pipeline/c.py": "def y():\n    import pipeline.a\n",
        "pipeline/d.py": "from pipeline import a\n",
    })
    assert cycles(import_graph(root)) == [["pipeline.a", "pipeline.b", "pipeline.c"]]
