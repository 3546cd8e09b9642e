"""The per-layer linear route equals the explicit route (dense hypercolumns, then the map)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import OptionError, OutputTooLargeError
from hypercolumns.features.linear import LinearMap, LinearMapper, layer_maps, linear_map


def _explicit(model, x, layers, matrix, bias, align, points=None):
    cols = hc.hypercolumns(model, x, layers, align=align, points=points)
    if points is None:
        return torch.einsum("kc,bchw->bkhw", matrix, cols.features) + bias[:, None, None]
    return cols.features @ matrix.T + bias, cols


def _check(model, x, layers, k=5, tol=1e-4):
    gen = torch.Generator().manual_seed(1)
    for align in ("rf", "half-pixel"):
        slices = hc.hypercolumns(model, x, layers, points=1, align=align).slices
        channels = max(s.stop for s in slices.values())
        matrix = torch.randn(k, channels, generator=gen)
        bias = torch.randn(k, generator=gen)
        m = LinearMap.split(matrix, slices, bias)
        dense = linear_map(model, x, layers, m, align=align)
        want = _explicit(model, x, layers, matrix, bias, align)
        scale = float(want.abs().max())
        assert dense.shape == want.shape
        assert float((dense - want).abs().max()) < tol * scale, align
        sparse = linear_map(model, x, layers, m, align=align, points=40)
        want_sparse, cols = _explicit(model, x, layers, matrix, bias, align, points=40)
        assert float((sparse - want_sparse).abs().max()) < tol * scale, align
        # the sampled points are those of hypercolumns(points=40) with the same seed
        maps = layer_maps(model, x, layers, align=align)
        assert torch.allclose(maps.columns(cols.points), cols.features, atol=1e-5 * scale)
        # exact norms: dense and sparse
        full = hc.hypercolumns(model, x, layers, align=align).features
        norms = maps.sq_norms()
        want_norms = (full.double() ** 2).sum(1).float()
        assert float((norms - want_norms).abs().max()) < 1e-4 * float(want_norms.max())
        at = maps.sq_norms(cols.points)
        want_at = (cols.features.double() ** 2).sum(-1).float()
        assert float((at - want_at).abs().max()) < 1e-4 * float(want_at.max())


def test_vgg16_dense_and_sparse(vgg: nn.Module) -> None:
    x = torch.randn(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    _check(vgg, x, [3, 8, 15, 22])


def test_resnet50_dense_and_sparse() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 64, 72, generator=torch.Generator().manual_seed(0))
    _check(model, x, ["layer1", "layer2", "layer3", "layer4"])


def test_vit_patch_tokens_and_class_token() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, depth=2).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    _check(vit, x, ["blocks.0", "blocks.1", "blocks.1:cls"])


def test_model_with_a_global_layer(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    _check(resnet, x, ["layer1", "layer3", "avgpool"])


def test_standardisation_folds_into_the_map(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    layers = ["features.3", "features.8"]
    stats = {
        "features.3": (torch.randn(64, generator=gen), torch.rand(64, generator=gen) + 0.5),
        "features.8": (torch.randn(128, generator=gen), torch.rand(128, generator=gen) + 0.5),
    }
    slices = {"features.3": slice(0, 64), "features.8": slice(64, 192)}
    matrix, bias = torch.randn(3, 192, generator=gen), torch.randn(3, generator=gen)
    got = linear_map(vgg, x, layers, LinearMap.split(matrix, slices, bias), normalize=stats)
    cols = hc.hypercolumns(vgg, x, layers, normalize=stats).features
    want = torch.einsum("kc,bchw->bkhw", matrix, cols) + bias[:, None, None]
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_bands_equal_the_whole_image(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 40, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    mapper = LinearMapper(vgg, ["3", "8"], (64, 40))
    matrix = torch.randn(4, 192, generator=gen)
    m = LinearMap.split(matrix, mapper.slices, torch.randn(4, generator=gen))
    whole = mapper(x, m)
    banded = mapper(x, m, rows=16)
    assert float((whole - banded).abs().max()) < 1e-4 * float(whole.abs().max())


def test_l2_is_refused(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    m = LinearMap.split(torch.ones(1, 64), {"features.3": slice(0, 64)})
    with pytest.raises(OptionError, match=r"l2.*does not commute"):
        linear_map(vgg, x, ["3"], m, normalize="l2")


def test_bad_maps_are_refused(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(OptionError, match="192 channels"):
        LinearMap.split(torch.ones(2, 100), {"3": slice(0, 64), "8": slice(64, 192)})
    m = LinearMap.split(torch.ones(2, 64), {"features.3": slice(0, 64)})
    with pytest.raises(OptionError, match="blocks for layers"):
        linear_map(vgg, x, ["8"], m)
    with pytest.raises(OutputTooLargeError):
        linear_map(vgg, x, ["3"], m, max_bytes=100)
    with pytest.raises(OptionError, match="outside"):
        linear_map(vgg, x, ["3"], m, points=torch.tensor([[40, 3]]))
