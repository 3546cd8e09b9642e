"""Hypercolumns: the notes' example, alignment proofs, sparse == dense, projection, errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError, LayerNotFoundError


def test_notes_example_vgg16_layers_3_and_8(vgg: nn.Module) -> None:
    x = torch.randn(1, 3, 224, 224)
    result = hc.hypercolumns(vgg, x, [3, 8])
    assert isinstance(result, hc.Hypercolumns)
    assert result.features.shape == (1, 192, 224, 224)
    assert result.slices == {"features.3": slice(0, 64), "features.8": slice(64, 192)}
    assert [layer.name for layer in result.layers] == ["features.3", "features.8"]
    assert result.points is None
    maps = hc.feature_maps(vgg, x, [3, 8])
    torch.testing.assert_close(result.features[:, :64], maps["features.3"], rtol=0, atol=0)
    # For VGG the receptive-field alignment and the classic interpolation agree.
    up = F.interpolate(maps["features.8"], size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result.features[:, 64:], up, rtol=1e-5, atol=1e-5)


LAYERS = ["conv1", "layer1", "layer2.0.conv1", "layer3", "layer4", "avgpool", "fc"]


@pytest.mark.parametrize("align", ["rf", "half-pixel"])
def test_sparse_equals_dense_at_the_same_pixels(resnet: nn.Module, align: str) -> None:
    x = torch.randn(2, 3, 40, 56)
    dense = hc.hypercolumns(resnet, x, LAYERS, align=align)  # type: ignore[arg-type]
    sparse = hc.hypercolumns(resnet, x, LAYERS, points=300, align=align, seed=3)  # type: ignore[arg-type]
    assert sparse.features.shape == (2, 300, dense.features.shape[1])
    assert sparse.slices == dense.slices
    assert sparse.points is not None
    pts = sparse.points.long()
    for b in range(2):
        at = dense.features[b, :, pts[b, :, 0], pts[b, :, 1]].T
        torch.testing.assert_close(sparse.features[b], at, rtol=1e-5, atol=1e-5)


def test_out_buffer_is_written_and_returned(resnet: nn.Module) -> None:
    ext = hc.HypercolumnExtractor(resnet, LAYERS, (40, 56))
    dense = torch.full((2, ext.channels, 40, 56), float("nan"))
    sparse = torch.full((2, 300, ext.channels), float("nan"))
    for _ in range(2):  # a reused buffer is overwritten completely
        x = torch.randn(2, 3, 40, 56)
        got = ext(x, out=dense)
        assert got.features is dense
        torch.testing.assert_close(dense, ext(x).features, rtol=0, atol=0)
        assert ext(x, 300, seed=3, out=sparse).features is sparse
        torch.testing.assert_close(sparse, ext(x, 300, seed=3).features, rtol=0, atol=0)


def test_out_buffer_is_not_held_to_the_memory_guard(resnet: nn.Module) -> None:
    ext = hc.HypercolumnExtractor(resnet, "layer1", 32, max_bytes=1000)
    with pytest.raises(HypercolumnsError, match="more than the 1000 bytes allowed"):
        ext(torch.randn(1, 3, 32, 32))
    assert ext(torch.randn(1, 3, 32, 32), out=torch.empty(1, 64, 32, 32)).features.shape[1] == 64


def test_bad_out_buffer(resnet: nn.Module) -> None:
    ext = hc.HypercolumnExtractor(resnet, "layer1", 32)
    x = torch.randn(1, 3, 32, 32)
    expected = r"out must be a contiguous torch.float32 tensor of shape \(1, 64, 32, 32\) on cpu"
    with pytest.raises(HypercolumnsError, match=expected + r", got torch.float32 \(1, 65, 32"):
        ext(x, out=torch.empty(1, 65, 32, 32))
    with pytest.raises(HypercolumnsError, match=expected + ", got torch.float16"):
        ext(x, out=torch.empty(1, 64, 32, 32, dtype=torch.float16))
    with pytest.raises(HypercolumnsError, match=r"\(not contiguous\)"):
        ext(x, out=torch.empty(1, 32, 32, 64).permute(0, 3, 1, 2))
    with pytest.raises(HypercolumnsError, match=r"shape \(1, 5, 64\).*got torch.float32 \(1, 64"):
        ext(x, 5, out=torch.empty(1, 64, 32, 32))
    with pytest.raises(HypercolumnsError, match="out must be a tensor, got ndarray"):
        ext(x, out=torch.empty(1, 64, 32, 32).numpy())  # type: ignore[arg-type]


def test_values_are_taken_before_a_later_inplace_op() -> None:
    """Each layer is sampled inside its forward hook, before the in-place ReLU that follows."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 5, 3, padding=1)
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        conv = model[0](x)
    assert conv.min() < 0
    for layers in (["0"], ["0", "2"]):
        result = hc.hypercolumns(model, x, layers)
        torch.testing.assert_close(result.of("0"), conv, rtol=0, atol=0)
        sparse = hc.hypercolumns(model, x, layers, points=torch.tensor([[3, 4], [11, 0]]))
        torch.testing.assert_close(sparse.of("0"), conv[:, :, [3, 11], [4, 0]].transpose(1, 2))


