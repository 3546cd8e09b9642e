"""The one-shot ``hc.hypercolumns`` keeps its plans: never stale, never keeping a model alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.features import _plans
from hypercolumns.rf import layers as rf_layers
from tests.tiny_models import tiny


@pytest.fixture
def analyses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the receptive-field analyses (what planning costs)."""
    calls: list[int] = []
    real = rf_layers.layers

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("hypercolumns.features.maps.list_layers", counted)
    return calls


def test_repeated_calls_plan_once_and_equal_the_planned_extractor(analyses: list[int]) -> None:
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    planned = hc.HypercolumnExtractor(model, [0, 3], 16)
    analyses.clear()
    for points in (None, None, 5, 5):
        got = hc.hypercolumns(model, x, [0, 3], points=points)
        assert torch.equal(got.features, planned(x, points).features)
    assert len(analyses) == 1  # dense and sparse share the plan
    hc.hypercolumns(model, x, [0, 3], align="half-pixel")
    hc.hypercolumns(model, torch.randn(1, 3, 20, 20), [0, 3])
    assert len(analyses) == 3  # other options, another size: plans of their own


@pytest.mark.parametrize("change", ["replace", "add", "re-register"])
def test_a_changed_model_is_planned_again(analyses: list[int], change: str) -> None:
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(1, 3, 16, 16)
    hc.hypercolumns(model, x, [0, 3])
    if change == "replace":  # a layer of another shape under the same name
        model[3] = nn.Conv2d(4, 5, 3, padding=1)
    elif change == "add":
        model.append(nn.Identity())
    else:  # the same class again, a new object
        model[0] = nn.Conv2d(3, 4, 3, padding=1)
    got = hc.hypercolumns(model, x, [0, 3])
    assert len(analyses) == 2
    assert torch.equal(got.features, hc.HypercolumnExtractor(model, [0, 3], 16)(x).features)


def test_kept_plans_do_not_keep_the_model_alive() -> None:
    model = tiny()
    hc.hypercolumns(model, torch.randn(1, 3, 16, 16), [0, 3])
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert all(m is not None for m in _plans._CACHE)  # its entry went with it


def test_calls_with_tensors_for_normalize_or_project_are_not_kept(analyses: list[int]) -> None:
    model = tiny()
    x = torch.randn(1, 3, 16, 16)
    project = {"0": torch.randn(2, 4)}
    hc.hypercolumns(model, x, [0, 3], project=project)
    project["0"].mul_(2)  # changed in place: a kept plan would be stale
    got = hc.hypercolumns(model, x, [0, 3], project=project)
    assert len(analyses) == 2
    ref = hc.HypercolumnExtractor(model, [0, 3], 16, project=project)(x)
    assert torch.equal(got.features, ref.features)


def test_at_most_a_few_plans_per_model() -> None:
    model = tiny()
    for size in range(16, 16 + _plans.PER_MODEL + 3):
        hc.hypercolumns(model, torch.randn(1, 3, size, size), [0])
    assert len(_plans._CACHE[model].plans) == _plans.PER_MODEL
