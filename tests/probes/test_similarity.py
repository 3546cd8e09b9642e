"""Similarity maps and correspondences equal the explicit route: dense hypercolumns, then the
cosine (and its argmax), to float rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import InputSizeError, OptionError

VGG = [3, 8, 15, 22]


def _image(*size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def _explicit(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layers: list[int] | list[str],
    query: torch.Tensor,
    align: str = "rf",
) -> torch.Tensor:
    """``(Q, H, W)`` cosine similarity, from dense hypercolumns, in float64."""
    full = hc.hypercolumns(model, target, layers, align=align).features[0].double()
    q = hc.hypercolumns(model, x, layers, align=align, points=query).features[0].double()
    dots = torch.einsum("qc,chw->qhw", q, full)
    return dots / (q.norm(dim=1)[:, None, None] * full.norm(dim=0))


QUERY = torch.tensor([[0, 0], [10, 20], [31, 39], [5.5, 7.25]])


def test_a_pixel_is_its_own_best_match(vgg: nn.Module) -> None:
    x = _image(32, 40)
    sim = hc.similarity(vgg, x, VGG, QUERY[:3].long())
    assert sim.shape == (3, 32, 40)
    for k, (y, x_) in enumerate(QUERY[:3].long().tolist()):
        assert abs(float(sim[k, y, x_]) - 1.0) < 1e-5
    assert float(sim.max()) <= 1.0
    assert float(sim.min()) >= -1.0


@pytest.mark.parametrize("align", ["rf", "half-pixel"])
@pytest.mark.parametrize(
    ("model", "layers"),
    [
        ("vgg", VGG),
        ("resnet", ["layer1", "layer2", "layer4", "avgpool"]),
        ("vit", ["blocks.0", "blocks.1", "blocks.1:cls"]),
    ],
)
def test_equals_the_explicit_route(
    request: pytest.FixtureRequest, model: str, layers: list[int] | list[str], align: str
) -> None:
    net = request.getfixturevalue(model)
    x = _image(48, 48) if model == "vit" else _image(32, 40)
    got = hc.similarity(net, x, layers, QUERY, align=align)
    want = _explicit(net, x, x, layers, QUERY, align)
    assert got.shape == want.shape
    assert float((got.double() - want).abs().max()) < 1e-4


def test_a_target_of_another_size(vgg: nn.Module, resnet: nn.Module) -> None:
    x, target = _image(32, 40), _image(48, 36, seed=1)
    for net, layers in ((vgg, VGG), (resnet, ["layer1", "layer3"])):
        got = hc.similarity(net, x[0], layers, QUERY, target=target[0])  # (C, H, W) too
        want = _explicit(net, x, target, layers, QUERY)
        assert got.shape == (4, 48, 36)
        assert float((got.double() - want).abs().max()) < 1e-4


def test_kept_layer_maps_give_the_same_maps_without_a_forward_pass(vgg: nn.Module) -> None:
    from hypercolumns.features.linear import layer_maps
    from hypercolumns.probes.similarity import similarity_of_maps

    x, target = _image(32, 40), _image(48, 36, seed=1)
    source, other = layer_maps(vgg, x, VGG), layer_maps(vgg, target, VGG)
    torch.testing.assert_close(similarity_of_maps(source, QUERY), hc.similarity(vgg, x, VGG, QUERY))
    torch.testing.assert_close(
        similarity_of_maps(source, QUERY, target=other),
        hc.similarity(vgg, x, VGG, QUERY, target=target),
    )
    kept = other.sq_norms()[0].sqrt()
    torch.testing.assert_close(
        similarity_of_maps(source, QUERY, target=other, norms=kept),
        hc.similarity(vgg, x, VGG, QUERY, target=target),
    )
    with pytest.raises(OptionError, match="norms must be"):
        similarity_of_maps(source, QUERY, norms=kept)
    with pytest.raises(OptionError, match="same layers"):
        similarity_of_maps(source, QUERY, target=layer_maps(vgg, target, VGG[:2]))
    with pytest.raises(OptionError, match="one image"):
        similarity_of_maps(layer_maps(vgg, torch.cat([x, x]), VGG), QUERY)


def test_the_network_runs_once_when_the_target_is_the_image(vgg: nn.Module) -> None:
    x = _image(32, 40)
    hc.similarity(vgg, x, VGG, QUERY)  # plans
    calls: list[int] = []
    handle = vgg.features[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        hc.similarity(vgg, x, VGG, QUERY)
        assert len(calls) == 1
        hc.similarity(vgg, x, VGG, QUERY, target=_image(32, 40, seed=1))
        assert len(calls) == 3
    finally:
        handle.remove()


def _brute(
    model: nn.Module,
    source: torch.Tensor,
    target: torch.Tensor,
    layers: list[int],
    points: torch.Tensor,
) -> torch.Tensor:
    """``(N, H * W)`` cosine similarity of the source points to every target pixel."""
    return _explicit(model, source, target, layers, points).flatten(1)


def test_correspond_equals_brute_force(vgg: nn.Module) -> None:
    source, target = _image(32, 40), _image(40, 32, seed=1)
    points = torch.tensor([[0, 0], [3, 4], [16, 20], [31, 39], [20, 5]])
    got = hc.correspond(vgg, source, target, VGG, points)
    sim = _brute(vgg, source, target, VGG, points)
    best, _ = sim.max(1)
    assert got.points.dtype == torch.long
    assert got.points.shape == (5, 2)
    assert torch.equal(got.source_points, points)
    assert got.mutual is None
    assert len(got) == 5
    assert float((got.scores.double() - best).abs().max()) < 1e-5
    # the pixel found is a best one (ties aside)
    at = sim[torch.arange(5), got.points[:, 0] * 32 + got.points[:, 1]]
    assert float((best - at).max()) < 1e-5


def test_chunks_do_not_change_the_answer(vgg: nn.Module) -> None:
    source, target = _image(32, 40), _image(32, 32, seed=1)
    whole = hc.correspond(vgg, source, target, VGG, 30, chunk=30, mutual=True)
    for chunk in (1, 7):
        part = hc.correspond(vgg, source, target, VGG, 30, chunk=chunk, mutual=True)
        assert torch.equal(part.source_points, whole.source_points)
        assert torch.equal(part.points, whole.points)
        assert torch.allclose(part.scores, whole.scores, atol=1e-6)
        assert part.mutual is not None
        assert whole.mutual is not None
        assert torch.equal(part.mutual, whole.mutual)
    # a memory budget chooses the chunks: one point's maps at a time here
    small = hc.correspond(vgg, source, target, VGG, 30, max_bytes=4 * 4 * 32 * 32, mutual=True)
    assert torch.equal(small.points, whole.points)


def test_sampled_points_are_seeded_and_distinct(vgg: nn.Module) -> None:
    source = _image(32, 32)
    a = hc.correspond(vgg, source, source, VGG, 20)
    b = hc.correspond(vgg, source, source, VGG, 20)
    c = hc.correspond(vgg, source, source, VGG, 20, seed=1)
    assert a.source_points.dtype == torch.long
    assert torch.equal(a.source_points, b.source_points)
    assert not torch.equal(a.source_points, c.source_points)
    assert len({tuple(p) for p in a.source_points.tolist()}) == 20
    # matched with itself, every pixel finds itself
    assert torch.equal(a.points, a.source_points)
    assert torch.allclose(a.scores, torch.ones(20), atol=1e-5)


def test_mutual_matches_check_back_within_one_pixel(vgg: nn.Module) -> None:
    source, target = _image(32, 40), _image(32, 32, seed=1)
    got = hc.correspond(vgg, source, target, VGG, 25, mutual=True)
    assert got.mutual is not None
    assert got.mutual.dtype == torch.bool
    back = _explicit(vgg, target, source, VGG, got.points).flatten(1).argmax(1)
    back_yx = torch.stack((back // 40, back % 40), dim=1)
    want = ((back_yx - got.source_points).abs() <= 1).all(1)
    assert torch.equal(got.mutual, want)
    assert 0 < int(want.sum()) < 25  # random weights: some pairs agree, not all
    # an image matched with itself is mutual everywhere
    same = hc.correspond(vgg, source, source, VGG, 10, mutual=True)
    assert same.mutual is not None
    assert bool(same.mutual.all())


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        (torch.tensor([[3, 4], [40, 3]]), OptionError, r"query point 1, \(y, x\) = \(40, 3\), "
         r"is outside the 32x40 image x \(y in 0..31, x in 0..39\); 1 of 2"),
        (torch.tensor([[3, -1]]), OptionError, r"query point 0, \(y, x\) = \(3, -1\)"),
        (torch.tensor([[1, 2, 3]]), OptionError, r"query must be an \(N, 2\) tensor .* \(1, 3\)"),
        (torch.zeros(0, 2), OptionError, r"N >= 1, got shape \(0, 2\)"),
        (torch.tensor([[True, False]]), OptionError, "int or float"),
        ("3,4", OptionError, "query must be an"),
    ],
)  # fmt: skip
def test_bad_queries_are_one_clear_error(
    vgg: nn.Module, query: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        hc.similarity(vgg, _image(32, 40), VGG, query)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_images_and_options_are_one_clear_error(vgg: nn.Module) -> None:
    x = _image(32, 40)
    with pytest.raises(InputSizeError, match=r"x must be one image.*got \(2, 3, 32, 40\)"):
        hc.similarity(vgg, torch.cat([x, x]), VGG, QUERY)
    with pytest.raises(InputSizeError, match=r"target must be one image.*got \(32, 40\)"):
        hc.similarity(vgg, x, VGG, QUERY, target=x[0, 0])
    with pytest.raises(InputSizeError, match="floating-point"):
        hc.similarity(vgg, x.long(), VGG, QUERY)
    with pytest.raises(OptionError, match="align must be"):
        hc.similarity(vgg, x, VGG, QUERY, align="corners")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"source point 0, \(y, x\) = \(32, 0\)"):
        hc.correspond(vgg, x, x, VGG, torch.tensor([[32, 0]]))
    with pytest.raises(OptionError, match="chunk must be a positive integer"):
        hc.correspond(vgg, x, x, VGG, 4, chunk=0)
    with pytest.raises(OptionError, match="points must be an int N"):
        hc.correspond(vgg, x, x, VGG, True)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="cannot be sampled"):
        hc.correspond(vgg, x, x, VGG, 32 * 40 + 1)
    with pytest.raises(hc.OutputTooLargeError):
        hc.similarity(vgg, x, VGG, QUERY, max_bytes=100)


def test_public_names() -> None:
    from hypercolumns import probes

    assert hc.similarity.__module__ == "hypercolumns.probes.similarity"
    assert probes.correspond is hc.correspond
    assert probes.Correspondence is hc.Correspondence
