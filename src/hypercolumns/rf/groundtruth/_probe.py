"""Measuring: back-propagate from chosen units of the surrogate, read the boxes of input pixels
with a non-zero gradient, and grow the input until no measured box touches its border.

:class:`_Probe` measures units on one input; :func:`gradient_rf` turns the boxes of one period
of units per axis into a :class:`GradientRF`; :func:`rf_mismatches` compares it with the
analysis.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from hypercolumns._forward import StopForward, first_tensor
from hypercolumns.errors import GeometryWarning, LayerNotFoundError, MeasurementError, closest
from hypercolumns.rf.geometry import Axis
from hypercolumns.rf.groundtruth._surrogate import _surrogate, _surrogate_modes
from hypercolumns.rf.layers import Layer, MapLayout, layers, parse_size

Box = tuple[int, int, int, int]

_MAX_SIDE = 8192  # longest input side tried
_MAX_AREA = 1536 * 1536  # largest input area tried


@dataclass(frozen=True)
class GradientRF:
    """Receptive field of a layer measured from input gradients, per axis as ``(y, x)`` pairs.

    Attributes:
        size: Largest extent, in input pixels, of the measured units' gradient support.
        stride: Input pixels between the centres of the measured units, per unit.
        center: Input coordinate of the centre of unit 0 (the measured centres moved back by
            ``index * stride``; averaged over the units of one period).
        measured_at: Input ``(H, W)`` used to measure the y axis, and the one for the x axis.
        units: The unit indices measured along y, and along x.
        extents: For each measured unit, its first and last input pixel along y, and along x.
    """

    size: tuple[int, int]
    stride: tuple[float, float]
    center: tuple[float, float]
    measured_at: tuple[tuple[int, int], tuple[int, int]]
    units: tuple[tuple[int, ...], tuple[int, ...]]
    extents: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = ((), ())


_Chooser = Callable[[int, int], list[tuple[int, int]]]


class _Probe:
    """Runs the surrogate up to one layer and back-propagates from chosen units."""

    def __init__(
        self, model: nn.Module, name: str, in_channels: int, unused: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.in_channels = in_channels
        self.net = _surrogate(model, keep=name, unused=unused)
        try:
            self.module = self.net.get_submodule(name)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules()]
            near = closest(name, names)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise LayerNotFoundError(
                f"no layer named {name!r}{hint}; hc.layers(model, size) lists them all"
            ) from err
        self.guessed: dict[str, None] = {}

    def boxes(
        self, size: tuple[int, int], count: int, choose: _Chooser, layout: MapLayout | None
    ) -> tuple[list[tuple[int, int]], list[Box | None]]:
        """Gradient support ``(y0, x0, y1, x1)`` of the ``count`` units that
        ``choose(map_height, map_width)`` picks (None for a unit no input pixel reaches)."""
        x = torch.ones(count, self.in_channels, *size, dtype=torch.float64, requires_grad=True)
        captured: list[torch.Tensor] = []

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if t is not None:
                captured.append(t)
                raise StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            with torch.enable_grad(), _surrogate_modes() as tagger:
                tagger.tags.set(x, (False, False, True, True))
                with suppress(StopForward):
                    self.net(x)
            self.guessed.update(tagger.guessed)
        finally:
            handle.remove()
        if not captured:
            raise MeasurementError(f"layer {self.name!r} did not run (or returned no tensor)")
        maps = layout.to_map(captured[0]) if layout is not None else captured[0]
        if maps.dim() != 4:
            raise MeasurementError(
                f"layer {self.name!r} has output shape {tuple(captured[0].shape)}: expected a "
                "(B, C, H, W) map; pass a layer with spatial output"
            )
        height, width = maps.shape[-2:]
        units = choose(height, width)
        if len(units) != count:
            raise ValueError(f"expected {count} units, got {len(units)}")
        for i, j in units:
            if not (0 <= i < height and 0 <= j < width):
                raise MeasurementError(
                    f"unit ({i}, {j}) is off the {height}x{width} map of layer {self.name!r} "
                    f"for input {size[0]}x{size[1]}"
                )
        generator = torch.Generator().manual_seed(1)
        weights = 0.5 + torch.rand(maps.shape[1], generator=generator, dtype=torch.float64)
        rows_, cols_ = torch.tensor([u[0] for u in units]), torch.tensor([u[1] for u in units])
        picked = maps[torch.arange(count), :, rows_, cols_]  # (count, C)
        target = (picked * weights).sum()
        if not target.requires_grad:
            return units, [None] * count
        grads: tuple[torch.Tensor | None, ...] = torch.autograd.grad(target, x, allow_unused=True)
        grad = grads[0]
        if grad is None:
            return units, [None] * count
        if not torch.isfinite(grad).all():
            raise MeasurementError(f"non-finite input gradient for layer {self.name!r}")
        support = grad.ne(0).any(dim=1)
        result: list[Box | None] = []
        for b in range(len(units)):
            rows = support[b].any(dim=1).nonzero()
            cols = support[b].any(dim=0).nonzero()
            if len(rows) == 0:
                result.append(None)
                continue
            result.append((int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())))
        return units, result


def _analyse(
    model: nn.Module, size: tuple[int, int], name: str, in_channels: int
) -> tuple[Layer, list[str]]:
    """The analysis of layer ``name`` and the names of the layers that first run after it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        found = layers(model, size, in_channels=in_channels)
    for k, layer in enumerate(found):
        if layer.name == name:
            inside = name + "."
            return layer, [
                later.name for later in found[k + 1 :] if not later.name.startswith(inside)
            ]
    near = closest(name, [la.name for la in found])
    hint = f"; closest: {', '.join(near)}" if near else ""
    raise LayerNotFoundError(f"no layer named {name!r}{hint}; hc.layers(model, size) lists them")


