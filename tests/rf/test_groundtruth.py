"""The analysis against an independent ground truth: receptive fields read off input gradients.

:mod:`hypercolumns.rf.groundtruth` measures a layer's receptive field by back-propagating from
single units of a linear, positive copy of the model. Every test here compares that measurement with
:func:`hypercolumns.rf.layers.layers`, exactly: sizes, strides and centres (of unit 0), and for
layers whose units differ (transposed convolution, upsampling) every unit's box.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hypercolumns.errors import LayerNotFoundError
from hypercolumns.rf.groundtruth import (
    GradientRF,
    MeasurementError,
    gradient_boxes,
    gradient_rf,
    rf_mismatches,
)
from hypercolumns.rf.layers import Layer, layers
from tests.tiny_models import (
    RowRNN,
    block_transform,
    linear_attention,
    outlook_and_halo,
    windowed,
)

LAST = "<last spatial layer>"


def _last_spatial(found: Sequence[Layer]) -> Layer:
    return [la for la in found if la.rf is not None and not la.rf.is_global][-1]


def _layer(model: nn.Module, name: str, size: int | tuple[int, int] = 224) -> Layer:
    found = layers(model, size)
    if name == LAST:
        return _last_spatial(found)
    return next(la for la in found if la.name == name)


# ---------------------------------------------------------------------------------------------
# A zoo of real networks.

ZOO: dict[str, Callable[[], nn.Module]] = {
    "torchvision:vgg16": lambda: torchvision.models.vgg16(),
    "torchvision:resnet50": lambda: torchvision.models.resnet50(),
    "timm:convnext_tiny": lambda: timm.create_model("convnext_tiny", pretrained=False),
    "timm:efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm:resnet50/os8": lambda: timm.create_model("resnet50", pretrained=False, output_stride=8),
}


@functools.cache
def _zoo(key: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[key]().eval()


CASES = [
    ("torchvision:vgg16", "features.16", False),
    ("torchvision:vgg16", "features.30", True),
    ("torchvision:vgg16", LAST, True),  # avgpool: adaptive to 7x7, so size-dependent
    ("torchvision:resnet50", "layer2", False),
    ("torchvision:resnet50", "layer4", True),  # its last spatial layer has the same geometry
    ("timm:convnext_tiny", "stages.1", False),
    ("timm:convnext_tiny", LAST, True),
    ("timm:efficientnet_b0", LAST, True),
    ("timm:resnet50/os8", LAST, True),
]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        pytest.param(key, name, marks=[pytest.mark.slow] if slow else [], id=f"{key}-{name}")
        for key, name, slow in CASES
    ],
)
def test_zoo_layer_agrees_with_gradients(key: str, name: str) -> None:
    model = _zoo(key)
    layer = _layer(model, name)
    measured = gradient_rf(model, layer.name, 224)
    assert rf_mismatches(model, layer.name, measured) == []
    got = (measured.size, measured.stride, measured.center)
    if (key, name) in KNOWN:
        assert got == _both(*KNOWN[key, name])
    if key == "torchvision:vgg16" and layer.name == "avgpool":
        # Adaptive pooling to 7x7: the geometry depends on the input size (it was measured on
        # larger inputs, and compared with the analysis there); at 224 it is the identity.
        assert _layer(model, "features.30").rf == layer.rf
        assert measured.measured_at[0][0] != 224
        return
    assert layer.rf is not None
    assert (layer.rf.size, layer.rf.stride, layer.rf.center) == got


# Receptive fields known from the literature: size, stride, centre of unit 0 (both axes).
KNOWN = {
    ("torchvision:vgg16", "features.30"): (212, 32.0, 15.5),
    ("torchvision:resnet50", "layer4"): (427, 32.0, 0.0),
}


def _both(
    size: int, stride: float, center: float
) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float]]:
    return (size, size), (stride, stride), (center, center)


@pytest.mark.parametrize(("key", "name"), list(KNOWN))
def test_known_receptive_fields(key: str, name: str) -> None:
    """The analysis gives the published numbers (the zoo test measures them too)."""
    rf = _layer(_zoo(key), name).rf
    assert rf is not None
    assert (rf.size, rf.stride, rf.center) == _both(*KNOWN[key, name])


def test_linear_on_a_one_pixel_wide_map() -> None:
    class ChannelsLastMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    # A 3x3 conv then a per-pixel linear: 3x3, also on a map one pixel wide (the gradient
    # harness needs a neighbouring unit on each axis, so it cannot measure this one).
    model = ChannelsLastMlp()
    for size in ((16, 1), (16, 16)):
        layer = _layer(model, "fc", size)
        assert layer.rf is not None
        assert not layer.rf.is_global
        assert (layer.rf.size, layer.rf.stride) == ((3, 3), (1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Hand-built networks: every unit's box, for layers whose units differ.


class TinyUNet(nn.Module):
    """Two levels down and up: max pool, strided conv, transposed convs, skip concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


