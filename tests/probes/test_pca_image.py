"""PCA images: the per-layer route equals the explicit PCA projection of dense hypercolumns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import OptionError
from tests.tiny_models import tiny, tiny_resnet


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return tiny_resnet().eval()


def _explicit(p: hc.PCAImage, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` components of the dense hypercolumns, standardised and projected."""
    names = [layer.name for layer in p.layers]
    cols = hc.hypercolumns(model, x, names, align=p.align).features.double().permute(0, 2, 3, 1)
    if p.mean is not None and p.std is not None:
        cols = (cols - p.mean.double()) / p.std.double()
    proj = (cols - p.pca.mean.double()) @ p.pca.components.double().T
    return proj.permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("which", "layers", "align", "standardize"),
    [
        ("resnet", ["stem", "block1", "block3"], "rf", True),
        ("resnet", ["block1", "block2"], "half-pixel", False),
        ("tiny", "all", "rf", True),  # with global layers
    ],
)
def test_rgb_equals_the_explicit_projection(
    resnet: nn.Module, which: str, layers, align: str, standardize: bool
) -> None:
    torch.manual_seed(0)
    model = resnet if which == "resnet" else tiny().eval()
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    p = hc.fit_pca_image(model, x, layers, points=300, align=align, standardize=standardize)
    want = _explicit(p, model, x)
    got = p.project(x).double()
    scale = float(want.abs().max())
    assert got.shape == (2, 3, 40, 36)
    assert float((got - want).abs().max()) < 1e-4 * scale
    low, high = p.low.double()[:, None, None], p.high.double()[:, None, None]
    want_rgb = ((want - low) / (high - low)).clamp(0, 1)
    rgb = p.rgb(x).double()
    assert float((rgb - want_rgb).abs().max()) < 1e-4
    assert float(rgb.min()) >= 0
    assert float(rgb.max()) <= 1


def test_components_are_the_principal_axes(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    p = hc.fit_pca_image(resnet, x, ["block1", "block2"], points=400, percentiles=(5, 95))
    comps = p.pca.components.double()
    assert torch.allclose(comps @ comps.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
    ratio = p.explained_ratio
    assert bool((ratio[:-1] >= ratio[1:]).all())
    assert 0 < float(ratio.sum()) <= 1
    # each axis signed so that its largest loading is positive
    assert bool((comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all())
    # the fitted range: about 5% of the samples below 0 and 5% above 1 per component
    cols = hc.hypercolumns(resnet, x, ["block1", "block2"], points=400, seed=0).features[0]
    scaled = (p.transform(cols) - p.low) / (p.high - p.low)
    assert 0.01 < float((scaled < 0).float().mean()) < 0.1
    assert 0.01 < float((scaled > 1).float().mean()) < 0.1


def test_joint_fit_shares_colours_and_is_seeded(resnet: nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(1, 3, 40, 32, generator=gen)
    joint = hc.fit_pca_image(resnet, [a, b], ["block1", "block2"], points=200)
    again = hc.fit_pca_image(resnet, [a, b], ["block1", "block2"], points=200)
    assert joint.counts == [200, 200]
    assert torch.equal(joint.rgb(a), again.rgb(a))
    alone = hc.fit_pca_image(resnet, a, ["block1", "block2"], points=200)
    assert not torch.allclose(joint.rgb(a), alone.rgb(a))
    # one map for both images: a batch of the same size is coloured image by image
    pair = joint.rgb(torch.cat([a, a]))
    assert torch.allclose(pair, joint.rgb(a).expand(2, -1, -1, -1), atol=1e-5)


def test_bad_input(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16)
    two = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    with pytest.raises(OptionError, match=r"needs 3 components.*2 channels"):
        hc.fit_pca_image(two, x, "all", points=50)
    with pytest.raises(OptionError, match=r"needs 3 components.*2 hypercolumns"):
        hc.fit_pca_image(resnet, x, ["block1"], points=2)
    with pytest.raises(OptionError, match="percentiles"):
        hc.fit_pca_image(resnet, x, ["block1"], points=50, percentiles=(90, 10))
