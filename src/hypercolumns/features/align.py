"""Where each output pixel samples a layer's map: the two alignments of hypercolumns.

* ``"rf"`` (default): pixel ``p`` samples unit ``(p - center) / stride`` of the layer's exact
  receptive-field geometry, so a unit's value lands on the pixel its receptive field is
  centred on.
* ``"half-pixel"``: the classic ``F.interpolate(mode="bilinear", align_corners=False)`` of the
  map to the output size, as the papers did; it ignores where units really are (up to half a
  cell off for ResNet-style padding).

Dense output uses exact per-axis maps (:class:`~hypercolumns.features._resample.AxisMap`);
sparse points use the same formulas on float coordinates.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import torch

from hypercolumns.errors import OptionError
from hypercolumns.features._resample import AxisMap
from hypercolumns.rf.geometry import as_fraction
from hypercolumns.rf.layers import Layer

__all__ = ["ALIGNS", "Align", "axis_maps", "check_align", "fraction_axis", "unit_coordinates"]

Align = Literal["rf", "half-pixel"]
ALIGNS: tuple[Align, ...] = ("rf", "half-pixel")


def check_align(align: object) -> Align:
    """``align`` if it is one of :data:`ALIGNS`."""
    if align not in ALIGNS:
        raise OptionError(f"align must be 'rf' or 'half-pixel', got {align!r}")
    return align


def fraction_axis(layer: Layer, axis: int) -> tuple[Fraction, Fraction]:
    """Exact ``(center of unit 0, stride)`` of a spatial layer along ``axis`` (0: y, 1: x)."""
    rf = layer.rf
    assert rf is not None
    if rf.axes is not None:
        return rf.axes[axis].center, rf.axes[axis].stride
    return as_fraction(rf.center[axis]), as_fraction(rf.stride[axis])


def axis_maps(
    layer: Layer,
    align: Align,
    input_size: tuple[int, int],
    size: tuple[int, int],
    grid: tuple[int, int],
) -> tuple[AxisMap, AxisMap]:
    """Where the pixels of a ``size`` output sample the ``grid`` ``(h, w)`` map of ``layer``
    computed on an ``input_size`` image, per axis."""
    (height, width), (out_h, out_w), (h, w) = input_size, size, grid
    if align == "half-pixel":
        return AxisMap.half_pixel(h, out_h), AxisMap.half_pixel(w, out_w)
    (cy, sy), (cx, sx) = fraction_axis(layer, 0), fraction_axis(layer, 1)
    return AxisMap.rf(cy, sy, height, out_h), AxisMap.rf(cx, sx, width, out_w)


def unit_coordinates(
    layer: Layer,
    align: Align,
    input_size: tuple[int, int],
    points: torch.Tensor,
    grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional ``(uy, ux)`` unit coordinates in the ``grid`` ``(h, w)`` map of ``layer`` of
    the ``(..., 2)`` ``(y, x)`` pixel ``points`` of an ``input_size`` image."""
    (height, width), (h, w) = input_size, grid
    py, px = points[..., 0], points[..., 1]
    if align == "half-pixel":
        return (py + 0.5) * (h / height) - 0.5, (px + 0.5) * (w / width) - 0.5
    (cy, sy), (cx, sx) = fraction_axis(layer, 0), fraction_axis(layer, 1)
    return (py - float(cy)) / float(sy), (px - float(cx)) / float(sx)
