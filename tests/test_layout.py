"""The package's layout stays as designed (docs/architecture.md).

The import strata are checked by import-linter (``lint-imports`` in CI, contracts in
``pyproject.toml``); this file checks what it cannot: no module is shadowed by a function of the
same name, no private name crosses a subpackage, and the documented old paths still work.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import hypercolumns

SRC = Path(hypercolumns.__file__).parent
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(hypercolumns.__path__, prefix="hypercolumns.")
    if info.name != "hypercolumns.__main__"  # runs the command line
)


def _subpackage(module: str) -> str:
    """``hypercolumns.rf.trace.state`` -> ``hypercolumns.rf``; a top-level module ->
    ``hypercolumns``."""
    parts = module.split(".")
    path = SRC.joinpath(*parts[1:2])
    return ".".join(parts[:2]) if path.is_dir() else "hypercolumns"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_reachable_as_a_module(name: str) -> None:
    """``import hypercolumns.rf.layers as m`` gives the module, never a function of that name."""
    module = importlib.import_module(name)
    parent, _, child = name.rpartition(".")
    assert inspect.ismodule(getattr(importlib.import_module(parent), child)), name
    assert inspect.ismodule(module)


def test_no_private_name_crosses_a_subpackage() -> None:
    """A ``_name`` (or a ``_module``) is imported only inside the subpackage that owns it; the
    top-level ``hypercolumns._*`` modules are the package's shared internals."""
    leaks = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        importer = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if not node.module.startswith("hypercolumns"):
                continue
            owner = _subpackage(node.module)
            if owner == _subpackage(importer) or owner == "hypercolumns":
                continue
            for alias in node.names:
                private_name = alias.name.startswith("_")
                private_module = any(p.startswith("_") for p in node.module.split(".")[2:])
                if private_name or private_module:
                    leaks.append(f"{importer}: from {node.module} import {alias.name}")
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("hypercolumns.geometry", "hypercolumns.rf.geometry"),
        ("hypercolumns.store", "hypercolumns.io.store"),
        ("hypercolumns.testing", "hypercolumns.rf.groundtruth"),
        ("hypercolumns.plot", "hypercolumns.viz.plot"),
        ("hypercolumns.draw", "hypercolumns.viz.draw"),
    ],
)
def test_documented_paths_are_the_moved_modules(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
