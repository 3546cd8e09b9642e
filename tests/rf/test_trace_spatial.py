"""Rules for the axes of a map, one op kind each: convolution, pooling, resampling, padding,
slicing, shifts, recurrences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.rf.graphs import Lambda, conv, geometry, rf
from tests.tiny_models import RowRNN


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (conv(3, 2, 1), ((3, 3), (2.0, 2.0), (0.0, 0.0))),
        (conv((3, 5), 1, (1, 0)), ((3, 5), (1.0, 1.0), (0.0, 2.0))),
        (conv(3, 1, 2, d=2), ((5, 5), (1.0, 1.0), (0.0, 0.0))),
        (conv(3, 1, 1, groups=3), ((3, 3), (1.0, 1.0), (0.0, 0.0))),
        (nn.MaxPool2d(3, 2, 1), ((3, 3), (2.0, 2.0), (0.0, 0.0))),
        (nn.MaxPool2d(2, 2, ceil_mode=True), ((2, 2), (2.0, 2.0), (0.5, 0.5))),
        (nn.AvgPool2d(3, 2), ((3, 3), (2.0, 2.0), (1.0, 1.0))),
        (nn.AdaptiveAvgPool2d(8), ((4, 4), (4.0, 4.0), (1.5, 1.5))),
        (nn.AdaptiveMaxPool2d((16, 8)), ((2, 4), (2.0, 4.0), (0.5, 1.5))),
        (nn.ZeroPad2d((1, 0, 2, 0)), ((1, 1), (1.0, 1.0), (-2.0, -1.0))),
        (nn.ConstantPad2d((0, 1, 0, 1), 0.5), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.ReflectionPad2d(2), ((1, 1), (1.0, 1.0), (-2.0, -2.0))),
        (nn.PixelUnshuffle(2), ((2, 2), (2.0, 2.0), (0.5, 0.5))),
        (Lambda(lambda x: x[:, :, 2:-2, 1:]), ((1, 1), (1.0, 1.0), (2.0, 1.0))),
        (Lambda(lambda x: x[:, :, ::2, 1::4]), ((1, 1), (2.0, 4.0), (0.0, 1.0))),
        (Lambda(lambda x: F.pad(x, (1, 2, 3, 4))), ((1, 1), (1.0, 1.0), (-3.0, -1.0))),
        (Lambda(lambda x: torch.roll(x, 1, dims=3)), ((1, 1), (1.0, 1.0), (0.0, -1.0))),
        # Sliding windows averaged: a 3x3 pooling with stride 2, like nn.AvgPool2d(3, 2).
        (
            Lambda(lambda x: x.unfold(2, 3, 2).unfold(3, 3, 2).mean((-2, -1))),
            ((3, 3), (2.0, 2.0), (1.0, 1.0)),
        ),
        (
            Lambda(
                lambda x: (
                    F.unfold(x, 3, padding=1, stride=2)
                    .view(1, 3, 9, 16, 16)
                    .amax(2)
                    .view(1, 3, 16, 16)
                )
            ),
            ((3, 3), (2.0, 2.0), (0.0, 0.0)),
        ),
        (nn.GELU(), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.BatchNorm2d(3), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.GroupNorm(1, 3), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
    ],
)
def test_single_layer(layer: nn.Module, expected: tuple[object, ...]) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    r = rf(model, "1")
    assert geometry(r) == expected
    assert r.uniform
    assert r.aligned
    assert not r.is_global


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (nn.ConvTranspose2d(3, 3, 3, 2, 1, output_padding=1), ((2, 2), (0.5, 0.5), (0.0, 0.0))),
        (nn.ConvTranspose2d(3, 3, 4, 2, 1), ((2, 2), (0.5, 0.5), (-0.25, -0.25))),
        (nn.ConvTranspose2d(3, 3, 2, 2), ((1, 1), (0.5, 0.5), (-0.25, -0.25))),
        (nn.Upsample(scale_factor=2), ((1, 1), (0.5, 0.5), (-0.25, -0.25))),
        (nn.Upsample(size=(64, 64), mode="bilinear"), ((2, 2), (0.5, 0.5), (-0.25, -0.25))),
        (
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            ((2, 2), (31 / 63, 31 / 63), (0.0, 0.0)),
        ),
        (
            Lambda(lambda x: F.interpolate(x, scale_factor=(2, 4), mode="nearest")),
            ((1, 1), (0.5, 0.25), (-0.25, -0.375)),
        ),
        (nn.PixelShuffle(1), None),
        # bins [0, 11), [10, 22), [21, 32): centres 5, 15.5, 26, fitted 29/6 + j 32/3
        (nn.AdaptiveAvgPool2d(3), ((12, 12), (32 / 3, 32 / 3), (29 / 6, 29 / 6))),
    ],
)
def test_fractional_and_irregular_layers(
    layer: nn.Module,
    expected: tuple[object, ...] | None,
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer)
    r = rf(model, "1")
    if expected is None:  # pixel shuffle by 1 is the identity
        assert geometry(r) == ((1, 1), (1.0, 1.0), (0.0, 0.0))
        return
    size, stride, center = expected  # type: ignore[misc]
    assert r.size == size
    assert r.stride == pytest.approx(stride)
    assert r.center == pytest.approx(center)
    assert not r.uniform


def test_pixel_shuffle() -> None:
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.PixelShuffle(2))
    r = rf(model, "1")
    assert geometry(r) == ((1, 1), (0.5, 0.5), (-0.25, -0.25))
    assert not r.uniform


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
def test_same_padding_with_odd_and_even_kernels_and_sizes() -> None:
    for size in (15, 16):
        r = rf(nn.Sequential(nn.Conv2d(3, 3, 3, padding="same")), "0", size)
        assert geometry(r) == ((3, 3), (1.0, 1.0), (0.0, 0.0))
        # PyTorch pads an even kernel's extra pixel on the right: left 1, right 2.
        r = rf(nn.Sequential(nn.Conv2d(3, 3, 4, padding="same")), "0", size)
        assert geometry(r) == ((4, 4), (1.0, 1.0), (0.5, 0.5))
        r = rf(nn.Sequential(nn.Conv2d(3, 3, (2, 5), padding="same", dilation=2)), "0", size)
        assert geometry(r) == ((3, 9), (1.0, 1.0), (0.0, 0.0))


def test_recurrence_along_a_row() -> None:
    r = rf(nn.Sequential(conv(3, p=1), RowRNN(3, bidirectional=False)), "1", (12, 8))
    assert r.unit_box(5, 0) == (4.0, -1.0, 6.0, 1.0)
    assert r.unit_box(5, 6) == (4.0, -1.0, 6.0, 7.0)


def test_pooling_over_flattened_tokens_within_rows() -> None:
    class SequenceReduction(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            return F.avg_pool1d(x.flatten(2), 4).reshape(b, c, h, w // 4)

    r = rf(nn.Sequential(conv(3, p=1), SequenceReduction()), "1", (8, 16))
    assert geometry(r) == ((3, 6), (1.0, 4.0), (0.0, 1.5))
