"""Receptive-field arithmetic on single layers, checked against numbers computed by hand."""

from dataclasses import replace
from fractions import Fraction as Q

import pytest

from hypercolumns.rf import geometry as g
from hypercolumns.rf.geometry import IDENTITY, ReceptiveField


def summary(a: g.Axis) -> tuple[int, Q, Q, bool]:
    return a.size, a.stride, a.center, a.uniform


def test_conv_follows_the_textbook_recurrence() -> None:
    a = g.conv(IDENTITY, 3, 1, 1)  # r = 3, S = 1, c0 = 0
    assert summary(a) == (3, 1, 0, True)
    a = g.conv(a, 2, 2, 0)  # pool: r = 3 + 1*1, S = 2, c0 = 0 + (1/2 - 0)*1
    assert summary(a) == (4, 2, Q(1, 2), True)
    a = g.conv(a, 3, 1, 2, dilation=2)  # k' = 5: r = 4 + 4*2, c0 = 1/2 + (2 - 2)*2
    assert summary(a) == (12, 2, Q(1, 2), True)


def test_vgg16_stack_gives_212_32_15_5() -> None:
    a = IDENTITY
    for block in (2, 2, 3, 3, 3):
        for _ in range(block):
            a = g.conv(a, 3, 1, 1)
        a = g.conv(a, 2, 2)
    assert summary(a) == (212, 32, Q(31, 2), True)


def test_edges_are_exact_for_every_unit() -> None:
    a = g.conv(g.conv(IDENTITY, 7, 2, 3), 3, 2, 1)  # resnet stem
    assert summary(a) == (11, 4, 0, True)
    assert a.edges(0) == (-5, 5)
    assert a.edges(3) == (7, 17)


def test_transposed_conv_kernel_3_stride_2_is_not_uniform() -> None:
    # Output o reads input (o + p - t) / 2 for t in 0..2 where integral (p = 1).
    a = g.transposed_conv(IDENTITY, 3, 2, 1)
    assert a.stride == Q(1, 2)
    assert a.center == 0  # mean tap position (0 + 1 - 1) / 2
    assert a.size == 2
    assert not a.uniform
    assert [a.edges(o) for o in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]


def test_transposed_conv_kernel_4_stride_2() -> None:
    a = g.transposed_conv(IDENTITY, 4, 2, 1)
    assert (a.stride, a.center, a.size) == (Q(1, 2), Q(-1, 4), 2)
    assert [a.edges(o) for o in range(3)] == [(-1, 0), (0, 1), (0, 1)]
    assert not a.uniform


def test_transposed_conv_stride_1_is_a_convolution() -> None:
    assert g.transposed_conv(IDENTITY, 3, 1, 1) == g.conv(IDENTITY, 3, 1, 1)


@pytest.mark.parametrize(
    ("mode", "align", "center", "size", "edges"),
    [
        ("nearest", False, Q(-1, 4), 1, [(0, 0), (0, 0), (1, 1), (1, 1)]),
        ("nearest-exact", False, Q(-1, 4), 1, [(0, 0), (0, 0), (1, 1), (1, 1)]),
        ("linear", False, Q(-1, 4), 2, [(-1, 0), (0, 1), (0, 1), (1, 2)]),
        ("linear", True, Q(0), 2, [(0, 0), (0, 1), (1, 1), (1, 2)]),
        ("cubic", False, Q(-1, 4), 4, [(-2, 1), (-1, 2), (-1, 2), (0, 3)]),
    ],
)
def test_upsampling_by_two(
    mode: str, align: bool, center: Q, size: int, edges: list[tuple[int, int]]
) -> None:
    a = g.interpolate(IDENTITY, mode, Q(1, 2), align_corners=align)
    assert (a.stride, a.center, a.size) == (Q(1, 2), center, size)
    assert [a.edges(j) for j in range(4)] == edges
    assert not a.uniform


def test_downsampling_by_interpolation() -> None:
    a = g.interpolate(IDENTITY, "linear", Q(2))  # src = 2j + 1/2: taps 2j, 2j+1
    assert summary(a) == (2, 2, Q(1, 2), True)
    a = g.interpolate(IDENTITY, "nearest", Q(2))  # copies pixel 2j
    assert summary(a) == (1, 2, 0, True)


def test_pixel_shuffle_and_unshuffle() -> None:
    assert summary(g.pixel_shuffle(IDENTITY, 2, inverse=True)) == (2, 2, Q(1, 2), True)
    a = g.pixel_shuffle(IDENTITY, 2)
    assert (a.stride, a.center, a.size, a.uniform) == (Q(1, 2), Q(-1, 4), 1, False)


