"""Importing a product module changes nothing outside it: no module sets environment
variables as it is imported (a library that did would decide for every program that
imports it, and only before transformers is imported, silently). The ``signals``
command, the composition root, is the one place that sets the process's defaults
(``pipeline.settings.OFFLINE_ENV``)."""

from __future__ import annotations

import ast

from tests.test_layout import ROOT, project_modules

PRODUCT = ("pipeline", "classify", "train", "serve", "ingestion", "signals")
MAY_SET_ENVIRONMENT = {"signals.cli"}


def _module_level(tree: ast.Module):
    """Statements run at import: the module body, and the bodies of its top-level
    ``if``/``for``/``with``/``try`` blocks (not of functions or classes)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(getattr(node, field, []) or [])


def _sets_environment(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        target = None
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and \
                sub.func.attr in ("setdefault", "update", "pop", "__setitem__"):
            target = sub.func.value
        elif isinstance(sub, (ast.Assign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            target = next((t.value for t in targets if isinstance(t, ast.Subscript)), None)
        if target is not None and ast.unparse(target) in ("os.environ", "environ"):
            return True
        if isinstance(sub, ast.Call) and ast.unparse(sub.func) in ("os.putenv", "putenv"):
            return True
    return False


def environment_setters(root=ROOT, packages=PRODUCT) -> list[str]:
    found = []
    for module, path in project_modules(root, packages).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any(_sets_environment(node) for node in _module_level(tree)):
            found.append(module)
    return sorted(found)


def test_no_product_module_sets_the_environment_on_import():
    assert set(environment_setters()) <= MAY_SET_ENVIRONMENT


def test_the_check_finds_a_module_that_does(tmp_path):
    for package in PRODUCT:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").touch()
    (tmp_path / "train" / "common.py").write_text(
        "import os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\n")
    (tmp_path / "serve" / "x.py").write_text(
        "import os\nif True:\n    os.environ['A'] = '1'\n")
    (tmp_path / "pipeline" / "fine.py").write_text(
        "import os\ndef f():\n    os.environ.setdefault('A', '1')\n")
    assert environment_setters(tmp_path) == ["serve.x", "train.common"]
