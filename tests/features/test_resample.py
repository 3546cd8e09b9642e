"""Planned bilinear resampling against direct per-output arithmetic and ``F.grid_sample``."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from hypercolumns.features._resample import AxisMap, AxisPlan, resample, sample_points


def direct(src: torch.Tensor, dim: int, amap: AxisMap, size: int) -> torch.Tensor:
    """Each output on its own: clamp ``u = a*q + b``, mix the two units around it."""
    n = src.shape[dim]
    u = (torch.arange(size, dtype=torch.float64) * float(amap.a) + float(amap.b)).clamp(0, n - 1)
    left = u.floor().clamp(max=max(n - 2, 0)).long()
    right = (left + 1).clamp(max=n - 1)
    shape = [1] * src.dim()
    shape[dim] = size
    t = (u - left).view(shape)
    return src.index_select(dim, left) * (1 - t) + src.index_select(dim, right) * t


def random_map(rng: random.Random, units: int, size: int) -> AxisMap:
    if rng.random() < 0.3:
        return AxisMap.half_pixel(units, size)
    center = Fraction(rng.randint(-8, 16), rng.choice([1, 2, 4]))
    stride = Fraction(rng.randint(1, 33), rng.choice([1, 1, 2, 3]))
    return AxisMap.rf(center, stride, rng.choice([size, rng.randint(1, 300)]), size)


@pytest.mark.parametrize("dim", [1, 2])
def test_axis_plan_equals_direct_arithmetic(dim: int) -> None:
    """Along the last dimension: matrix product (short axes) or gather (long ones); along
    another: runs of strided lerps. Up- and downsampling, clamped borders, any offset."""
    rng = random.Random(dim)
    for _ in range(150):
        units = rng.choice([1, 2, rng.randint(1, 20), rng.randint(60, 130)])
        size = rng.randint(1, 300)
        amap = random_map(rng, units, size)
        src = torch.randn(2, units, 3, dtype=torch.float64)
        if dim == 2:
            src = src.transpose(1, 2).contiguous()
        shape = list(src.shape)
        shape[dim] = size
        out = torch.full(shape, float("nan"), dtype=torch.float64)
        AxisPlan(amap, units, size).apply(src, dim, out)
        torch.testing.assert_close(out, direct(src, dim, amap, size), rtol=0, atol=1e-12)


def test_axis_plan_paths() -> None:
    upsample = AxisPlan(AxisMap.rf(Fraction(0), Fraction(32), 224, 224), 7, 224)
    assert (upsample.lo, upsample.hi, len(upsample.runs)) == (0, 192, 1)  # one lerp
    run = upsample.runs[0]
    assert (run.blocks, run.period, run.weights[:2]) == (6, 32, [0.0, 1 / 32])
    half = AxisPlan(AxisMap.half_pixel(7, 224), 7, 224)
    assert (half.lo, half.hi, len(half.runs)) == (16, 208, 1)
    assert AxisPlan(AxisMap(Fraction(1), Fraction(0)), 9, 9).identity
    many = AxisPlan(AxisMap(Fraction(65, 67), Fraction(1, 3)), 200, 150)
    assert len(many.runs) > 64  # gathered instead
    src = torch.randn(3, 200, 2, dtype=torch.float64)
    out = torch.empty(3, 150, 2, dtype=torch.float64)
    many.apply(src, 1, out)
    torch.testing.assert_close(out, direct(src, 1, many.amap, 150), rtol=0, atol=1e-12)


def test_axis_plan_writes_into_a_strided_view() -> None:
    plan = AxisPlan(AxisMap.half_pixel(5, 12), 5, 12)
    src = torch.randn(4, 5, 6, dtype=torch.float64)
    big = torch.zeros(4, 12, 20, dtype=torch.float64)
    plan.apply(src, 1, big[:, :, 3:15:2])
    torch.testing.assert_close(big[:, :, 3:15:2], direct(src, 1, plan.amap, 12))
    assert big[:, :, 4:15:2].abs().sum() == 0  # nothing else written
    assert big[:, :, :3].abs().sum() == 0


@pytest.mark.parametrize("size", [(24, 40), (7, 130), (90, 5), (3, 3)])
def test_resample_equals_interpolate(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    src = torch.randn(2, 5, 9, 70, dtype=torch.float64)
    rows = AxisPlan(AxisMap.half_pixel(9, size[0]), 9, size[0])
    cols = AxisPlan(AxisMap.half_pixel(70, size[1]), 70, size[1])
    out = torch.empty(2, 8, *size, dtype=torch.float64)
    resample(src, rows, cols, out[:, 2:7])  # a channel slice of a bigger output
    ref = F.interpolate(src, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 2:7], ref, rtol=0, atol=1e-12)


def test_sample_points_equals_grid_sample() -> None:
    """Bilinear samples at unit coordinates, clamped: ``grid_sample`` with corners aligned to
    unit centres and border padding computes the same thing another way. Small maps are a
    channels-last table, large ones (more than 4 units per point) gathered per channel."""
    torch.manual_seed(0)
    for h, w in [(1, 1), (1, 6), (5, 1), (7, 9), (12, 12), (30, 31), (1, 200)]:
        fmap = torch.randn(2, 6, h, w, dtype=torch.float64)
        uy = torch.rand(2, 40, dtype=torch.float64) * (h + 3) - 1.5
        ux = torch.rand(2, 40, dtype=torch.float64) * (w + 3) - 1.5
        out = torch.full((2, 40, 10), float("nan"), dtype=torch.float64)
        sample_points(fmap, uy, ux, out[..., 2:8])
        gy = 2 * uy / max(h - 1, 1) - 1
        gx = 2 * ux / max(w - 1, 1) - 1
        grid = torch.stack((gx, gy), -1)[:, :, None]  # (B, N, 1, 2) as (x, y)
        ref = F.grid_sample(fmap, grid, align_corners=True, padding_mode="border")[..., 0]
        torch.testing.assert_close(out[..., 2:8], ref.transpose(1, 2), rtol=0, atol=1e-12)
        assert out[..., :2].isnan().all()
        assert out[..., 8:].isnan().all()


def test_sample_points_of_a_channels_last_map_equal_those_of_a_contiguous_one() -> None:
    """Large maps laid out channels-last (as sparse hypercolumns run the model on a CPU) are
    sampled row by row, small ones through the table; both give the plain layout's values."""
    torch.manual_seed(0)
    for h, w in [(3, 4), (30, 31), (64, 70)]:
        fmap = torch.randn(2, 6, h, w)
        uy, ux = torch.rand(2, 40) * (h + 1) - 0.5, torch.rand(2, 40) * (w + 1) - 0.5
        plain, rows = torch.empty(2, 40, 6), torch.empty(2, 40, 6)
        sample_points(fmap, uy, ux, plain)
        sample_points(fmap.contiguous(memory_format=torch.channels_last), uy, ux, rows)
        assert torch.equal(rows, plain)


def test_sample_points_in_float16() -> None:
    torch.manual_seed(0)
    fmap = torch.randn(1, 4, 6, 6)
    uy, ux = torch.rand(1, 30) * 5, torch.rand(1, 30) * 5
    full = torch.empty(1, 30, 4)
    half = torch.empty(1, 30, 4, dtype=torch.float16)
    sample_points(fmap, uy.double(), ux.double(), full)
    sample_points(fmap.half(), uy.double(), ux.double(), half)
    torch.testing.assert_close(half.float(), full, rtol=1e-2, atol=1e-2)
