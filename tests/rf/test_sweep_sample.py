"""A small, fixed sample of the timm sweep (``benchmarks/sweep_timm.py``), as CI runs it.

Each model is analysed at 224x224 and its last spatial layer is checked against the gradient
ground truth, exactly as the full sweep does (in this process, without its time limit).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_timm.py"


def _sweep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sweep_timm", SWEEP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sweep_timm", module)
    spec.loader.exec_module(module)
    return module


sweep = _sweep()

# Cheap models from three architecture modules: a ResNet-D (misaligned average-pool shortcut),
# a RegNet, and a ViT (global/mixed). Squeeze-excite nets are in tests/rf/test_groundtruth.py.
SAMPLE = [
    pytest.param("resnet10t", sweep.LOCAL, marks=pytest.mark.slow),
    ("regnetx_002", sweep.LOCAL),
    ("deit_tiny_patch16_224", sweep.MIXED),
]


@pytest.mark.parametrize(("name", "kind"), SAMPLE)
def test_sample_model_agrees(name: str, kind: str) -> None:
    result = sweep.check_model(name)
    assert (result.status, result.reason) == (sweep.AGREE, "")
    assert result.kind == kind
    assert result.layer
    if kind == sweep.LOCAL:
        assert result.gradient["size"] == result.analysis["size"]
        assert result.gradient["stride"] == result.analysis["stride"]
    else:
        assert result.gradient["box"] == (0, 0, sweep.INPUT - 1, sweep.INPUT - 1)


def test_summary_counts() -> None:
    results = [
        sweep.Result(model="a", status=sweep.AGREE, kind=sweep.LOCAL),
        sweep.Result(model="b", status=sweep.DISAGREE, kind=sweep.LOCAL),
        sweep.Result(model="c", status=sweep.AGREE, kind=sweep.MIXED),
        sweep.Result(model="d", status=sweep.NOT_ANALYSED),
        sweep.Result(model="e", status=sweep.TIMEOUT),
    ]
    counts = sweep.summary(results)
    assert counts["models"] == 5
    assert counts["analysed"] == 3
    assert (counts["local"], counts["local agree"]) == (2, 1)
    assert (counts["global/mixed"], counts["global/mixed agree"]) == (1, 1)
    assert (counts["disagree"], counts["not analysed"], counts["timeout"]) == (1, 1, 1)
