"""Receptive-field arithmetic: the exact geometry of one spatial axis and how layers change it.

Coordinates follow the project's convention: input pixel ``i`` has its centre at ``i``. Along one
axis a feature map's unit ``j`` is centred at ``center + j * stride`` and its receptive field
covers the input pixels from ``center + j * stride + lo[j % period]`` to
``center + j * stride + hi[j % period]`` (both included, image borders ignored).

For ordinary layers the table has one entry and ``lo == -hi == (size - 1) / 2``. Layers with
fractional stride (transposed convolution, upsampling, pixel shuffle) or irregular bins
(adaptive pooling to a size that does not divide) give units whose extents differ with ``j``;
the table then lists one period of them, which is exact because the pattern repeats. All
numbers are :class:`fractions.Fraction` so composition never accumulates rounding.

Every layer kind reduces to :func:`resample`: for each output unit, the input units it reads
(``taps``) and its position in input-unit coordinates. Convolution, pooling, padding,
cropping, interpolation and pixel shuffle are thin wrappers around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "IDENTITY",
    "Axis",
    "ReceptiveField",
    "adaptive_pool",
    "conv",
    "cover",
    "interpolate",
    "pixel_shuffle",
    "resample",
    "shift",
    "take",
    "transposed_conv",
    "union",
]

Q = Fraction
_MAX_PERIOD = 4096


def as_fraction(value: float | int | Fraction) -> Fraction:
    """An exact fraction for ``value``; floats are read as the nearest simple fraction."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(value).limit_denominator(1 << 20)


@dataclass(frozen=True)
class Axis:
    """Exact receptive-field geometry of one spatial axis of a feature map.

    Attributes:
        stride: Input pixels between the centres of adjacent units (below 1 after upsampling).
        center: Input coordinate of the centre of unit 0.
        lo: Per unit of one period, offset of the first covered input pixel from the centre.
        hi: Per unit of one period, offset of the last covered input pixel from the centre.
        aligned: False once paths with different centres or strides were merged upstream.
        envelope: True when the table is a conservative bound (a pattern too long to list).
    """

    stride: Fraction
    center: Fraction
    lo: tuple[Fraction, ...]
    hi: tuple[Fraction, ...]
    aligned: bool = True
    envelope: bool = False

    @property
    def period(self) -> int:
        return len(self.lo)

    @property
    def size(self) -> int:
        """Largest receptive-field extent over units, in input pixels."""
        return int(max(h - lo for lo, h in zip(self.lo, self.hi, strict=True))) + 1

    @property
    def uniform(self) -> bool:
        """True when every unit covers exactly ``center + j*stride -/+ (size-1)/2``."""
        return not self.envelope and self.period == 1 and self.lo[0] == -self.hi[0]

    def edges(self, j: int) -> tuple[Fraction, Fraction]:
        """First and last input pixel covered by unit ``j`` (exact, borders ignored)."""
        mid = self.center + j * self.stride
        k = j % self.period
        return mid + self.lo[k], mid + self.hi[k]


IDENTITY = Axis(stride=Q(1), center=Q(0), lo=(Q(0),), hi=(Q(0),))


def _reduce_period(lo: list[Fraction], hi: list[Fraction]) -> tuple[list[Fraction], list[Fraction]]:
    n = len(lo)
    for d in range(1, n + 1):
        if n % d == 0 and all(lo[j] == lo[j % d] and hi[j] == hi[j % d] for j in range(n)):
            return lo[:d], hi[:d]
    return lo, hi  # pragma: no cover - d == n always matches


def _envelope(axis: Axis, center: Fraction, stride: Fraction, units: int) -> tuple[Q, Q]:
    """Smallest (lo, hi) around ``center + j*stride`` holding ``axis``'s units 0..units-1."""
    lows, highs = [], []
    for j in range(max(units, 1)):
        first, last = axis.edges(j)
        mid = center + j * stride
        lows.append(first - mid)
        highs.append(last - mid)
    return min(lows), max(highs)


