"""Dense hypercolumns of large images in horizontal bands, each from a slab of input rows.

Output rows ``[r0, r1)`` read, in every layer, the units that bilinear sampling touches for
those rows (by the same axis maps as the whole image). Those units are computed from an input
slab ``[a, b)`` that holds their receptive fields, where they lie inside the image: the slab is
grown by exactly what the layers' geometry says, so every unit read has the value it has in the
whole image. Zero padding then only applies at the image's real borders. The slab starts at a
multiple of the network's total stride, so that each layer's unit grid on the slab is the whole
image's grid shifted by a whole number of units.

Results equal those of :class:`~hypercolumns.features.columns.HypercolumnExtractor` on the whole
image (to float rounding: convolutions of different sizes may sum in another order). Layers
that see the whole image (global, attention) cannot be banded; models whose units depend on
more than their receptive field (squeeze-and-excitation, group norm: context pooled over the
image) are found by :meth:`BandedHypercolumns.check`, which compares banded and whole results on
a probe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
from torch import nn

from hypercolumns.errors import HypercolumnsError, InputSizeError
from hypercolumns.features._resample import AxisMap, AxisPlan, resample
from hypercolumns.features.align import Align, fraction_axis
from hypercolumns.features.columns import HypercolumnExtractor
from hypercolumns.features.maps import FeatureExtractor
from hypercolumns.rf.geometry import Axis
from hypercolumns.rf.layers import Layer

__all__ = ["Band", "BandedHypercolumns"]


def _axis_y(layer: Layer) -> Axis:
    rf = layer.rf
    assert rf is not None
    assert rf.axes is not None
    return rf.axes[0]


def _prefix(ext: HypercolumnExtractor) -> list[Layer]:
    """The spatial leaf layers that run until the last of the extractor's layers is done."""
    available = ext.features.available
    names = {layer.name.partition(":")[0] for layer in ext.layers}
    last = max(
        i
        for i, layer in enumerate(available)
        if layer.name in names or any(layer.name.startswith(n + ".") for n in names)
    )
    return [
        layer
        for layer in available[: last + 1]
        if layer.index is not None and layer.rf is not None and layer.rf.axes is not None
    ]


def working_set(
    ext: HypercolumnExtractor, rows: int, *, halo: int = 0, points: int | None = None
) -> int:
    """Estimated peak bytes of hypercolumns of one image by ``ext``: the input and the network's
    activations on ``rows + halo`` input rows (the layers kept, and two others at a time), plus
    twice the output: ``rows`` dense rows, or ``points`` hypercolumns."""
    height, width = ext.input_size
    param = next(ext.features.model.parameters(), None)
    act_item = param.element_size() if param is not None else 4
    per_row = [math.prod(layer.shape) / height for layer in _prefix(ext)]
    kept = sum(math.prod(layer.shape) / height for layer in ext.layers)
    activations = act_item * (kept + 2 * max(per_row, default=0))
    slab = min(height, rows + halo)
    item = (ext.dtype or torch.float32).itemsize
    out = ext.channels * item * (points if points is not None else rows * ext.size[1])
    return int(slab * (activations + ext.features.in_channels * width * 4) + 2 * out)


@dataclass(frozen=True)
class Band:
    """One band: output rows ``rows``, computed from input rows ``slab`` (both half-open);
    ``units`` gives, per layer, the rows of its whole-image unit grid that the band reads."""

    rows: tuple[int, int]
    slab: tuple[int, int]
    units: dict[str, tuple[int, int]]


