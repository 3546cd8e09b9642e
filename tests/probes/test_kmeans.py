"""k-means on hypercolumns: the dense assignment through per-layer linear maps equals the
explicit route (dense hypercolumns, standardise, nearest centroid)."""

from __future__ import annotations

import math

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


def _explicit(km: hc.KMeans, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(B, H, W, k)`` squared distances of the standardised dense hypercolumns ``z`` to the
    centroids, and ``(B, H, W, 1)`` ``|z|^2``, in float64."""
    names = [layer.name for layer in km.layers]
    cols = hc.hypercolumns(model, x, names, align=km.align).features.double()
    z = cols.permute(0, 2, 3, 1)
    if km.mean is not None and km.std is not None:
        z = (z - km.mean.double()) / km.std.double()
    c = km.centroids.double()
    z_sq = (z * z).sum(-1, keepdim=True)
    return z_sq - 2 * z @ c.T + (c * c).sum(1), z_sq


@pytest.mark.parametrize(
    ("which", "layers", "align", "standardize"),
    [
        ("resnet", ["stem", "block1", "block3"], "rf", True),
        ("resnet", ["block1", "block2"], "half-pixel", False),
        ("tiny", "all", "rf", True),  # with global layers (pooled, linear)
    ],
)
def test_dense_assignment_equals_the_explicit_route(
    resnet: nn.Module, which: str, layers, align: str, standardize: bool
) -> None:
    torch.manual_seed(0)
    model = resnet if which == "resnet" else tiny().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 40, 36, generator=gen)
    km = hc.fit_kmeans(model, x, layers, 5, points=200, align=align, standardize=standardize)
    got = km.assign(x)
    d2, z_sq = _explicit(km, model, x)
    want = d2.argmin(-1)
    assert got.shape == want.shape == (2, 40, 36)
    agree = (got == want).double().mean()
    assert agree >= 0.999
    # where the routes disagree, the two centroids are (nearly) equally near
    gap = d2.gather(-1, got[..., None])[..., 0] - d2.gather(-1, want[..., None])[..., 0]
    assert float(gap.max()) <= 1e-4 * float(d2.min(-1).values.mean()) + 1e-6
    # the scores themselves are those of the explicit route, to float rounding
    # the scores c.z - |c|^2/2 themselves are those of the explicit route, to float rounding
    scores = km.scores(x).double().permute(0, 2, 3, 1)
    want_scores = (z_sq - d2) / 2
    scale = float(want_scores.abs().max())
    assert float((scores - want_scores).abs().max()) < 1e-4 * scale


def test_sampled_pixels_take_their_nearest_centroid(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    km = hc.fit_kmeans(resnet, x, ["block1", "block2"], 4, points=100)
    assert km.k == 4
    assert km.centroids.shape == (4, 14)
    assert km.slices == {"block1": slice(0, 6), "block2": slice(6, 14)}
    assert [layer.name for layer in km.layers] == ["block1", "block2"]
    assert int(km.sizes.sum()) == 100 == sum(km.counts)
    cols = hc.hypercolumns(resnet, x, ["block1", "block2"], points=50, seed=5)
    labels = km.assign(x)[0]
    yx = cols.points[0].long()
    assert torch.equal(km.nearest(cols.features[0]), labels[yx[:, 0], yx[:, 1]])


def test_seeded_and_deterministic(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    a = hc.fit_kmeans(resnet, x, ["block1", "block2"], 3, points=80, seed=7)
    b = hc.fit_kmeans(resnet, x, ["block1", "block2"], 3, points=80, seed=7)
    c = hc.fit_kmeans(resnet, x, ["block1", "block2"], 3, points=80, seed=8)
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.assign(x), b.assign(x))
    assert a.inertia == b.inertia
    assert not torch.equal(a.centroids, c.centroids)
    more = hc.fit_kmeans(resnet, x, ["block1", "block2"], 3, points=80, seed=7, restarts=4)
    assert more.inertia <= a.inertia + 1e-9


def _two_textures(h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal stripes on the left half, a fine checkerboard on the right."""
    y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * y / 4)
    checker = ((y // 2) + (x // 2)) % 2
    right = x >= w // 2
    return torch.where(right, checker, stripes).expand(3, h, w)[None].clone(), right.long()


def test_two_textures_are_separated() -> None:
    torch.manual_seed(0)
    # no padding: pixels near the image border look like the texture, not like zeros
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3), nn.ReLU(),
    ).eval()  # fmt: skip
    x, truth = _two_textures()
    for seed in (0, 1):
        labels = hc.fit_kmeans(model, x, "all", 2, points=500, seed=seed).assign(x)[0]
        accuracy = float((labels == truth).float().mean())
        assert max(accuracy, 1 - accuracy) > 0.95, seed


def test_images_of_several_sizes(resnet: nn.Module) -> None:
    gen = torch.Generator().manual_seed(4)
    images = [torch.randn(3, 32, 40, generator=gen), torch.randn(1, 3, 48, 32, generator=gen)]
    km = hc.fit_kmeans(resnet, images, ["block1", "block3"], 3, points=60)
    assert km.counts == [60, 60]
    assert km.assign(images[0]).shape == (1, 32, 40)
    assert km.assign(images[1]).shape == (1, 48, 32)
    banded = km.assign(images[1], rows=16)
    assert float((banded == km.assign(images[1])).float().mean()) >= 0.999


def test_bad_input(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(OptionError, match=r"k=50 clusters but only 40 hypercolumns .*2 image"):
        hc.fit_kmeans(resnet, x, ["block1"], 50, points=20)
    for k in (0, -1, 2.5, True):
        with pytest.raises(OptionError, match="k must be a positive int"):
            hc.fit_kmeans(resnet, x, ["block1"], k, points=20)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="iterations must be a positive int"):
        hc.fit_kmeans(resnet, x, ["block1"], 2, points=20, iterations=0)
    with pytest.raises(OptionError, match="align"):
        hc.fit_kmeans(resnet, x, ["block1"], 2, points=20, align="corner")  # type: ignore[arg-type]
    km = hc.fit_kmeans(resnet, x, ["block1"], 2, points=20)
    with pytest.raises(OptionError, match="one image at a time"):
        km.assign(x, rows=8)


def test_identical_samples_still_give_k_clusters() -> None:
    """Fewer distinct hypercolumns than k: seeding picks among the duplicates, no NaN."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    x = torch.zeros(1, 3, 8, 8)
    km = hc.fit_kmeans(model, x, "all", 3, points=20)
    assert torch.isfinite(km.centroids).all()
    assert km.assign(x).shape == (1, 8, 8)
