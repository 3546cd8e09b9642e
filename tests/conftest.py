from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TINY = f"{HERE / 'tiny_models.py'}:tiny"


def _real_library() -> bool:
    try:
        importlib.import_module("hypercolumns.features")
        importlib.import_module("hypercolumns.hypercolumns")
    except ImportError:
        return False
    return True


@pytest.fixture
def library(monkeypatch: pytest.MonkeyPatch) -> str:
    """The real feature/hypercolumn modules when merged, else the reference fakes."""
    if _real_library():
        return "real"
    from tests import _fake_library as fake

    features = types.ModuleType("hypercolumns.features")
    features.feature_maps = fake.feature_maps  # type: ignore[attr-defined]
    hyper = types.ModuleType("hypercolumns.hypercolumns")
    hyper.hypercolumns = fake.hypercolumns  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hypercolumns.features", features)
    monkeypatch.setitem(sys.modules, "hypercolumns.hypercolumns", hyper)
    return "fake"