class Pad(nn.Module):
    def __init__(self, pad: tuple[int, ...], mode: str = "constant") -> None:
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, mode=self.mode)


def _upsampling() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(4, 4, 3, stride=4, padding=1),
        nn.Upsample(scale_factor=3, mode="nearest"),
        nn.Conv2d(4, 4, 1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    )


def _pixel_shuffle() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.PixelShuffle(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.PixelUnshuffle(2),
        nn.Conv2d(16, 4, 1),
    )


def _dilated() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=3, dilation=3),
        nn.MaxPool2d(3, stride=2, padding=1, dilation=2),
        nn.Conv2d(8, 8, (3, 5), padding=(4, 2), dilation=(4, 1)),
    )


def _padded() -> nn.Module:
    return nn.Sequential(
        Pad((1, 2, 0, 3)),
        nn.Conv2d(3, 4, 3, stride=2),
        Pad((0, 1, 2, 0), mode="reflect"),
        nn.Conv2d(4, 4, 2),
        Pad((-1, 0, 0, -2)),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
    )


SMALL: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "unet": (TinyUNet, 64),
    "upsampling": (_upsampling, 64),
    "pixel_shuffle": (_pixel_shuffle, 48),
    "dilated": (_dilated, 96),
    "padded": (_padded, 64),
    "windowed": (windowed, 256),
    "outlook_and_halo": (outlook_and_halo, 96),
    "block_transform": (block_transform, 96),
    "linear_attention": (linear_attention, 64),
}


