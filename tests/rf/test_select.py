"""Choosing layers by name, index, glob and ``"all"``; errors that point to the listing."""

from __future__ import annotations

import pytest
import torchvision

import hypercolumns as hc
from hypercolumns.errors import LayerNotFoundError


@pytest.fixture(scope="module")
def vgg_layers() -> list[hc.Layer]:
    return hc.layers(torchvision.models.vgg16(), 224)


def test_notes_example_indices_are_features_3_and_8(vgg_layers: list[hc.Layer]) -> None:
    chosen = hc.select(vgg_layers, [3, 8])
    assert [(layer.name, layer.shape[0]) for layer in chosen] == [
        ("features.3", 64),
        ("features.8", 128),
    ]
    assert hc.select(vgg_layers, "3,8") == chosen


def test_negative_indices_globs_and_all(vgg_layers: list[hc.Layer]) -> None:
    assert hc.select(vgg_layers, -1)[0].name == "classifier.6"
    assert [layer.name for layer in hc.select(vgg_layers, "features.2?")] == [
        f"features.{i}" for i in range(20, 30)
    ]
    every = hc.select(vgg_layers, "all")
    assert len(every) == 32
    assert every[-1].name == "avgpool"
    assert all(not layer.is_global for layer in every)
    assert hc.select(vgg_layers, ["features", "classifier.0"])[1].is_global


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("featurs.3", r"no layer named 'featurs\.3'; closest: features\.3.*hypercolumns layers"),
        (41, r"index 41 is out of range: this model has 39 leaf layers \(indices 0\.\.38"),
        ("-40", "out of range"),
        ("blocks.*", r"pattern 'blocks\.\*' matches no layer"),
        ("3,features.3", r"'features\.3' is given twice"),
        ("", "no layers given"),
    ],
)
def test_bad_layer_specs(vgg_layers: list[hc.Layer], spec: str | int, match: str) -> None:
    with pytest.raises(LayerNotFoundError, match=match):
        hc.select(vgg_layers, spec)