def test_sparse_takes_int_and_float_points_shared_by_the_batch(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    pts = torch.tensor([[0, 0], [31, 31], [5, 17]])
    as_int = hc.hypercolumns(resnet, x, "layer2", points=pts)
    as_float = hc.hypercolumns(resnet, x, "layer2", points=pts.double())
    torch.testing.assert_close(as_int.features, as_float.features, rtol=0, atol=0)
    assert as_int.points is not None
    assert as_int.points.shape == (2, 3, 2)
    assert as_int.points.dtype == torch.float32


def test_extractor_replans_sparse_sampling_when_the_points_change(resnet: nn.Module) -> None:
    ext = hc.HypercolumnExtractor(resnet, LAYERS, 32)
    x = torch.randn(2, 3, 32, 32)
    a, b = torch.tensor([[0, 0], [31, 5], [7, 9]]), torch.tensor([[3, 4], [20, 20], [31, 31]])
    first = ext(x, a).features
    for points in (b, a, b[:2], 3, 3):
        expected = hc.hypercolumns(resnet, x, LAYERS, points=points)
        got = ext(x, points)
        torch.testing.assert_close(got.features, expected.features, rtol=0, atol=0)
    torch.testing.assert_close(ext(x, a).features, first, rtol=0, atol=0)


@pytest.mark.parametrize("sparse", [True, False])
def test_one_extractor_called_from_two_threads_at_once(resnet: nn.Module, sparse: bool) -> None:
    """The pipeline's lanes run one model in two threads: each call's hooks take its own
    thread's layers only, and each its own points, as if the calls ran one after the other."""
    ext = hc.HypercolumnExtractor(resnet, LAYERS, 32)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 3, 32, 32, generator=gen) for _ in range(2)]
    points = [torch.randint(0, 32, (1, 9, 2), generator=gen) for _ in range(2)]
    args = [(x, p if sparse else None) for x, p in zip(inputs, points, strict=True)]
    expected = [ext(*a).features for a in args]
    start = threading.Barrier(2)

    def calls(i: int) -> list[torch.Tensor]:
        start.wait()
        return [ext(*args[i]).features for _ in range(12)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(calls, range(2)))
    for got, want in zip(results, expected, strict=True):
        for features in got:
            torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)


def test_half_pixel_equals_interpolate(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 48)
    names = ["layer1", "layer3", "layer4"]
    maps = hc.feature_maps(resnet, x, names)
    extractor = hc.HypercolumnExtractor(resnet, names, (32, 48), align="half-pixel")
    for size in [None, (20, 25), (64, 50)]:
        if size is None:
            result = extractor(x)
        else:
            result = hc.hypercolumns(resnet, x, names, align="half-pixel", size=size)
        target = size or (32, 48)
        ref = torch.cat(
            [
                F.interpolate(maps[n], size=target, mode="bilinear", align_corners=False)
                for n in names
            ],
            dim=1,
        )
        assert result.features.shape == ref.shape
        torch.testing.assert_close(result.features, ref, rtol=1e-5, atol=1e-5)


def delta_conv(kernel: int, stride: int, padding: int) -> nn.Conv2d:
    """A convolution that copies the pixel under its kernel's centre."""
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, kernel // 2, kernel // 2] = 1.0
    return conv


def copy_net() -> nn.Sequential:
    """Units whose value is the input at their receptive-field centre, for linear images."""
    return nn.Sequential(
        delta_conv(3, 2, 1),  # centre 0, stride 2: not where half-pixel puts it
        nn.AvgPool2d(2, 2),  # the mean of a linear ramp is the ramp at the window's centre
        delta_conv(3, 1, 0),
        delta_conv(5, 2, 1),
        nn.MaxPool2d(1, 3),
    ).eval()