def _interior_units(layer: Layer, size: int, count: int = 4) -> list[tuple[int, int]]:
    """``count`` x ``count`` consecutive units whose analytic boxes keep off the border."""
    assert layer.rf is not None
    assert layer.layout is not None
    height, width = layer.layout.grid

    def inside(i: int, j: int) -> bool:
        y0, x0, y1, x1 = layer.rf.unit_box(i, j)  # type: ignore[union-attr]
        return y0 >= 1 and x0 >= 1 and y1 <= size - 2 and x1 <= size - 2

    starts = [
        (i, j)
        for i in range(height - count + 1)
        for j in range(width - count + 1)
        if inside(i, j) and inside(i + count - 1, j + count - 1)
    ]
    assert starts, f"no interior block of {count}x{count} units in layer {layer.name}"
    i0, j0 = starts[len(starts) // 2]
    return [(i0 + a, j0 + b) for a in range(count) for b in range(count)]


def _spatial_layers(model: nn.Module, size: int) -> list[Layer]:
    """Layers laid out as maps (not windows) with a local receptive field."""
    return [
        la
        for la in layers(model, size)
        if la.rf is not None and not la.rf.is_global and la.layout is not None
    ]


@pytest.mark.parametrize("key", list(SMALL))
def test_every_unit_box_matches_gradient_support(key: str) -> None:
    factory, size = SMALL[key]
    torch.manual_seed(0)
    model = factory()
    checked = 0
    for layer in _spatial_layers(model, size):
        if layer.index is None:
            continue
        units = _interior_units(layer, size)
        measured = gradient_boxes(model, layer.name, size, units)
        assert layer.rf is not None
        expected = [layer.rf.unit_box(i, j) for i, j in units]
        assert measured == expected, f"{key}: layer {layer.name} ({layer.type})"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("key", list(SMALL))
def test_small_network_geometry_matches_gradients(key: str) -> None:
    """Size, stride and centre of every layer whose pattern repeats within a few units.

    Centres are compared where units are centred in their boxes (``uniform``): otherwise the
    analysis places a unit at its sampling position (e.g. where bilinear interpolation
    samples), which need not be the middle of the box that the gradient shows.
    """
    factory, size = SMALL[key]
    torch.manual_seed(0)
    model = factory()
    checked = 0
    for layer in _spatial_layers(model, size):
        assert layer.rf is not None
        assert layer.rf.axes is not None
        period = max(axis.period for axis in layer.rf.axes)
        if layer.index is None or period > 4 or any(a.envelope for a in layer.rf.axes):
            continue
        unit = _interior_units(layer, size, period + 1)[0]
        measured = gradient_rf(model, layer.name, size, unit=unit)
        where = f"{key}: layer {layer.name} ({layer.type})"
        assert (measured.size, measured.stride) == (layer.rf.size, layer.rf.stride), where
        if layer.rf.uniform:
            assert measured.center == layer.rf.center, where
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("key", ["unet", "pixel_shuffle", "dilated", "padded"])
def test_small_network_last_layer_on_grown_inputs(key: str) -> None:
    factory, size = SMALL[key]
    torch.manual_seed(0)
    model = factory()
    last = _spatial_layers(model, size)[-1]
    measured = gradient_rf(model, last.name, size)
    assert rf_mismatches(model, last.name, measured) == []


def test_non_uniform_layers_are_checked() -> None:
    """The hand-built nets do exercise units that differ from one another."""
    kinds = {
        key: [la.name for la in _spatial_layers(factory(), size) if not la.rf.uniform]  # type: ignore[union-attr]
        for key, (factory, size) in SMALL.items()
    }
    assert "up2" in kinds["unet"]
    assert {"1", "3", "5", "7"} <= set(kinds["upsampling"])
    assert "2" in kinds["pixel_shuffle"]


# ---------------------------------------------------------------------------------------------
# Global context, spatial attention, self-attention.


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class SpatialAttention(nn.Module):
    """CBAM's spatial gate: channel mean and max, a 7x7 conv, a sigmoid (widens by 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * self.conv(pooled).sigmoid()


class SelfAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens)
        return out.transpose(1, 2).reshape(b, c, h, w)


def _context_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        SqueezeExcite(8),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
    )


def test_global_context_does_not_widen() -> None:
    model = _context_net()
    measured = gradient_rf(model, "2", 64)
    assert rf_mismatches(model, "2", measured) == []
    assert measured.size == (7, 7)


def test_spatial_attention_widens() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SpatialAttention())
    measured = gradient_rf(model, "1", 48)
    assert measured.size == (9, 9)
    assert rf_mismatches(model, "1", measured) == []


def test_self_attention_reads_the_whole_image() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), SelfAttention(8), nn.Conv2d(8, 8, 1))
    layer = _layer(model, "2", 32)
    assert layer.rf is not None
    assert layer.rf.size == (32, 32)
    assert gradient_boxes(model, "2", 32, [(0, 0), (3, 5)]) == [(0, 0, 31, 31)] * 2


# ---------------------------------------------------------------------------------------------
# The ground truth itself.


def test_measurement_can_disagree() -> None:
    """The comparison is not vacuous: a wrong measurement is reported, axis by axis."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3))
    measured = gradient_rf(model, "1", 32)
    assert (measured.size, measured.stride, measured.center) == ((7, 7), (2.0, 2.0), (2.0, 2.0))
    assert rf_mismatches(model, "1", measured) == []
    (ys, xs), i = measured.extents, measured.units[0][0]
    assert ys[0] == (2 * i - 1, 2 * i + 5)
    shifted = ((ys[0][0], ys[0][1] + 1), *ys[1:])
    wrong = GradientRF(
        (7, 9), (2.0, 2.0), (2.0, 2.5), measured.measured_at, measured.units, (shifted, xs)
    )
    assert rf_mismatches(model, "1", wrong) == [
        f"unit {i} along y on {_at(wrong, 0)}: analysis {2 * i - 1}..{2 * i + 5}, "
        f"gradient {2 * i - 1}..{2 * i + 6}",
        f"size[x] on {_at(wrong, 1)}: analysis 7, gradient 9",
        f"center[x] on {_at(wrong, 1)}: analysis 2, gradient 2.5",
    ]


def _at(measured: GradientRF, axis: int) -> str:
    return "x".join(str(s) for s in measured.measured_at[axis])


def test_given_unit_is_measured_on_the_input_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.Conv2d(4, 4, 3, padding=1))
    measured = gradient_rf(model, "1", 40, unit=(8, 9))
    assert measured.measured_at == ((40, 40), (40, 40))
    assert measured.units == ((8, 9), (9, 10))
    assert (measured.size, measured.stride, measured.center) == ((9, 9), (2.0, 2.0), (0.0, 0.0))


def test_clipped_unit_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(MeasurementError, match=r"unit \(0, 4\) .* cut by the border"):
        gradient_rf(model, "1", 40, unit=(0, 4))


def test_unknown_layer_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    with pytest.raises(LayerNotFoundError, match=r"no layer named '2'.*hc.layers"):
        gradient_rf(model, "2", 32)


def test_global_layer_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(MeasurementError, match=r"expected a \(B, C, H, W\) map"):
        gradient_boxes(model, "2", 32, [(0, 0)])


def test_model_is_left_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_rf(model, "3", 32)
    assert all(m.training for m in model.modules())
    assert [type(m) for m in model] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrence_along_rows_matches_gradients(bidirectional: bool) -> None:
    """An LSTM over each row: unit j reads the row up to j (both ways: the whole row)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), RowRNN(4, bidirectional))
    size = (12, 8)
    layer = _layer(model, "1", size)
    assert layer.rf is not None
    units = [(5, j) for j in range(8)]
    expected = []
    for i, j in units:  # the analysis ignores the border: clip to the image
        y0, x0, y1, x1 = layer.rf.unit_box(i, j)
        expected.append((max(y0, 0), max(x0, 0), min(y1, 11), min(x1, 7)))
    assert gradient_boxes(model, "1", size, units) == expected
    assert layer.rf.size == (3, 10)  # unit 7 of the forward scan reads 8 units of 3 pixels