class BandedHypercolumns:
    """Dense hypercolumns of ``(1, C, H, W)`` images of one size, band by band.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        layers: Layer names or spec, as for :class:`HypercolumnExtractor`.
        input_size: ``(H, W)`` of the images.
        in_channels: Input channels; by default those of the model's first convolution.
        align: ``"rf"`` or ``"half-pixel"``.
        dtype: Output dtype; by default that of the features.
        project: Layer name to a ``(C_out, C_layer)`` matrix applied to its slab maps before
            resampling, as for :class:`HypercolumnExtractor`.

    Raises:
        HypercolumnsError: A layer sees the whole image (global, class token, attention), so it
            cannot be computed from a slab.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str | int],
        input_size: tuple[int, int],
        *,
        in_channels: int | None = None,
        align: Align = "rf",
        dtype: torch.dtype | None = None,
        project: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.whole = HypercolumnExtractor(
            model,
            layers,
            input_size,
            in_channels=in_channels,
            align=align,
            dtype=dtype,
            project=project,
        )
        self.model, self.input_size, self.dtype = model, input_size, dtype
        self.in_channels = self.whole.features.in_channels
        self.layers = self.whole.layers
        self.slices, self.channels = self.whole.slices, self.whole.channels
        for layer in self.layers:
            rf = layer.rf
            if rf is None or rf.is_global or rf.axes is None or layer.layout is None:
                raise HypercolumnsError(
                    f"layer {layer.name!r} sees the whole image (global, class token or "
                    "attention), so it cannot be computed in bands; compute the image whole "
                    "(a larger memory budget) or leave that layer out"
                )
        self._prefix = _prefix(self.whole)
        strides = [_axis_y(layer).stride for layer in [*self._prefix, *self.layers]]
        self.step = math.lcm(*(s.numerator for s in strides))
        self.reach = _axis_y(self.layers[0]).size
        for layer in self.layers:
            self.reach = max(self.reach, _axis_y(layer).size)
        self._slabs: dict[int, FeatureExtractor] = {}
        self._too_small: set[int] = set()

    def _maps(self, layer: Layer) -> tuple[AxisMap, AxisMap, int, int]:
        assert layer.layout is not None
        h, w = layer.layout.grid
        my, mx = self.whole.axis_maps(layer, h, w)
        return my, mx, h, w

    def plan(self, rows: int) -> list[Band]:
        """The bands of ``rows`` output rows (the last may be shorter) covering the image."""
        if rows < 1:
            raise HypercolumnsError(f"bands need at least one row, got {rows}")
        height = self.input_size[0]
        bands = []
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            top, bottom = Fraction(height), Fraction(-1)
            units = {}
            for layer in self.layers:
                my, _, h, _ = self._maps(layer)
                i0 = min(max(math.floor(my.a * r0 + my.b), 0), h - 1)
                i1 = min(max(math.ceil(my.a * (r1 - 1) + my.b), 0), h - 1)
                axis = _axis_y(layer)
                first = range(i0, min(i1, i0 + axis.period - 1) + 1)
                last = range(max(i0, i1 - axis.period + 1), i1 + 1)
                top = min(top, *(axis.edges(j)[0] for j in first))
                bottom = max(bottom, *(axis.edges(j)[1] for j in last))
                units[layer.name] = (i0, i1 + 1)
            a = max(0, math.floor(top))
            a -= a % self.step
            b = min(height, math.ceil(bottom) + 1)
            bands.append(Band((r0, r1), (a, b), units))
        tallest = max(b - a for a, b in (band.slab for band in bands))
        return [replace(band, slab=self._stretch(band.slab, tallest)) for band in bands]

    def _stretch(self, slab: tuple[int, int], height: int) -> tuple[int, int]:
        """``slab`` grown to ``height`` rows (down, else up to an aligned start) where the image
        allows: more rows never change the values, and fewer slab heights mean fewer plans."""
        a, b = slab
        if b - a >= height:
            return a, b
        b = min(self.input_size[0], a + height)
        if b - a < height:
            a = max(0, b - height)
            a -= a % self.step
        return a, b

    def working_set(self, rows: int) -> int:
        """Estimated peak bytes of computing one band of ``rows`` output rows."""
        return working_set(self.whole, rows, halo=self.reach + self.step)

    def rows_for(self, budget: int, quantum: int = 1) -> int:
        """The most output rows per band (a multiple of ``quantum`` and of the total stride,
        so that inner bands share one slab height, at least one such multiple) whose working
        set fits ``budget`` bytes."""
        quantum = math.lcm(quantum, self.step)
        rows = quantum
        while rows + quantum <= self.input_size[0] and self.working_set(rows + quantum) <= budget:
            rows += quantum
        return rows

    def _slab(self, height: int) -> FeatureExtractor:
        if height not in self._slabs:
            fe = FeatureExtractor(
                self.model,
                [layer.name for layer in self.layers],
                (height, self.input_size[1]),
                in_channels=self.in_channels,
            )
            for mine, full in zip(fe.layers, self.layers, strict=True):
                same = mine.rf is not None and all(
                    fraction_axis(mine, k) == fraction_axis(full, k) for k in (0, 1)
                )
                if not same:
                    raise HypercolumnsError(
                        f"the geometry of layer {full.name!r} changes with the input size "
                        f"(interpolation to a fixed size, adaptive pooling), so it cannot be "
                        "computed in bands; compute the image whole (a larger memory budget)"
                    )
            self._slabs[height] = fe
        return self._slabs[height]

    def _extractor(self, a: int, b: int) -> tuple[int, int, FeatureExtractor]:
        """The slab ``[a, b)`` and its extractor; a slab too small for the model (its later
        layers, which never run here, still have to fit) grows until it fits."""
        height = self.input_size[0]
        while True:
            if b - a not in self._too_small:
                try:
                    return a, b, self._slab(b - a)
                except InputSizeError:
                    self._too_small.add(b - a)
            if a == 0 and b == height:  # pragma: no cover - the whole image was planned
                raise HypercolumnsError(f"no slab of this {height}-row image fits the model")
            grow = max(self.step, (b - a) // self.step * self.step)
            if b < height:
                b = min(height, b + grow)
            else:
                a = max(0, a - grow)

    def __call__(self, x: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The hypercolumns of ``x`` ``(1, C, H, W)``, band by band.

        Yields:
            ``(r0, band)``: the first output row and the ``(C_total, rows, W)`` band.
        """
        self.whole.features.check(x)
        if x.shape[0] != 1:
            raise HypercolumnsError(f"bands are computed one image at a time, got {x.shape[0]}")
        dtype = self.dtype or (x.dtype if x.is_floating_point() else torch.float32)
        width = self.input_size[1]
        for band in self.plan(rows):
            (r0, r1), (a, b) = band.rows, band.slab
            a, b, slab = self._extractor(a, b)
            maps = slab(x[:, :, a:b], as_maps=True)
            out = torch.empty((1, self.channels, r1 - r0, width), dtype=dtype, device=x.device)
            for layer in self.layers:
                my, mx, _, w = self._maps(layer)
                stride = _axis_y(layer).stride
                offset = a * stride.denominator // stride.numerator
                assert offset * stride.numerator == a * stride.denominator
                i0, i1 = band.units[layer.name]
                value = self.whole._prepare(layer, maps[layer.name], dtype).to(dtype)
                if i0 - offset < 0 or i1 - offset > value.shape[2]:
                    raise HypercolumnsError(  # pragma: no cover - the plan guarantees it
                        f"band rows {r0}..{r1} need units {i0}..{i1} of layer {layer.name!r}, "
                        f"outside the slab's {offset}..{offset + value.shape[2]}"
                    )
                window = value.narrow(2, i0 - offset, i1 - i0)
                band_y = AxisPlan(AxisMap(my.a, my.b + my.a * r0 - i0), i1 - i0, r1 - r0)
                resample(window, band_y, AxisPlan(mx, w, width), out[:, self.slices[layer.name]])
            yield r0, out[0]

    def check(self, *, width: int = 64) -> None:
        """Make sure banding gives the whole-image result for this model and these layers.

        Hypercolumns of a probe image whose statistics change from top to bottom are computed
        whole and in three or more bands; they must agree to float rounding. They do not when a
        unit depends on more than its receptive field: context pooled over the whole image
        (squeeze-and-excitation gates, group or instance norm), which the geometry deliberately
        leaves out.

        Raises:
            HypercolumnsError: The two disagree.
        """
        rows = self.step * max(1, -(-self.reach // self.step))
        height = 3 * rows + 2 * self.reach + self.step
        width = min(width, self.input_size[1])
        probe = BandedHypercolumns(
            self.model,
            [layer.name for layer in self.layers],
            (height, width),
            in_channels=self.in_channels,
            align=self.whole.align,
        )
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        ramp = torch.linspace(-3, 3, height).view(1, 1, height, 1)
        noise = torch.randn(1, self.in_channels, height, width, generator=gen)
        x = (noise * (1 + ramp.abs()) + ramp).to(device)
        whole = probe.whole(x).features[0]
        scale = float(whole.abs().max()) or 1.0
        for r0, band in probe(x, rows):
            diff = float((band - whole[:, r0 : r0 + band.shape[1]]).abs().max())
            if diff > 1e-4 * scale:
                raise HypercolumnsError(
                    f"hypercolumns of {[layer.name for layer in self.layers]} computed in bands "
                    f"differ from the whole image's (by {diff:.3g}, values up to {scale:.3g}): "
                    "the model pools context over the whole image (e.g. squeeze-and-excitation "
                    "or group norm), so bands cannot be used; compute images whole (a larger "
                    "memory budget) or choose layers before that context"
                )
