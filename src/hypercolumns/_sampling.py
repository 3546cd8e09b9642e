"""Bilinear resampling along one axis at a time, written straight into a caller's tensor.

Output index ``q`` along an axis samples the input at unit coordinate ``u = a*q + b``, clamped to
``[0, n - 1]``, linear between the two neighbouring units. ``a`` and ``b`` are exact fractions,
so when ``a = num/den`` the output indices ``q, q + den, q + 2 den, ...`` read the input units
``i, i + num, i + 2 num, ...`` with one common weight: each of these ``den`` *phases* is a single
``torch.lerp`` over strided views with ``out=`` a strided view of the result. No index tensors,
no temporaries of the output's size, every output element written once. Clamped borders are
broadcast copies; a stride whose period is too long falls back to gathering the two neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

__all__ = ["AxisMap", "resample_axis", "sample_points"]

_MAX_PHASES = 64
_MATMUL_UNITS = 64


@dataclass(frozen=True)
class AxisMap:
    """Output index ``q`` reads the input at unit coordinate ``a*q + b`` (``a > 0``)."""

    a: Fraction
    b: Fraction

    @classmethod
    def rf(cls, center: Fraction, stride: Fraction, extent: int, size: int) -> AxisMap:
        """A layer of geometry ``(center, stride)`` seen from ``size`` output pixels spanning an
        input axis of ``extent`` pixels: pixel ``q`` is at ``p = (q + 1/2) extent/size - 1/2``
        and samples unit ``(p - center) / stride``."""
        scale = Fraction(extent, size)
        return cls(scale / stride, (scale / 2 - Fraction(1, 2) - center) / stride)

    @classmethod
    def half_pixel(cls, units: int, size: int) -> AxisMap:
        """``F.interpolate(mode="bilinear", align_corners=False)`` from ``units`` to ``size``."""
        a = Fraction(units, size)
        return cls(a, a / 2 - Fraction(1, 2))

    def is_identity(self, units: int, size: int) -> bool:
        return self.a == 1 and self.b == 0 and units == size


def _index(dim: int, index: slice) -> tuple[slice, ...]:
    return (slice(None),) * dim + (index,)


def resample_axis(src: torch.Tensor, dim: int, amap: AxisMap, out: torch.Tensor) -> None:
    """Write ``src`` resampled along ``dim`` by ``amap`` into ``out`` (same shape but ``dim``).

    ``out`` may be any strided view of the same dtype; it is written, never reallocated.
    """
    n, size = src.shape[dim], out.shape[dim]
    a, b = amap.a, amap.b
    if n == 1:
        out.copy_(src)
        return
    # q < lo: u <= 0 (unit 0); q >= hi: u >= n - 1 (last unit); between: 0 < u < n - 1.
    lo = min(size, max(0, math.floor(-b / a) + 1))
    hi = min(size, max(lo, math.ceil((n - 1 - b) / a)))
    if lo:
        out.narrow(dim, 0, lo).copy_(src.narrow(dim, 0, 1))
    if hi < size:
        out.narrow(dim, hi, size - hi).copy_(src.narrow(dim, n - 1, 1))
    if hi == lo:
        return
    period, step = a.denominator, a.numerator
    if period > _MAX_PHASES:
        _gather_axis(src, dim, amap, out, lo, hi)
        return
    for phase in range(min(period, hi - lo)):
        q0 = lo + phase
        count = (hi - q0 + period - 1) // period
        u = a * q0 + b
        i0 = math.floor(u)
        t = u - i0
        span = step * (count - 1) + 1
        target = out[_index(dim, slice(q0, q0 + period * (count - 1) + 1, period))]
        first = src[_index(dim, slice(i0, i0 + span, step))]
        if t == 0:
            target.copy_(first)
        else:
            second = src[_index(dim, slice(i0 + 1, i0 + 1 + span, step))]
            torch.lerp(first, second, float(t), out=target)


def _gather_axis(
    src: torch.Tensor, dim: int, amap: AxisMap, out: torch.Tensor, lo: int, hi: int
) -> None:
    q = torch.arange(lo, hi, dtype=torch.float64, device=src.device)
    u = q * float(amap.a) + float(amap.b)
    i0 = u.floor().clamp(0, src.shape[dim] - 2)
    shape = [1] * src.dim()
    shape[dim] = hi - lo
    t = (u - i0).to(src.dtype).view(shape)
    index = i0.long()
    torch.lerp(
        src.index_select(dim, index),
        src.index_select(dim, index + 1),
        t,
        out=out.narrow(dim, lo, hi - lo),
    )


def sample_points(
    fmap: torch.Tensor, uy: torch.Tensor, ux: torch.Tensor, out: torch.Tensor
) -> None:
    """Write bilinear samples of ``fmap`` ``(B, C, h, w)`` at unit coordinates ``uy``, ``ux``
    ``(B, N)`` (clamped to the map) into ``out`` ``(B, N, C)``, any strided view.

    Per image, one ``index_select`` fetches the four neighbours of every point and three lerps
    combine them. Maps with fewer units than points are first made channels-last, so that each
    neighbour is one contiguous row and the lerps write ``out`` directly; larger maps are
    gathered along each channel's contiguous row instead, and transposed into ``out``. Tiny
    maps (deep layers: few units, many channels) are one matrix product with the ``(N, h*w)``
    bilinear weights instead, which never materialises the four neighbours of every point.
    """
    bsz, channels, h, w = fmap.shape
    n = uy.shape[1]
    uy = uy.clamp(0, h - 1)
    ux = ux.clamp(0, w - 1)
    y0 = uy.floor().clamp(max=max(h - 2, 0))
    x0 = ux.floor().clamp(max=max(w - 2, 0))
    ty = (uy - y0).to(fmap.dtype)
    tx = (ux - x0).to(fmap.dtype)
    down, right = (w if h > 1 else 0), (1 if w > 1 else 0)
    base = y0.long() * w + x0.long()
    index = torch.cat((base, base + right, base + down, base + down + right), dim=1)
    if h * w <= _MATMUL_UNITS:
        weights = torch.stack(((1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx), 1)
        rows = torch.arange(n, device=fmap.device).repeat(4) * (h * w)
        for b in range(bsz):
            dense = fmap.new_zeros(n, h * w)
            dense.view(-1).index_put_((rows + index[b],), weights[b].reshape(-1), accumulate=True)
            torch.mm(dense, fmap[b].reshape(channels, h * w).T, out=out[b])
        return
    channels_last = h * w <= 4 * n
    for b in range(bsz):
        flat = fmap[b].reshape(channels, h * w)
        if channels_last:
            near = flat.T.contiguous().index_select(0, index[b]).view(4, n, channels)
            wy, wx = ty[b, :, None], tx[b, :, None]
            top = torch.lerp(near[0], near[1], wx)
            bottom = torch.lerp(near[2], near[3], wx)
            torch.lerp(top, bottom, wy, out=out[b])
        else:
            near = flat.index_select(1, index[b]).view(channels, 4, n)
            top = torch.lerp(near[:, 0], near[:, 1], tx[b])
            bottom = torch.lerp(near[:, 2], near[:, 3], tx[b])
            out[b].copy_(torch.lerp(top, bottom, ty[b]).T)