def gradient_boxes(
    model: nn.Module,
    layer: str | Layer,
    input_size: int | str | Sequence[int],
    units: Sequence[tuple[int, int]],
    *,
    in_channels: int = 3,
) -> list[Box | None]:
    """Measured receptive field of each unit: its input-gradient support on one input size.

    Args:
        model: The model (left unchanged).
        layer: A layer name of ``model.named_modules()`` (or a :class:`Layer`).
        input_size: ``H`` or ``(H, W)``: the boxes are exact for this input, image borders
            included (a box that reaches past the border is cut at it).
        units: Unit indices ``(i, j)`` of the layer's output map.
        in_channels: Input channels.

    Returns:
        Per unit, the first and last input row and column with a non-zero gradient,
        ``(y0, x0, y1, x1)``; ``None`` when no input pixel reaches the unit.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    size = parse_size(input_size)
    target, unused = _analyse(model, size, name, in_channels)
    probe = _Probe(model, name, in_channels, unused)
    chosen = list(units)
    layout = _nonstandard(target.layout)
    return probe.boxes(size, len(chosen), lambda h, w: chosen, layout)[1]


def _nonstandard(layout: MapLayout | None) -> MapLayout | None:
    """``layout`` unless it is plain NCHW (which needs no rearranging)."""
    if layout is not None and (layout.y, layout.x, layout.prefix) == (2, 3, 0):
        return None
    return layout


def _thin(nominal: int, step: int, minimum: int) -> int:
    """The smallest ``nominal - k*step`` that is at least ``minimum`` (else ``nominal``)."""
    if nominal <= minimum:
        return nominal
    return nominal - ((nominal - minimum) // step) * step


def _summarise(
    boxes: Sequence[Box], first: int, period: int, axis: int
) -> tuple[int, Fraction, Fraction]:
    """Size, stride and centre of unit 0 along ``axis`` from the boxes of units
    ``first .. first + period``."""
    lo, hi = (0, 2) if axis == 0 else (1, 3)
    size = max(b[hi] - b[lo] + 1 for b in boxes)
    mids = [Fraction(b[lo] + b[hi], 2) for b in boxes]
    stride = (mids[period] - mids[0]) / period
    center = sum((mids[k] - (first + k) * stride for k in range(period)), Fraction(0)) / period
    return size, stride, center


def _clipped(boxes: Sequence[Box], size: tuple[int, int], axis: int) -> bool:
    lo, hi = (0, 2) if axis == 0 else (1, 3)
    return any(b[lo] <= 0 or b[hi] >= size[axis] - 1 for b in boxes)


def _geometry(layer: Layer) -> tuple[Axis | None, Axis | None]:
    rf = layer.rf
    if rf is None or rf.is_global or rf.axes is None:
        return (None, None)
    return rf.axes


def _grid(layer: Layer) -> tuple[int, int]:
    if layer.layout is not None:
        return layer.layout.grid
    return (int(layer.shape[-2]), int(layer.shape[-1]))


class _Session:
    """One layer of one model: the analysis on each input size (cached) and the probe."""

    def __init__(
        self, model: nn.Module, name: str, nominal: tuple[int, int], in_channels: int
    ) -> None:
        self.model, self.name, self.in_channels = model, name, in_channels
        self.input_size = nominal
        self.nominal, unused = _analyse(model, nominal, name, in_channels)
        self.probe = _Probe(model, name, in_channels, unused)
        self._analyses: dict[tuple[int, int], Layer | Exception] = {nominal: self.nominal}

    def analysis(self, size: tuple[int, int]) -> Layer:
        """The analysed layer on a ``size`` input (raises what the analysis raised)."""
        if size not in self._analyses:
            try:
                self._analyses[size] = _analyse(self.model, size, self.name, self.in_channels)[0]
            except Exception as err:
                self._analyses[size] = err
        found = self._analyses[size]
        if isinstance(found, Exception):
            raise found
        return found

    def boxes(self, size: tuple[int, int], units: Sequence[tuple[int, int]]) -> list[Box]:
        layout = _nonstandard(self.analysis(size).layout)
        chosen = list(units)
        _, found = self.probe.boxes(size, len(chosen), lambda h, w: chosen, layout)
        boxes = [b for b in found if b is not None]
        if len(boxes) != len(found):
            raise MeasurementError(f"no input pixel reaches units {chosen} of layer {self.name!r}")
        return boxes


def _pick(layer: Layer, size: tuple[int, int], axis: int, margin: int) -> tuple[int, int] | None:
    """The first unit and the period to measure along ``axis``: units nearest the middle whose
    analytic boxes keep ``margin`` pixels from the border (None when none do)."""
    n = _grid(layer)[axis]
    geometry = _geometry(layer)[axis]
    if geometry is None:  # no analysis to go by: the middle unit, and check the result
        return ((n - 1) // 2, 1) if n >= 2 else None
    period, length = geometry.period, size[axis]
    guess = math.floor(
        (Fraction(length - 1, 2) - geometry.center) / geometry.stride - Fraction(period, 2)
    )
    for first in sorted(range(max(0, n - period)), key=lambda i: abs(i - guess)):
        edges = [geometry.edges(first + k) for k in range(period + 1)]
        if min(e[0] for e in edges) >= margin and max(e[1] for e in edges) <= length - 1 - margin:
            return first, period
    return None


def _measure_axis(
    session: _Session, axis: int, step: int, margin: int, kinds: list[int]
) -> tuple[tuple[int, int], list[int], list[Box], int]:
    """Measure units along ``axis`` on inputs that grow until their boxes are not clipped.

    Returns the input size, the units measured, their boxes and the period. ``kinds[0]`` is
    the kind of input shape to start from (0: thin across the axis, 1: nominal across, 2:
    square); it is advanced when the model refuses a kind, for the next axis too.
    """
    base, other = session.input_size, 1 - axis
    geometry = _geometry(session.nominal)
    g_other, g = geometry[other], geometry[axis]
    stride_other = float(g_other.stride) if g_other is not None else 32.0
    across = (_thin(base[other], step, max(64, 2 * math.ceil(stride_other))), base[other])
    m = 0
    if g is not None:  # skip the sizes that the nominal geometry rules out
        span = g.size + (g.period + 2) * float(g.stride) + 2 * margin
        m = max(0, math.ceil((span - base[axis]) / step))
    while True:
        length = base[axis] + m * step
        if length > _MAX_SIDE:
            raise MeasurementError(
                f"cannot measure layer {session.name!r} along {'yx'[axis]}: its receptive "
                f"field is cut by the border of every input up to {_MAX_SIDE} pixels long"
            )
        error: Exception | None = None
        for kind in range(kinds[0], 3):
            size = (length, across[kind]) if kind < 2 else (length, length)
            size = size if axis == 0 else (size[1], size[0])
            if size[0] * size[1] > _MAX_AREA:
                continue
            try:
                layer = session.analysis(size)
                picked = _pick(layer, size, axis, margin)
                if picked is None:  # too small for this layer: a longer input
                    m += 1
                    break
                first, period = picked
                middle = _grid(layer)[other] // 2
                units = [
                    (first + k, middle) if axis == 0 else (middle, first + k)
                    for k in range(period + 1)
                ]
                boxes = session.boxes(size, units)
            except Exception as err:  # the model does not take this shape: try the next kind
                error = err
                continue
            kinds[0] = kind
            if _clipped(boxes, size, axis):  # the analysis was wrong; a larger input will tell
                m = max(m + 1, math.ceil((1.5 * length - base[axis]) / step))
                break
            return size, [u[axis] for u in units], boxes, period
        else:
            raise MeasurementError(
                f"cannot measure layer {session.name!r} along {'yx'[axis]}: the model fails on "
                f"every input shape tried with side {length}"
                + (f" (the last error: {type(error).__name__}: {error})" if error else "")
            ) from error


def gradient_rf(
    model: nn.Module,
    layer: str | Layer,
    input_size: int | str | Sequence[int],
    *,
    in_channels: int = 3,
    unit: tuple[int, int] | None = None,
) -> GradientRF:
    """Receptive-field size, stride and centre of a layer, measured from input gradients.

    Along each axis, the gradient support of a few neighbouring units (one period of the
    layer's pattern, plus one) gives the size (largest extent), the stride (distance between
    the first and last measured centres over their index difference) and the centre of unit 0.

    By default the units are chosen in the middle of an input whose side grows from
    ``input_size`` in steps of a multiple of the layer's stride (so "same" padding keeps its
    offsets) until no measured unit touches the image border; the y axis is measured on a
    tall, narrow input and the x axis on a wide, short one when the model accepts them (a
    square input otherwise). Layers whose geometry depends on the input size (adaptive
    pooling to a fixed size, resizing to a fixed size) are measured on those sizes:
    ``measured_at`` says which. With ``unit``, units ``unit`` .. ``unit + period`` are
    measured on ``input_size`` itself.

    Args:
        model: The model (left unchanged).
        layer: A layer name of ``model.named_modules()`` (or a :class:`Layer`).
        input_size: ``H`` or ``(H, W)``: the nominal input size.
        in_channels: Input channels.
        unit: First unit ``(i, j)`` to measure, on ``input_size`` exactly.

    Returns:
        The measured geometry.

    Raises:
        LayerNotFoundError: No module of that name.
        MeasurementError: A unit's receptive field is cut by the border (with ``unit``, or on
            every input tried), or no input pixel reaches the unit.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    nominal = parse_size(input_size)
    session = _Session(model, name, nominal, in_channels)
    if unit is not None:
        periods = [g.period if g is not None else 1 for g in _geometry(session.nominal)]
        span = max(periods)
        units = [(unit[0] + k, unit[1] + k) for k in range(span + 1)]
        boxes = session.boxes(nominal, units)
        if _clipped(boxes, nominal, 0) or _clipped(boxes, nominal, 1):
            raise MeasurementError(
                f"the receptive field of unit {unit} of layer {name!r} is cut by the border "
                f"of a {nominal[0]}x{nominal[1]} input: use a larger input or a unit nearer "
                "the middle"
            )
        ys = _summarise(boxes[: periods[0] + 1], unit[0], periods[0], 0)
        xs = _summarise(boxes[: periods[1] + 1], unit[1], periods[1], 1)
        return GradientRF(
            (ys[0], xs[0]),
            (float(ys[1]), float(xs[1])),
            (float(ys[2]), float(xs[2])),
            (nominal, nominal),
            (
                tuple(u[0] for u in units[: periods[0] + 1]),
                tuple(u[1] for u in units[: periods[1] + 1]),
            ),
            (
                tuple((b[0], b[2]) for b in boxes[: periods[0] + 1]),
                tuple((b[1], b[3]) for b in boxes[: periods[1] + 1]),
            ),
        )
    strides = [float(g.stride) for g in _geometry(session.nominal) if g is not None] or [32.0]
    step = max(64, 2 ** math.ceil(math.log2(max(2.0, 2 * max(strides)))))
    margin = max(2, math.ceil(max(strides)))
    kinds = [0]
    results, sizes, measured, extents = [], [], [], []
    for axis in (0, 1):
        size, units_along, boxes, period = _measure_axis(session, axis, step, margin, kinds)
        results.append(_summarise(boxes, units_along[0], period, axis))
        sizes.append(size)
        measured.append(tuple(units_along))
        extents.append(tuple((b[axis], b[axis + 2]) for b in boxes))
    (ry, sy, cy), (rx, sx, cx) = results
    return GradientRF(
        (ry, rx),
        (float(sy), float(sx)),
        (float(cy), float(cx)),
        (sizes[0], sizes[1]),
        (measured[0], measured[1]),
        (extents[0], extents[1]),
    )