def test_adaptive_pool_that_divides_is_a_pool() -> None:
    assert g.adaptive_pool(IDENTITY, 8, 4) == g.conv(IDENTITY, 2, 2)


def test_adaptive_pool_with_overlapping_bins() -> None:
    a = g.adaptive_pool(IDENTITY, 7, 3)  # bins [0,3), [2,5), [4,7)
    assert [a.edges(j) for j in range(3)] == [(0, 2), (2, 4), (4, 6)]
    assert a.size == 3
    assert a.stride == Q(7, 3)
    assert not a.uniform


def test_cropping_and_slicing() -> None:
    assert summary(g.shift(IDENTITY, 2)) == (1, 1, 2, True)
    assert summary(g.take(g.conv(IDENTITY, 3), 1, 2)) == (3, 2, 2, True)


def test_union_of_aligned_paths_is_exact() -> None:
    a = g.union([g.conv(IDENTITY, 3, 1, 1), g.conv(IDENTITY, 5, 1, 2)], units=8)
    assert summary(a) == (5, 1, 0, True)
    assert a.aligned


@pytest.mark.parametrize(
    "paths",
    [
        [g.conv(IDENTITY, 3, 1, 1), g.conv(IDENTITY, 7, 1, 3), g.conv(IDENTITY, 5, 1, 2)],
        [g.conv(g.conv(IDENTITY, 2, 2), 3, 1, 1), g.conv(IDENTITY, 2, 2)],  # stride 2, centre 1/2
        [replace(g.conv(IDENTITY, 3, 1, 1), aligned=False), IDENTITY],  # misaligned upstream
        [g.transposed_conv(IDENTITY, 3, 2, 1), g.transposed_conv(IDENTITY, 3, 2, 1)],  # period 2
    ],
)
def test_union_of_aligned_paths_is_the_union_of_each_units_extents(paths: list[g.Axis]) -> None:
    u = g.union(paths, units=6)
    for j in range(6):
        assert u.edges(j) == (min(a.edges(j)[0] for a in paths), max(a.edges(j)[1] for a in paths))
    assert (u.stride, u.center) == (paths[0].stride, paths[0].center)
    assert u.aligned == all(a.aligned for a in paths)


def test_union_of_misaligned_paths_covers_both_and_is_flagged() -> None:
    a3 = g.conv(IDENTITY, 3)  # centre 1
    a2 = g.conv(IDENTITY, 2)  # centre 1/2
    u = g.union([a3, a2], units=5)
    assert not u.aligned
    for j in range(5):
        lo, hi = u.edges(j)
        assert lo <= min(a3.edges(j)[0], a2.edges(j)[0])
        assert hi >= max(a3.edges(j)[1], a2.edges(j)[1])
    assert u.size == 3


def test_composition_after_nonuniform_layer_stays_exact() -> None:
    # U-Net decoder: transposed k=2 s=2 then a 3x3 conv. Output j reads upsampled j-1..j+1,
    # which copy input units floor((j-1)/2)..floor((j+1)/2): always two input pixels.
    a = g.conv(g.transposed_conv(IDENTITY, 2, 2), 3, 1, 1)
    assert [a.edges(j) for j in range(4)] == [(-1, 0), (0, 1), (0, 1), (1, 2)]
    assert (a.size, a.stride, a.center) == (2, Q(1, 2), Q(-1, 4))


def test_receptive_field_value_type() -> None:
    a = g.conv(g.conv(IDENTITY, 7, 2, 3), 3, 2, 1)
    rf = ReceptiveField.from_axes(a, g.conv(IDENTITY, 3, 2))
    assert rf.size == (11, 3)
    assert rf.stride == (4.0, 2.0)
    assert rf.center == (0.0, 1.0)
    assert rf.unit_center(1, 2) == (4.0, 5.0)
    assert rf.unit_box(1, 2) == (-1.0, 4.0, 9.0, 6.0)
    assert rf.to_units(8.0, 5.0) == (2.0, 2.0)
    assert rf.padding == (5.0, 0.0)
    whole = ReceptiveField.whole(224, 320)
    assert whole.is_global
    assert whole.size == (224, 320)
    assert whole.center == (111.5, 159.5)


def test_cover_adds_the_matched_window_and_keeps_positions() -> None:
    window = g.conv(g.IDENTITY, 3, 2, 1)  # windows of 3 units every 2, padded by 1
    covered = g.cover(g.IDENTITY, window, 2)  # unit j also reads window j // 2
    assert [covered.edges(j) for j in range(4)] == [(-1, 1), (-1, 1), (1, 3), (1, 3)]
    assert (covered.stride, covered.center) == (1, 0)
    assert not covered.uniform
    with pytest.raises(ValueError, match="stride"):
        g.cover(g.IDENTITY, window, 3)
