"""Bilinear resampling, planned once per geometry and written straight into a caller's tensor.

Dense: output index ``q`` along an axis samples the input at unit coordinate ``u = a*q + b``,
clamped to ``[0, n - 1]``, linear between the two neighbouring units. ``a`` and ``b`` are exact
fractions, so when ``a = step/period`` the output indices ``q, q + period, q + 2 period, ...``
read the units ``i, i + step, i + 2 step, ...`` with one common weight. An :class:`AxisPlan`
groups the ``period`` phases of a block into *runs*, consecutive phases that read the same pair
of units. Along any dimension but the last, a run is one ``addcmul`` of strided views of the
input and of its differences with the run's weights broadcast, written with ``out=`` into a
strided view of the result: upsampling by any ratio is one run for all the blocks plus a
lead-in and a remainder, every output element is written once and in memory order, with no
index tensors or temporaries of the output's size. Along the last (contiguous) dimension,
where runs would be a few elements wide, a short axis is one matrix product with the bilinear
weights and otherwise each phase is one op, vectorised along the blocks. Clamped borders are
broadcast copies; a ratio with too many runs gathers the two neighbours instead. Everything is
computed in the input's dtype and rounded once into ``out``, which may be narrower.

Two axes (:func:`resample`) go through a small scratch buffer, a slice of channels at a time so
that it stays in cache: first the axis that leaves the smaller intermediate, then the other,
into the output.

Sparse (:func:`sample_points`): each point's four neighbours and bilinear weights. A map with
few units per point is copied channels-last once and becomes the table of one
``embedding_bag``, which sums the weighted rows without materialising the neighbours; a large
map is gathered per channel instead, without a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

__all__ = ["AxisMap", "AxisPlan", "PointPlan", "resample", "sample_points"]

_MAX_RUNS = 64
_MATMUL_UNITS = 64
_SCRATCH_BYTES = 1 << 20
_POINT_ROWS_BYTES = 1 << 20


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


@dataclass
class _Run:
    """Outputs ``start + k*period + offset + p`` (``k < blocks``, ``p < len(weights)``) are
    units ``unit + k*step`` and ``unit + k*step + 1`` mixed with weight ``weights[p]``."""

    start: int
    blocks: int
    period: int
    offset: int
    unit: int
    weights: list[float]


def _index(dim: int, index: slice) -> tuple[slice, ...]:
    return (slice(None),) * dim + (index,)


class AxisPlan:
    """How ``units`` input units along one axis become ``size`` outputs under ``amap``.

    Planned once per layer geometry; :meth:`apply` then writes any number of batches. Along a
    tensor's last (contiguous) dimension short axes are one matrix product with the ``(units,
    size)`` bilinear weights and long ones a gather of the two neighbours; along any other
    dimension, runs of strided ``lerp``.

    Attributes:
        units: Input length along the axis.
        size: Output length along the axis.
        identity: Output ``q`` is exactly unit ``q``.
    """

    def __init__(self, amap: AxisMap, units: int, size: int) -> None:
        self.amap, self.units, self.size = amap, units, size
        a, b = amap.a, amap.b
        self.identity = a == 1 and b == 0 and units == size
        # q < lo: u < 0 (unit 0); q >= hi: u >= n - 1 (last unit); between: 0 <= u < n - 1.
        if units == 1:
            self.lo = self.hi = size
        else:
            self.lo = min(size, max(0, math.ceil(-b / a)))
            self.hi = min(size, max(self.lo, math.ceil((units - 1 - b) / a)))
        self.period, self.step = a.denominator, a.numerator
        period = self.period
        # Blocks of `period` outputs begin where the unit on the left changes (or a whole period
        # before), so that upsampling is one run for all the blocks, plus a short lead-in and
        # what is left at the end.
        self.runs: list[_Run] = []
        change = min(self.hi, math.ceil((math.ceil(a * self.lo + b) - b) / a))
        start = change - (change - self.lo) // period * period
        if start > self.lo:
            self.runs += self._runs(self.lo, 1, start - self.lo)
        blocks = (self.hi - start) // period
        if blocks:
            self.runs += self._runs(start, blocks, period)
        start += blocks * period
        if start < self.hi:
            self.runs += self._runs(start, 1, self.hi - start)
        self._cache: dict[tuple[str, torch.dtype, torch.device], list[torch.Tensor]] = {}

    def _runs(self, start: int, blocks: int, period: int) -> list[_Run]:
        """The runs of ``blocks`` blocks of ``period`` outputs from ``start``."""
        a, b = self.amap.a, self.amap.b
        runs: list[_Run] = []
        for p in range(period):
            u = a * (start + p) + b
            unit = math.floor(u)
            if runs and runs[-1].unit == unit:
                runs[-1].weights.append(float(u - unit))
            else:
                runs.append(_Run(start, blocks, period, p, unit, [float(u - unit)]))
        return runs

    def _coordinates(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left unit ``(hi - lo,)`` long and weight of the right one, float64, of ``lo..hi``."""
        u = torch.arange(lo, hi, dtype=torch.float64) * float(self.amap.a) + float(self.amap.b)
        u = u.clamp(0, self.units - 1)
        left = u.floor().clamp(max=max(self.units - 2, 0))
        return left.long(), u - left

    def _matrix(self) -> list[torch.Tensor]:
        """``(units, size)``: output ``q`` is column ``q`` of weights times the units."""
        left, t = self._coordinates(0, self.size)
        matrix = torch.zeros(self.units, self.size, dtype=torch.float64)
        q = torch.arange(self.size)
        matrix.index_put_((left, q), 1 - t, accumulate=True)
        matrix.index_put_((left + 1, q), t, accumulate=True)
        return [matrix]

    def _gather(self) -> list[torch.Tensor]:
        return list(self._coordinates(self.lo, self.hi))

    def _weights(self) -> list[torch.Tensor]:
        return [torch.tensor(run.weights, dtype=torch.float64) for run in self.runs]

    def _cached(
        self, make: Callable[[], list[torch.Tensor]], like: torch.Tensor
    ) -> list[torch.Tensor]:
        """The constants ``make`` gives, on ``like``'s device in its dtype (indices stay long),
        made once per dtype and device."""
        key = (make.__name__, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = [
                t.to(like.device) if t.dtype == torch.long else t.to(like) for t in make()
            ]
        return self._cache[key]

    def apply(self, src: torch.Tensor, dim: int, out: torch.Tensor) -> None:
        """Write ``src`` resampled along ``dim`` into ``out`` (same shape but ``dim``).

        ``out`` may be any strided view, of ``src``'s dtype or a lower-precision one (computed
        in ``src``'s dtype, rounded once when written); it is written, never reallocated.
        """
        n, size, lo, hi = self.units, self.size, self.lo, self.hi
        if self.identity:
            out.copy_(src)
            return
        last = dim == src.dim() - 1
        if (
            last
            and 1 < n <= _MATMUL_UNITS
            and self.period > 2
            and out.is_contiguous()
            and out.dtype == src.dtype
        ):
            (matrix,) = self._cached(self._matrix, src)
            torch.mm(src.reshape(-1, n), matrix, out=out.view(-1, size))
            return
        if lo:
            out.narrow(dim, 0, lo).copy_(src.narrow(dim, 0, 1))
        if hi < size:
            out.narrow(dim, hi, size - hi).copy_(src.narrow(dim, n - 1, 1))
        if hi == lo:
            return
        # left + weight * (right - left): unlike lerp, addcmul rounds into a narrower out
        diff = torch.diff(src, dim=dim)
        ops = sum(len(run.weights) for run in self.runs) if last else len(self.runs)
        if ops > _MAX_RUNS:
            left_units, t = self._cached(self._gather, src)
            shape = [1] * src.dim()
            shape[dim] = hi - lo
            torch.addcmul(
                src.index_select(dim, left_units),
                diff.index_select(dim, left_units),
                t.view(shape),
                out=out.narrow(dim, lo, hi - lo),
            )
            return
        for run, weights in zip(self.runs, self._cached(self._weights, src), strict=True):
            blocks = out.narrow(dim, run.start, run.blocks * run.period)
            target = blocks.view(
                *blocks.shape[:dim], run.blocks, run.period, *blocks.shape[dim + 1 :]
            ).narrow(dim + 1, run.offset, len(run.weights))
            span = _index(
                dim, slice(run.unit, run.unit + self.step * (run.blocks - 1) + 1, self.step)
            )
            left, rise = src[span], diff[span]
            if last:  # one op per phase: vectorised along the blocks, not the few phases
                for p, weight in enumerate(run.weights):
                    torch.add(left, rise, alpha=weight, out=target.select(dim + 1, p))
            elif not any(run.weights):
                target.copy_(left.unsqueeze(dim + 1))
            else:
                shape = [1] * target.dim()
                shape[dim + 1] = len(run.weights)
                torch.addcmul(
                    left.unsqueeze(dim + 1),
                    rise.unsqueeze(dim + 1),
                    weights.view(shape),
                    out=target,
                )


def resample(src: torch.Tensor, rows: AxisPlan, cols: AxisPlan, out: torch.Tensor) -> None:
    """Write the maps ``src`` ``(B, C, h, w)`` resampled by ``rows`` and ``cols`` into ``out``
    ``(B, C, H, W)``, any strided view of the same dtype."""
    if cols.identity:
        rows.apply(src, 2, out)
        return
    if rows.identity:
        for b in range(src.shape[0]):
            cols.apply(src[b], 2, out[b])
        return
    bsz, channels, h, w = src.shape
    height, width = out.shape[-2:]
    # the axis that leaves the smaller intermediate first, through a scratch that stays in cache
    if h * width <= height * w:
        first, first_dim, second, second_dim, inner = cols, 2, rows, 1, (h, width)
    else:
        first, first_dim, second, second_dim, inner = rows, 1, cols, 2, (height, w)
    chunk = max(1, min(channels, _SCRATCH_BYTES // (math.prod(inner) * src.element_size())))
    scratch = src.new_empty(chunk, *inner)
    for b in range(bsz):
        for c in range(0, channels, chunk):
            part = scratch[: min(chunk, channels - c)]
            first.apply(src[b, c : c + len(part)], first_dim, part)
            second.apply(part, second_dim, out[b, c : c + len(part)])


class PointPlan:
    """Where points at unit coordinates ``uy``, ``ux`` ``(B, N)`` fall on ``(h, w)`` maps: the
    four neighbours of each point (clamped to the map) and their bilinear weights, computed
    once for every map of that size and dtype sampled at those points.

    A map with few units per point is copied channels-last and becomes the table of an
    ``embedding_bag`` that sums each point's four weighted neighbours straight from its rows,
    a slice of points at a time. A larger map is not copied: each image's four neighbours are
    gathered along every channel's row instead, or, from a channels-last map, as its rows.

    Attributes:
        key: ``(B, N, h, w, dtype)`` of the maps and points the plan is for.
    """

    def __init__(
        self, uy: torch.Tensor, ux: torch.Tensor, h: int, w: int, dtype: torch.dtype
    ) -> None:
        bsz, n = uy.shape
        self.key = (bsz, n, h, w, dtype)
        uy = uy.clamp(0, h - 1)
        ux = ux.clamp(0, w - 1)
        y0 = uy.floor().clamp(max=max(h - 2, 0))
        x0 = ux.floor().clamp(max=max(w - 2, 0))
        ty, tx = uy - y0, ux - x0
        down, right = (w if h > 1 else 0), (1 if w > 1 else 0)
        base = y0.long() * w + x0.long()
        self.gather = h * w > 4 * n
        if self.gather:  # per image: (4 * N,) flat units, and the weights along x and y
            # in raster order, so that each channel's row is read front to back (random reads
            # across a large map miss the caches); written back in the points' order
            self.order = base.argsort(dim=1)
            base, tx, ty = (t.gather(1, self.order) for t in (base, tx, ty))
            corners = (base, base + right, base + down, base + down + right)
            self.index = torch.cat(corners, 1)
            self.weights = torch.stack((tx, ty), 1).to(dtype)
        else:  # rows (b, y, x) of the channels-last table, four per point
            base = base + torch.arange(bsz, device=base.device)[:, None] * (h * w)
            corners = (base, base + right, base + down, base + down + right)
            self.index = torch.stack(corners, -1).view(-1, 4)
            weights = ((1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx)
            self.weights = torch.stack(weights, -1).view(-1, 4).to(dtype)

    def sample(self, fmap: torch.Tensor, out: torch.Tensor) -> None:
        """Write the samples of ``fmap`` ``(B, C, h, w)`` into ``out`` ``(B, N, C)``: a slice of
        the channels of a contiguous tensor, of ``fmap``'s dtype or a narrower one."""
        bsz, channels, h, w = fmap.shape
        n = self.key[1]
        if self.gather and _channels_last(fmap):
            self._sample_rows(fmap, out)
            return
        if self.gather:
            for b in range(bsz):
                flat = fmap[b].reshape(channels, h * w)
                near = flat.index_select(1, self.index[b]).view(channels, 4, n)
                wx, wy = self.weights[b]
                top = torch.lerp(near[:, 0], near[:, 1], wx)
                bottom = torch.lerp(near[:, 2], near[:, 3], wx)
                samples = torch.lerp(top, bottom, wy).T.to(out.dtype)
                out[b].index_copy_(0, self.order[b], samples)
            return
        table = fmap.permute(0, 2, 3, 1).contiguous().view(-1, channels)  # free if channels-last
        target = out.view(bsz * n, channels)
        rows = max(1, _POINT_ROWS_BYTES // (channels * fmap.element_size()))
        for r in range(0, bsz * n, rows):
            sums = F.embedding_bag(
                self.index[r : r + rows],
                table,
                per_sample_weights=self.weights[r : r + rows],
                mode="sum",
            )
            target[r : r + rows].copy_(sums)

    def _sample_rows(self, fmap: torch.Tensor, out: torch.Tensor) -> None:
        """:meth:`sample` of a channels-last ``fmap``: each neighbour is a row of channels."""
        bsz, channels, h, w = fmap.shape
        n = self.key[1]
        rows = fmap.permute(0, 2, 3, 1).view(bsz, h * w, channels)
        for b in range(bsz):
            near = rows[b].index_select(0, self.index[b]).view(4, n, channels)
            wx, wy = self.weights[b, :, :, None]
            top = torch.lerp(near[0], near[1], wx)
            bottom = torch.lerp(near[2], near[3], wx)
            out[b].index_copy_(0, self.order[b], torch.lerp(top, bottom, wy).to(out.dtype))


def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels-last (and not also plainly contiguous)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def sample_points(
    fmap: torch.Tensor, uy: torch.Tensor, ux: torch.Tensor, out: torch.Tensor
) -> None:
    """Write bilinear samples of ``fmap`` ``(B, C, h, w)`` at unit coordinates ``uy``, ``ux``
    ``(B, N)`` into ``out`` ``(B, N, C)``, as :class:`PointPlan` does."""
    h, w = fmap.shape[-2:]
    PointPlan(uy, ux, h, w, fmap.dtype).sample(fmap, out)