def test_rf_alignment_is_exact_on_a_copying_network() -> None:
    size = 96
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    ramp = (0.5 * ys + 2.0 * xs + 1.0).reshape(1, 1, size, size)
    model = copy_net()
    names = ["0", "1", "2", "3", "4"]
    rf = hc.hypercolumns(model, ramp, names).features[0]
    half = hc.hypercolumns(model, ramp, names, align="half-pixel").features[0]
    layers = {layer.name: layer for layer in hc.layers(model, size)}
    # interior: pixels between the first and the last unit centre of every layer
    lo = max(layers[n].rf.center[0] for n in names)  # type: ignore[union-attr]
    hi = min(
        layers[n].rf.center[0] + (layers[n].shape[-1] - 1) * layers[n].rf.stride[0]  # type: ignore[union-attr]
        for n in names
    )
    inside = slice(int(lo) + 1, int(hi))
    expected = ramp[0, 0, inside, inside]
    for c, n in enumerate(names):
        assert layers[n].rf.stride[0] > 1  # type: ignore[union-attr]
        torch.testing.assert_close(rf[c, inside, inside], expected, rtol=0, atol=1e-4)
        error = (half[c, inside, inside] - expected).abs().max()
        assert error > 0.4, f"half-pixel unexpectedly exact on layer {n}"