def resample(
    axis: Axis,
    *,
    slope: Fraction,
    taps: Callable[[int], Iterable[int]],
    position: Callable[[int], Fraction],
    units: int = 1,
    cycle: int = 1,
) -> Axis:
    """Geometry of a layer whose output unit ``j`` reads input units ``taps(j)``.

    Args:
        axis: Geometry of the layer's input along this axis.
        slope: Output-to-input unit ratio: ``position(j + 1) - position(j)`` on average.
        taps: Input unit indices that output unit ``j`` reads (image borders ignored).
        position: Position of output unit ``j`` in input-unit coordinates; the output's
            centres are the least-squares affine fit ``slope * j + b`` of these positions.
        units: Output units along the axis, used only when the exact period would be too long.
        cycle: A period of ``taps`` beyond the one the slope implies (in output units), for
            layers whose pattern repeats per block (windows).

    Returns:
        The output geometry, exact whenever its period is at most a few thousand units.
    """
    if slope <= 0:
        raise ValueError(f"slope must be positive, got {slope}")
    m, n = slope.denominator, slope.numerator
    period = math.lcm(m * (axis.period // math.gcd(n, axis.period)), cycle)
    sampled = min(period, max(units, 1)) if period > _MAX_PERIOD else period
    offset = sum((position(j) - slope * j for j in range(sampled)), Q(0)) / sampled
    center = axis.center + axis.stride * offset
    stride = axis.stride * slope
    lo: list[Fraction] = []
    hi: list[Fraction] = []
    for j in range(sampled):
        edges = [axis.edges(i) for i in taps(j)]
        mid = center + j * stride
        if not edges:  # the unit reads no input (e.g. transposed kernel smaller than stride)
            lo.append(Q(0))
            hi.append(Q(-1))
            continue
        lo.append(min(e[0] for e in edges) - mid)
        hi.append(max(e[1] for e in edges) - mid)
    if sampled < period:  # too long to tabulate: a conservative envelope, never uniform
        return Axis(stride, center, (min(lo),), (max(hi),), axis.aligned, envelope=True)
    lo, hi = _reduce_period(lo, hi)
    return Axis(stride, center, tuple(lo), tuple(hi), axis.aligned, axis.envelope)


def conv(axis: Axis, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Axis:
    """Convolution or pooling: ``r + (k'-1)S``, ``sS``, ``c0 + ((k'-1)/2 - p)S``."""
    span = dilation * (kernel - 1)
    if axis.period == 1:  # closed form of the general rule below, for speed
        half = axis.stride * span / 2
        return Axis(
            axis.stride * stride,
            axis.center + (Q(span, 2) - padding) * axis.stride,
            (axis.lo[0] - half,),
            (axis.hi[0] + half,),
            axis.aligned,
            axis.envelope,
        )
    return resample(
        axis,
        slope=Q(stride),
        taps=lambda j: (j * stride - padding + t * dilation for t in range(kernel)),
        position=lambda j: Q(j * stride - padding) + Q(span, 2),
    )


def windowed_conv(
    axis: Axis,
    block: int,
    out_block: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Axis:
    """Convolution or pooling run separately on each block of ``block`` units (windows stacked
    in the batch), zero-padded at every block's border; each block gives ``out_block`` units."""
    span = dilation * (kernel - 1)

    def taps(u: int) -> Iterable[int]:
        o, j = divmod(u, out_block)
        starts = (j * stride - padding + t * dilation for t in range(kernel))
        return (o * block + q for q in starts if 0 <= q < block)

    def position(u: int) -> Fraction:
        o, j = divmod(u, out_block)
        return Q(o * block + j * stride - padding) + Q(span, 2)

    return resample(axis, slope=Q(block, out_block), taps=taps, position=position, cycle=out_block)


def scan(axis: Axis, units: int, direction: str) -> Axis:
    """A recurrence along the axis (an RNN over positions): unit ``j`` reads units ``0..j``
    (``"forward"``), ``j..units-1`` (``"reverse"``) or all of them (``"both"``)."""

    def taps(j: int) -> range:
        if direction == "forward":
            return range(j + 1)
        return range(j, units) if direction == "reverse" else range(units)

    return resample(axis, slope=Q(1), taps=taps, position=Q, units=units, cycle=units)


def transposed_conv(
    axis: Axis, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Axis:
    """Transposed convolution: output ``o`` reads input ``(o + p - t*d) / s`` where integral.

    Units are placed at the mean tap position ``(o + p - d(k-1)/2) / s``; ``output_padding``
    only adds units at the end and does not change the geometry.
    """

    def taps(o: int) -> list[int]:
        return [
            (o + padding - t * dilation) // stride
            for t in range(kernel)
            if (o + padding - t * dilation) % stride == 0
        ]

    return resample(
        axis,
        slope=Q(1, stride),
        taps=taps,
        position=lambda o: (o + padding - Q(dilation * (kernel - 1), 2)) / stride,
    )


def shift(axis: Axis, first: int) -> Axis:
    """Output unit ``j`` is input unit ``j + first`` (padding by ``-first``, or cropping)."""
    return take(axis, first, 1)


def take(axis: Axis, start: int, step: int) -> Axis:
    """Slicing ``[start::step]`` along the axis."""
    return resample(
        axis,
        slope=Q(step),
        taps=lambda j: (start + j * step,),
        position=lambda j: Q(start + j * step),
    )


def interpolate(
    axis: Axis,
    mode: str,
    scale: Fraction,
    *,
    align_corners: bool = False,
    units: int = 1,
) -> Axis:
    """Resizing by ``F.interpolate``: output unit ``j`` samples input position ``src(j)``.

    Args:
        axis: Input geometry.
        mode: ``"nearest"``, ``"nearest-exact"``, ``"linear"`` (any of linear, bilinear,
            trilinear) or ``"cubic"`` (bicubic).
        scale: Input units per output unit, as PyTorch computes it: ``1 / scale_factor`` when a
            scale factor is used, ``in / out`` otherwise, ``(in - 1)/(out - 1)`` with
            ``align_corners``.
        align_corners: PyTorch's ``align_corners``.
        units: Output size along the axis.
    """
    if mode in ("nearest", "nearest-exact"):
        half = Q(1, 2) if mode == "nearest-exact" else Q(0)

        def nearest(j: int) -> int:
            return math.floor((j + half) * scale)

        return resample(
            axis,
            slope=scale,
            taps=lambda j: (nearest(j),),
            position=lambda j: Q(nearest(j)),
            units=units,
        )
    if mode not in ("linear", "cubic"):
        raise ValueError(f"unsupported interpolation mode {mode!r}")

    def src(j: int) -> Fraction:
        return j * scale if align_corners else (j + Q(1, 2)) * scale - Q(1, 2)

    reach = (0, 1) if mode == "linear" else (-1, 0, 1, 2)

    def taps(j: int) -> Sequence[int]:
        p = src(j)
        base = math.floor(p)
        return (base,) if p == base else tuple(base + t for t in reach)

    return resample(axis, slope=scale, taps=taps, position=src, units=units)


def adaptive_pool(axis: Axis, size_in: int, size_out: int) -> Axis:
    """Adaptive pooling: output unit ``j`` pools ``floor(j n/o) .. ceil((j+1) n/o) - 1``."""

    def bounds(j: int) -> tuple[int, int]:
        return (j * size_in) // size_out, -((-(j + 1) * size_in) // size_out)

    return resample(
        axis,
        slope=Q(size_in, size_out),
        taps=lambda j: range(*bounds(j)),
        position=lambda j: Q(sum(bounds(j)) - 1, 2),
        units=size_out,
    )


def pixel_shuffle(axis: Axis, factor: int, *, inverse: bool = False) -> Axis:
    """``nn.PixelShuffle(factor)`` (units copied ``factor`` times) or its inverse (a k=s=r pool)."""
    if inverse:
        return conv(axis, factor, factor)
    return resample(
        axis, slope=Q(1, factor), taps=lambda j: (j // factor,), position=lambda j: Q(j // factor)
    )


def cover(axis: Axis, other: Axis, block: int = 1) -> Axis:
    """``axis`` with unit ``j`` also reading ``other``'s unit ``j // block``.

    Positions are ``axis``'s; each unit's extent becomes the union of its own and that of the
    ``other`` unit it is matched with (queries that attend to a window: the window's extent
    joins the query's). ``other`` must step ``block`` units of ``axis`` per unit.

    Raises:
        ValueError: ``other.stride`` is not ``block * axis.stride``, or the pattern of extents
            is too long to list exactly.
    """
    if other.stride != block * axis.stride:
        raise ValueError(f"stride {other.stride} is not {block} x {axis.stride}")
    period = math.lcm(axis.period, block * other.period)
    if period > _MAX_PERIOD:
        raise ValueError(f"a pattern of {period} units is too long to list")
    lo, hi = [], []
    for j in range(period):
        mid = axis.center + j * axis.stride
        (a0, a1), (b0, b1) = axis.edges(j), other.edges(j // block)
        lo.append(min(a0, b0) - mid)
        hi.append(max(a1, b1) - mid)
    lo, hi = _reduce_period(lo, hi)
    return Axis(
        axis.stride,
        axis.center,
        tuple(lo),
        tuple(hi),
        axis.aligned and other.aligned,
        axis.envelope or other.envelope,
    )


def union(axes: Sequence[Axis], units: int) -> Axis:
    """Units of paths that meet elementwise (add, multiply, concatenate): the union of extents.

    Paths with the same stride and centre give the exact per-unit union. Otherwise the paths
    are misaligned: the result is centred between them, covers every path's extent over the
    ``units`` units of the map, and is marked ``aligned=False``.
    """
    first = axes[0]
    if len(axes) == 1:
        return first
    same = all(a.stride == first.stride and a.center == first.center for a in axes)
    if same and all(a.period == 1 for a in axes):  # closed form of the rule below, for speed
        return Axis(
            first.stride,
            first.center,
            (min(a.lo[0] for a in axes),),
            (max(a.hi[0] for a in axes),),
            all(a.aligned for a in axes),
            any(a.envelope for a in axes),
        )
    aligned = same and all(a.aligned for a in axes)
    center = sum((a.center for a in axes), Q(0)) / len(axes)
    if all(a.stride == first.stride for a in axes):
        period = math.lcm(*(a.period for a in axes))
        if period <= _MAX_PERIOD:
            lo, hi = [], []
            for j in range(period):
                mid = center + j * first.stride
                edges = [a.edges(j) for a in axes]
                lo.append(min(e[0] for e in edges) - mid)
                hi.append(max(e[1] for e in edges) - mid)
            lo, hi = _reduce_period(lo, hi)
            envelope = any(a.envelope for a in axes)
            return Axis(first.stride, center, tuple(lo), tuple(hi), aligned, envelope)
    stride = sum((a.stride for a in axes), Q(0)) / len(axes)
    bounds = [_envelope(a, center, stride, units) for a in axes]
    lo_env, hi_env = min(b[0] for b in bounds), max(b[1] for b in bounds)
    return Axis(stride, center, (lo_env,), (hi_env,), aligned=False, envelope=True)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units, per axis as ``(y, x)`` pairs, in input pixels.

    Unit ``(i, j)`` is centred at ``(center[0] + i*stride[0], center[1] + j*stride[1])`` and,
    when ``uniform``, covers ``size`` pixels around it along each axis (image borders ignored).

    Attributes:
        size: Largest extent of one unit's receptive field.
        stride: Input pixels between the centres of adjacent units (below 1 after upsampling).
        center: Input coordinate of the centre of unit ``(0, 0)``.
        is_global: The layer has no spatial units (after global pooling, flatten, fully
            connected, class token): its receptive field is the whole input.
        aligned: False when paths with different centres or strides met on the way.
        uniform: False when units differ in extent or are not centred in their extent
            (e.g. after a transposed convolution whose kernel is not a multiple of its stride).
        axes: The exact per-axis geometry (``None`` for global layers).
    """

    size: tuple[int, int]
    stride: tuple[float, float]
    center: tuple[float, float]
    is_global: bool = False
    aligned: bool = True
    uniform: bool = True
    axes: tuple[Axis, Axis] | None = None

    @classmethod
    def from_axes(cls, y: Axis, x: Axis, *, whole: tuple[int, int] | None = None) -> ReceptiveField:
        """From exact per-axis geometry; ``whole=(H, W)`` when every unit sees the whole input
        (after self-attention): positions are kept, the extent is the input."""
        return cls(
            size=whole or (y.size, x.size),
            stride=(float(y.stride), float(x.stride)),
            center=(float(y.center), float(x.center)),
            aligned=y.aligned and x.aligned,
            uniform=whole is None and y.uniform and x.uniform,
            axes=None if whole else (y, x),
        )

    @classmethod
    def whole(cls, height: int, width: int) -> ReceptiveField:
        """The receptive field of a global layer on a ``height x width`` input."""
        return cls(
            size=(height, width),
            stride=(float(height), float(width)),
            center=((height - 1) / 2, (width - 1) / 2),
            is_global=True,
        )

    @property
    def padding(self) -> tuple[float, float]:
        """Effective padding of Araujo et al. (Distill 2019): ``(size - 1)/2 - center``."""
        return ((self.size[0] - 1) / 2 - self.center[0], (self.size[1] - 1) / 2 - self.center[1])

    def unit_center(self, i: int, j: int) -> tuple[float, float]:
        """Input coordinate ``(y, x)`` of the centre of unit ``(i, j)``."""
        return (self.center[0] + i * self.stride[0], self.center[1] + j * self.stride[1])

    def unit_box(self, i: int, j: int) -> tuple[float, float, float, float]:
        """First and last input pixel ``(y0, x0, y1, x1)`` that unit ``(i, j)`` reads (exact)."""
        if self.axes is None:
            return (0.0, 0.0, float(self.size[0] - 1), float(self.size[1] - 1))
        (y0, y1), (x0, x1) = self.axes[0].edges(i), self.axes[1].edges(j)
        return (float(y0), float(x0), float(y1), float(x1))

    def to_units(self, y: float, x: float) -> tuple[float, float]:
        """Fractional unit coordinate of input position ``(y, x)``: ``(p - center) / stride``."""
        if self.is_global:
            return (0.0, 0.0)
        return ((y - self.center[0]) / self.stride[0], (x - self.center[1]) / self.stride[1])
