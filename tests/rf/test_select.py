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


@pytest.fixture(scope="module")
def vit_layers() -> list[hc.Layer]:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    return hc.layers(vit, 32)


def test_class_token_is_part_of_the_one_grammar(vit_layers: list[hc.Layer]) -> None:
    (token,) = hc.select(vit_layers, "blocks.1:cls")
    assert token.name == "blocks.1:cls"
    assert token.shape == (192,)
    assert token.channels == 192
    assert token.is_global
    assert token.rf is not None
    assert token.rf.size == (32, 32)
    assert hc.select(vit_layers, "blocks.1:cls", input_size=32) == [token]
    mixed = hc.select(vit_layers, ["blocks.0", "blocks.*:cls", -1])
    assert [layer.name for layer in mixed][:2] == ["blocks.0", "blocks.0:cls"]
    assert "blocks.1:cls" in [layer.name for layer in mixed]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("patch_embed.proj:cls", r"'patch_embed\.proj' has no class token"),
        ("blocks.9:cls", r"no layer named 'blocks\.9'"),
        ("blocks.1:cls,blocks.1:cls", r"'blocks\.1:cls' is given twice"),
    ],
)
def test_bad_class_token_specs(vit_layers: list[hc.Layer], spec: str, match: str) -> None:
    with pytest.raises(LayerNotFoundError, match=match):
        hc.select(vit_layers, spec)


def test_class_token_needs_the_input_size_when_no_layer_shows_it(
    vit_layers: list[hc.Layer],
) -> None:
    spatial = [layer for layer in vit_layers if layer.rf is not None and layer.rf.axes]
    with pytest.raises(LayerNotFoundError, match="input_size"):
        hc.select(spatial, "norm_pre:cls")
    (token,) = hc.select(spatial, "norm_pre:cls", input_size=(32, 32))
    assert token.rf is not None
    assert token.rf.size == (32, 32)