def test_rf_differs_from_half_pixel_on_resnet(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    rf = hc.hypercolumns(resnet, x, "layer3").features
    half = hc.hypercolumns(resnet, x, "layer3", align="half-pixel").features
    assert not torch.allclose(rf, half)


def test_projection_before_upsampling_is_exact(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 40)
    full = hc.hypercolumns(resnet, x, ["layer1", "layer3", "fc"])
    torch.manual_seed(1)
    matrix = torch.randn(5, 256)
    projected = hc.hypercolumns(resnet, x, ["layer1", "layer3", "fc"], project={"layer3": matrix})
    assert projected.slices == {
        "layer1": slice(0, 64),
        "layer3": slice(64, 69),
        "fc": slice(69, 1069),
    }
    expected = torch.einsum("kc,bchw->bkhw", matrix, full.of("layer3"))
    torch.testing.assert_close(projected.of("layer3"), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(projected.of("layer1"), full.of("layer1"), rtol=0, atol=0)
    torch.testing.assert_close(projected.of("fc"), full.of("fc"), rtol=0, atol=0)


def test_fit_pca_and_project(resnet: nn.Module) -> None:
    images = torch.randn(3, 3, 32, 32)
    pca = hc.fit_pca(resnet, images, ["layer1", "fc"], n_components={"layer1": 4, "fc": 2})
    assert set(pca) == {"layer1", "fc"}
    comps = pca["layer1"].components
    assert comps.shape == (4, 64)
    torch.testing.assert_close(comps @ comps.T, torch.eye(4), rtol=0, atol=1e-4)
    assert bool(
        (pca["layer1"].explained_variance[:-1] >= pca["layer1"].explained_variance[1:]).all()
    )
    full = hc.hypercolumns(resnet, images, ["layer1", "fc"])
    projected = hc.hypercolumns(resnet, images, ["layer1", "fc"], project=pca)
    expected = pca["layer1"].transform(full.of("layer1").permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(projected.of("layer1"), expected, rtol=1e-4, atol=1e-4)
    assert projected.features.shape == (3, 6, 32, 32)
    # the projection of the samples it was fitted on is centred
    sparse = hc.hypercolumns(
        resnet, images, "layer1", points=256, project={"layer1": pca["layer1"]}
    )
    assert sparse.features.mean(dim=(0, 1)).abs().max() < 0.05 * sparse.features.std()


def test_fit_pca_too_many_components(resnet: nn.Module) -> None:
    with pytest.raises(
        HypercolumnsError, match=r"n_components=100 for layer 'layer1' must lie in 1\.\.64"
    ):
        hc.fit_pca(resnet, torch.randn(1, 3, 32, 32), "layer1", n_components=100)


def test_normalize_l2(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    result = hc.hypercolumns(resnet, x, ["layer1", "layer2", "fc"], normalize="l2")
    for name in result.slices:
        norms = result.of(name).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-4)
    sparse = hc.hypercolumns(resnet, x, ["layer1", "fc"], normalize="l2", points=10)
    torch.testing.assert_close(
        sparse.of("layer1").norm(dim=-1), torch.ones(1, 10), rtol=0, atol=1e-4
    )


def test_normalize_standardize(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    full = hc.hypercolumns(resnet, x, ["layer1", "fc"])
    stats = {
        "layer1": (torch.randn(64), torch.rand(64) + 0.5),
        "fc": (torch.randn(1000), torch.rand(1000) + 0.5),
    }
    result = hc.hypercolumns(resnet, x, ["layer1", "fc"], normalize=stats)
    mean, std = stats["layer1"]
    expected = (full.of("layer1") - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(result.of("layer1"), expected, rtol=1e-5, atol=1e-5)


def test_dtype_float16(resnet: nn.Module) -> None:
    """Sampled in float32, rounded once: within one float16 step of the float32 result."""
    x = torch.randn(1, 3, 32, 32)
    eps = torch.finfo(torch.float16).eps
    for points in (None, 50):
        full = hc.hypercolumns(resnet, x, ["layer1", "layer3", "fc"], points=points)
        half = hc.hypercolumns(
            resnet, x, ["layer1", "layer3", "fc"], points=points, dtype=torch.float16
        )
        assert half.features.dtype == torch.float16
        torch.testing.assert_close(half.features, full.features.half(), rtol=eps, atol=1e-6)


def test_size(resnet: nn.Module) -> None:
    result = hc.hypercolumns(resnet, torch.randn(1, 3, 64, 64), ["layer1", "fc"], size=16)
    assert result.features.shape == (1, 64 + 1000, 16, 16)


def test_sampled_points_are_distinct_and_seeded(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 16, 16)
    a = hc.hypercolumns(resnet, x, "layer1", points=200, seed=7)
    b = hc.hypercolumns(resnet, x, "layer1", points=200, seed=7)
    c = hc.hypercolumns(resnet, x, "layer1", points=200, seed=8)
    assert a.points is not None
    assert b.points is not None
    assert c.points is not None
    assert torch.equal(a.points, b.points)
    assert not torch.equal(a.points, c.points)
    for img in a.points.long():
        flat = img[:, 0] * 16 + img[:, 1]
        assert flat.unique().numel() == 200
        assert bool(((img >= 0) & (img < 16)).all())
    # a planned extractor keeps the seeded pixels of its last call, and only those
    ext = hc.HypercolumnExtractor(resnet, "layer1", 16)
    same = [ext(x, 200, seed=7).points for _ in range(2)]
    other, unseeded = ext(x, 200, seed=8).points, ext(x, 200, seed=None).points
    fewer = ext(x, 100, seed=7).points
    assert all(p is not None and torch.equal(p, a.points) for p in same)
    assert other is not None
    assert torch.equal(other, c.points)
    assert unseeded is not None
    assert not torch.equal(unseeded, c.points)
    assert fewer is not None
    assert fewer.shape == (2, 100, 2)


def test_points_stratified_by_labels(resnet: nn.Module) -> None:
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, :2, :2] = 1  # 4 pixels of label 1
    labels[0, 8:, :] = 2
    labels[1, :, :] = 5
    labels[1, 0, :3] = -1  # never sampled
    result = hc.hypercolumns(resnet, torch.randn(2, 3, 16, 16), "layer1", points=30, labels=labels)
    assert result.points is not None
    pts = result.points.long()
    got0 = labels[0, pts[0, :, 0], pts[0, :, 1]]
    counts = {int(v): int((got0 == v).sum()) for v in got0.unique()}
    assert counts == {0: 13, 1: 4, 2: 13}  # label 1 gives its surplus to the others
    got1 = labels[1, pts[1, :, 0], pts[1, :, 1]]
    assert bool((got1 == 5).all())


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)


def test_vit_hypercolumns_with_class_token(vit: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    result = hc.hypercolumns(vit, x, ["blocks.2", "blocks.2:cls"])
    assert result.features.shape == (2, 384, 64, 64)
    maps = hc.feature_maps(vit, x, ["blocks.2", "blocks.2:cls"], as_maps=True)
    cls = result.of("blocks.2:cls")
    torch.testing.assert_close(cls, maps["blocks.2:cls"][:, :, None, None].expand_as(cls))
    # 16-pixel patches are centred at 7.5 + 16 k: sampled there, a hypercolumn is that patch
    centre = hc.hypercolumns(vit, x, "blocks.2", points=torch.tensor([[23.5, 39.5]]))
    torch.testing.assert_close(centre.features[:, 0], maps["blocks.2"][:, :, 1, 2])


def test_model_left_as_found(resnet: nn.Module) -> None:
    resnet.train()
    resnet.layer2.eval()
    flags = [m.training for m in resnet.modules()]
    hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), ["layer1", "layer3"], points=5)
    with pytest.raises(HypercolumnsError):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1", points=torch.tensor([[40, 0]]))
    assert [m.training for m in resnet.modules()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet.modules())
    resnet.eval()


# -- every bad input is a clear error -------------------------------------------------------------


def test_point_outside_the_image(resnet: nn.Module) -> None:
    pts = torch.tensor([[[1.0, 2.0], [3.0, 32.0]]])
    with pytest.raises(
        HypercolumnsError, match=r"point 1 of image 0, \(y, x\) = \(3, 32\), is outside the 32x32"
    ):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1", points=pts)


def test_points_of_the_wrong_shape(resnet: nn.Module) -> None:
    with pytest.raises(HypercolumnsError, match=r"points must have shape \(B=1, N, 2\)"):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1", points=torch.zeros(3, 3))


def test_too_many_points(resnet: nn.Module) -> None:
    with pytest.raises(HypercolumnsError, match=r"points=2000 cannot be sampled .* 32x32"):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1", points=2000)


def test_unknown_layer(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match=r"no layer named 'layr1'.*closest: layer1"):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layr1")


def test_layer_given_twice(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match="'layer1' is given twice"):
        hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1,layer1")


def test_memory_guard(resnet: nn.Module) -> None:
    with pytest.raises(
        HypercolumnsError, match=r"need 3\.0 MiB, more than the 1000 bytes allowed.*points=N"
    ):
        hc.hypercolumns(resnet, torch.randn(1, 3, 64, 64), "layer1,layer2", max_bytes=1000)
    # the sparse output of the same layers fits
    sparse = hc.hypercolumns(
        resnet, torch.randn(1, 3, 64, 64), "layer1,layer2", points=1, max_bytes=1000
    )
    assert sparse.features.shape == (1, 1, 192)


def test_bad_dtype(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(
        HypercolumnsError, match=r"dtype must be a floating-point type.*got torch.int32"
    ):
        hc.hypercolumns(resnet, x, "layer1", dtype=torch.int32)
    with pytest.raises(
        HypercolumnsError, match=r"dtype torch.float8_e4m3fn is not supported on cpu"
    ):
        hc.hypercolumns(resnet, x, "layer1", dtype=torch.float8_e4m3fn)


def test_bad_normalize(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(
        HypercolumnsError, match=r"normalize must be None, 'l2', or a mapping.*got 'L2'"
    ):
        hc.hypercolumns(resnet, x, "layer1", normalize="L2")  # type: ignore[arg-type]
    with pytest.raises(HypercolumnsError, match=r"missing: \['layer2'\]"):
        hc.hypercolumns(
            resnet, x, "layer1,layer2", normalize={"layer1": (torch.zeros(64), torch.ones(64))}
        )


def test_bad_project(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(HypercolumnsError, match=r"must have shape \(C_out, 64\).*got \(3, 65\)"):
        hc.hypercolumns(resnet, x, "layer1", project={"layer1": torch.zeros(3, 65)})
    with pytest.raises(
        HypercolumnsError, match=r"project names layers that were not chosen: \['layer2'\]"
    ):
        hc.hypercolumns(resnet, x, "layer1", project={"layer2": torch.zeros(3, 128)})


def test_bad_align_size_and_labels(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(HypercolumnsError, match="align must be 'rf' or 'half-pixel'"):
        hc.hypercolumns(resnet, x, "layer1", align="corners")  # type: ignore[arg-type]
    with pytest.raises(HypercolumnsError, match=r"size=.* only applies to dense"):
        hc.hypercolumns(resnet, x, "layer1", size=16, points=4)
    with pytest.raises(HypercolumnsError, match="labels= stratifies sampled points"):
        hc.hypercolumns(resnet, x, "layer1", labels=torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(
        HypercolumnsError, match=r"labels must be an int tensor of shape \(B=1, 32, 32\)"
    ):
        hc.hypercolumns(
            resnet, x, "layer1", points=4, labels=torch.zeros(1, 16, 16, dtype=torch.long)
        )


def test_of_unknown_layer(resnet: nn.Module) -> None:
    result = hc.hypercolumns(resnet, torch.randn(1, 3, 32, 32), "layer1", points=2)
    with pytest.raises(HypercolumnsError, match=r"no layer 'layer2' in these hypercolumns"):
        result.of("layer2")