def rf_mismatches(
    model: nn.Module, layer: str | Layer, measured: GradientRF, *, in_channels: int = 3
) -> list[str]:
    """How the analysis differs from a gradient measurement (empty when they agree exactly).

    Each axis is compared with :func:`hypercolumns.rf.layers.layers` run on the input size that
    axis was measured on (``measured.measured_at``): the size, the stride, the exact extent of
    every measured unit, and the centre of unit 0 where the analysis says units are centred
    in their extent (``uniform``). Elsewhere (units that differ, paths that meet misaligned)
    the analysis places a unit at its sampling position, which need not be the middle of its
    extent; the extents pin the geometry down instead.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    out = []
    for k, axis in enumerate("yx"):
        found = _analyse(model, measured.measured_at[k], name, in_channels)[0]
        where = "x".join(str(s) for s in measured.measured_at[k])
        geometry = _geometry(found)[k]
        if found.rf is None or geometry is None:
            out.append(f"{axis}: the analysis gives no local receptive field on a {where} input")
            continue
        checks = ["size", "stride", "center"] if geometry.uniform else ["size", "stride"]
        for what in checks:
            a, m = getattr(found.rf, what)[k], getattr(measured, what)[k]
            if float(a) != float(m):
                out.append(f"{what}[{axis}] on {where}: analysis {a:g}, gradient {m:g}")
        for i, (first, last) in zip(measured.units[k], measured.extents[k], strict=False):
            lo, hi = geometry.edges(i)
            if (lo, hi) != (Fraction(first), Fraction(last)):
                out.append(
                    f"unit {i} along {axis} on {where}: analysis {float(lo):g}..{float(hi):g}, "
                    f"gradient {first}..{last}"
                )
    return out
