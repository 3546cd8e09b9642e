"""Per-pixel linear maps of hypercolumns, computed where the layers live.

An affine map of the hypercolumn, ``W h(p) + b``, splits into one block per layer:
``sum_l W_l up(F_l)(p) + b``. Bilinear sampling is linear with weights that sum to one, so
``W_l up(F_l) = up(W_l F_l)``: each block is applied to the layer's own low-resolution map and
only its ``K`` outputs are resampled, then summed. A global layer (fully connected, pooled,
class token) adds a per-image constant. The result equals the explicit route (dense
hypercolumns, then the map) to float rounding, at a cost that grows with ``K``, not with the
thousands of hypercolumn channels. Per-layer standardisation folds into ``W_l`` and ``b``
(:meth:`LinearMap.split`).

Norms are exact too: the squared norm of a bilinear sample is a quadratic form of its four
neighbours, so :meth:`LayerMaps.sq_norms` reads five inner-product maps of each layer (a unit
with itself and with its right, lower, and two diagonal neighbours) at the layer's resolution
and combines them with the sampling weights (the norm of an interpolated vector is not the
interpolation of norms).

Per-pixel non-linear steps (``normalize="l2"`` after sampling) do not commute with sampling:
they are refused here, never approximated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns._checks import budget, image_batch
from hypercolumns.errors import OptionError
from hypercolumns.features._plans import planned
from hypercolumns.features._resample import PointPlan, resample
from hypercolumns.features.align import Align, check_align, unit_coordinates
from hypercolumns.features.bands import BandedHypercolumns
from hypercolumns.features.columns import HypercolumnExtractor, Normalize, Points
from hypercolumns.rf.layers import LayerSpec, spec_items

__all__ = ["LayerMaps", "LinearMap", "LinearMapper", "layer_maps", "linear_map"]


@dataclass(frozen=True)
class LinearMap:
    """``W h(p) + b`` per pixel, split into one block per layer.

    Attributes:
        weights: Layer name to its ``(K, C_layer)`` block of ``W``.
        bias: ``(K,)``.
    """

    weights: dict[str, torch.Tensor]
    bias: torch.Tensor

    @property
    def outputs(self) -> int:
        """``K``, the number of outputs per pixel."""
        return int(self.bias.shape[0])

    @classmethod
    def split(
        cls,
        matrix: torch.Tensor,
        slices: Mapping[str, slice],
        bias: torch.Tensor | None = None,
        *,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> LinearMap:
        """The map ``matrix @ ((h - mean) / std) + bias`` of hypercolumns whose layers occupy
        ``slices`` of the channels, with the standardisation folded into the blocks.

        Args:
            matrix: ``(K, C)`` over the whole hypercolumn.
            slices: Layer name to its channels, as :attr:`Hypercolumns.slices` gives them.
            bias: ``(K,)``; zero by default.
            mean: ``(C,)`` per-channel mean to subtract first.
            std: ``(C,)`` per-channel scale to divide by (after the mean).
        """
        if matrix.dim() != 2:
            raise OptionError(f"matrix must be (K, C), got shape {tuple(matrix.shape)}")
        k, channels = matrix.shape
        total = max((s.stop for s in slices.values()), default=0)
        if channels != total:
            raise OptionError(
                f"matrix has {channels} columns but the hypercolumns have {total} channels "
                f"({', '.join(f'{n}: {s.stop - s.start}' for n, s in slices.items())})"
            )
        w = matrix.double()
        b = torch.zeros(k, dtype=torch.float64) if bias is None else bias.double().clone()
        if tuple(b.shape) != (k,):
            raise OptionError(f"bias must have shape ({k},), got {tuple(b.shape)}")
        for name, vec in (("mean", mean), ("std", std)):
            if vec is not None and tuple(vec.shape) != (channels,):
                raise OptionError(f"{name} must have shape ({channels},), got {tuple(vec.shape)}")
        if std is not None:
            w = w / std.double()
        if mean is not None:
            b = b - w @ mean.double()
        dtype = matrix.dtype if matrix.is_floating_point() else torch.float32
        return cls(
            {name: w[:, s].to(dtype).contiguous() for name, s in slices.items()},
            b.to(dtype),
        )


def _neighbours(u: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two units either side of unit coordinates ``u`` on an axis of ``n`` units (clamped,
    as sampling clamps) and the weight of the second."""
    u = u.clamp(0, n - 1)
    i0 = u.floor().clamp(max=max(n - 2, 0))
    t = u - i0
    i0l = i0.long()
    return i0l, (i0l + 1).clamp(max=n - 1), t


class _Grams:
    """Inner products of each unit of one layer's ``(B, C, h, w)`` map with itself (``s``) and
    with its right (``x``), lower (``y``) and lower-right (``d``) neighbours, and of its right
    neighbour with its lower one (``a``), each ``(B, h, w)`` (zero where a neighbour is
    missing); each computed when first read, so that a layer sampled only at whole units along
    an axis (stride 1 with ``align="rf"``) never pays for its neighbours along it."""

    def __init__(self, value: torch.Tensor) -> None:
        half = value.dtype in (torch.float16, torch.bfloat16)
        self.value = value.float() if half else value
        self.maps: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.maps:
            v = self.value
            bsz, _, h, w = v.shape
            out = v.new_zeros(bsz, h, w)
            if key == "s":
                out = (v * v).sum(1)
            elif key == "x" and w > 1:
                out[:, :, :-1] = (v[..., :-1] * v[..., 1:]).sum(1)
            elif key == "y" and h > 1:
                out[:, :-1] = (v[:, :, :-1] * v[:, :, 1:]).sum(1)
            elif key == "d" and h > 1 and w > 1:
                out[:, :-1, :-1] = (v[:, :, :-1, :-1] * v[:, :, 1:, 1:]).sum(1)
            elif key == "a" and h > 1 and w > 1:
                out[:, :-1, :-1] = (v[:, :, :-1, 1:] * v[:, :, 1:, :-1]).sum(1)
            self.maps[key] = out
        return self.maps[key]


def _between(t: torch.Tensor) -> bool:
    """Whether any second weight ``t`` is strictly between 0 and 1 (a sample that mixes two
    units along the axis, so the neighbours' inner products count)."""
    return bool(((t > 0) & (t < 1)).any())


def _quadratic(
    g: _Grams,
    at: tuple[torch.Tensor, ...],
    y: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    x: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``|sum_ab wy_a wx_b F[y_a, x_b]|^2`` from the inner-product maps ``g``, read at the
    index tuples ``at + (y, x)`` (neighbour indices and second weights per axis)."""
    (y0, y1, ty), (x0, x1, tx) = y, x
    wy0, wy1, wx0, wx1 = 1 - ty, ty, 1 - tx, tx
    mix_y, mix_x = _between(ty), _between(tx)

    def read(key: str, yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return g[key][(*at, yi, xi)]

    total = (
        (wy0 * wx0) ** 2 * read("s", y0, x0)
        + (wy0 * wx1) ** 2 * read("s", y0, x1)
        + (wy1 * wx0) ** 2 * read("s", y1, x0)
        + (wy1 * wx1) ** 2 * read("s", y1, x1)
    )
    if mix_x:
        total = total + 2 * wx0 * wx1 * (wy0**2 * read("x", y0, x0) + wy1**2 * read("x", y1, x0))
    if mix_y:
        total = total + 2 * wy0 * wy1 * (wx0**2 * read("y", y0, x0) + wx1**2 * read("y", y0, x1))
    if mix_x and mix_y:
        total = total + 2 * wy0 * wy1 * wx0 * wx1 * (read("d", y0, x0) + read("a", y0, x0))
    return total


def _quadratic_grid(
    g: _Grams,
    y: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    x: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """:func:`_quadratic` at every pixel of a grid, ``(B, H, W)``, from per-axis neighbours
    and weights ``(H,)`` and ``(W,)``: separable, rows first, then columns."""
    (y0, y1, ty), (x0, x1, tx) = y, x
    wy0, wy1 = (1 - ty).view(1, -1, 1), ty.view(1, -1, 1)
    wx0, wx1 = (1 - tx).view(1, 1, -1), tx.view(1, 1, -1)
    mix_y, mix_x = _between(ty), _between(tx)

    def rows(key: str, i: torch.Tensor) -> torch.Tensor:
        return g[key].index_select(1, i)

    # per output row, what each unit column contributes to the square of the sample
    e = wy0**2 * rows("s", y0) + wy1**2 * rows("s", y1)
    if mix_y:
        e += 2 * wy0 * wy1 * rows("y", y0)
    total = wx0**2 * e.index_select(2, x0) + wx1**2 * e.index_select(2, x1)
    if mix_x:
        f = wy0**2 * rows("x", y0) + wy1**2 * rows("x", y1)
        if mix_y:
            f += wy0 * wy1 * (rows("d", y0) + rows("a", y0))
        total += 2 * wx0 * wx1 * f.index_select(2, x0)
    return total


class LayerMaps:
    """The chosen layers' maps of one batch at their own resolution (one forward pass), read per
    pixel exactly as hypercolumns would be, without forming them.

    Made by :meth:`LinearMapper.maps` or :func:`layer_maps`.

    Attributes:
        values: Layer name to its ``(B, C, h, w)`` map, or ``(B, C)`` for a global layer.
        layers: The layers, in the order given.
        slices: Layer name to its channels in the hypercolumn.
        channels: Channels of the whole hypercolumn.
        input_size: ``(H, W)`` of the images.
    """

    def __init__(self, mapper: LinearMapper, values: dict[str, torch.Tensor]) -> None:
        self._mapper = mapper
        self.values = values
        self.layers = mapper.layers
        self.slices = mapper.slices
        self.channels = mapper.channels
        self.input_size = mapper.input_size
        first = next(iter(values.values()))
        self.batch, self.device = int(first.shape[0]), first.device
        self._grams: dict[str, _Grams] = {}

    def _points(self, points: Points) -> torch.Tensor:
        assert points is not None
        return self._mapper.extractor._points(points, self.batch, None, 0, self.device)

    def linear(
        self, m: LinearMap, points: Points = None, *, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``W h(p) + b`` at every pixel, ``(B, K, H, W)``, or at ``points`` (as for
        :func:`~hypercolumns.features.columns.hypercolumns`: an int N sampled with seed 0, or
        ``(B, N, 2)`` / ``(N, 2)`` ``(y, x)`` pixels), ``(B, N, K)``."""
        names = [layer.name for layer in self.layers]
        if sorted(m.weights) != sorted(names):
            raise OptionError(
                f"the linear map has blocks for layers {list(m.weights)}, but the hypercolumns "
                f"are of {names}"
            )
        for layer in self.layers:
            block = m.weights[layer.name]
            if block.dim() != 2 or block.shape != (m.outputs, layer.channels):
                raise OptionError(
                    f"the block of layer {layer.name!r} must have shape ({m.outputs}, "
                    f"{layer.channels}), got {tuple(block.shape)}"
                )
        k, bsz = m.outputs, self.batch
        pts = None if points is None else self._points(points)
        if pts is None:
            shape: tuple[int, ...] = (bsz, k, *self.input_size)
        else:
            shape = (bsz, pts.shape[1], k)
        self._mapper.extractor._guard(shape, dtype, self.device)
        out = torch.empty(shape, dtype=dtype, device=self.device)
        first = True  # the first spatial layer is sampled straight into out, the others added
        constant = m.bias.to(self.device, dtype).expand(bsz, k).clone()
        scratch: torch.Tensor | None = None
        for layer in self.layers:
            value = self.values[layer.name]
            block = m.weights[layer.name].to(self.device, torch.promote_types(value.dtype, dtype))
            if value.dim() == 2:
                constant += (value.to(block.dtype) @ block.T).to(dtype)
                continue
            h, w = value.shape[-2:]
            small = torch.matmul(block, value.to(block.dtype).flatten(2)).view(bsz, k, h, w)
            direct = first and small.dtype == dtype
            if not direct and scratch is None:
                scratch = torch.empty(shape, dtype=small.dtype, device=self.device)
            into = out if direct else scratch
            assert into is not None
            if pts is None:
                resample(small, *self._mapper.extractor._axis_plans(layer, h, w), into)
            else:
                uy, ux = unit_coordinates(layer, self._mapper.align, self.input_size, pts, (h, w))
                PointPlan(uy, ux, h, w, small.dtype).sample(small, into)
            if first and not direct:
                out.copy_(into)
            elif not first:
                out += into
            first = False
        if first:
            out.zero_()
        if pts is None:
            out += constant[:, :, None, None]
        else:
            out += constant[:, None, :]
        return out

    def columns(self, points: Points) -> torch.Tensor:
        """The hypercolumns at ``points``, ``(B, N, C)``, as
        :func:`~hypercolumns.features.columns.hypercolumns` gives them."""
        pts = self._points(points)
        out = torch.empty(
            (self.batch, pts.shape[1], self.channels), dtype=torch.float32, device=self.device
        )
        for layer in self.layers:
            value = self.values[layer.name].float()
            target = out[..., self.slices[layer.name]]
            if value.dim() == 2:
                target.copy_(value[:, None, :])
                continue
            h, w = value.shape[-2:]
            uy, ux = unit_coordinates(layer, self._mapper.align, self.input_size, pts, (h, w))
            PointPlan(uy, ux, h, w, value.dtype).sample(value, target)
        return out

    def sq_norms(self, points: Points = None) -> torch.Tensor:
        """``|h(p)|^2`` exactly, at every pixel ``(B, H, W)`` or at ``points`` ``(B, N)``."""
        pts = None if points is None else self._points(points)
        batch = torch.arange(self.batch, device=self.device)
        if pts is None:
            height, width = self.input_size
            out = torch.zeros(self.batch, height, width, device=self.device)
        else:
            out = torch.zeros(self.batch, pts.shape[1], device=self.device)
        for layer in self.layers:
            value = self.values[layer.name]
            if value.dim() == 2:
                sq = (value.float() ** 2).sum(1)
                out += sq.view(-1, *[1] * (out.dim() - 1))
                continue
            h, w = value.shape[-2:]
            if layer.name not in self._grams:
                self._grams[layer.name] = _Grams(value)
            g = self._grams[layer.name]
            if pts is None:
                my, mx = self._mapper.extractor.axis_maps(layer, h, w)
                qy = torch.arange(self.input_size[0], device=self.device, dtype=torch.float64)
                qx = torch.arange(self.input_size[1], device=self.device, dtype=torch.float64)
                uy, ux = float(my.a) * qy + float(my.b), float(mx.a) * qx + float(mx.b)
                y0, y1, ty = _neighbours(uy, h)
                x0, x1, tx = _neighbours(ux, w)
                out += _quadratic_grid(g, (y0, y1, ty.float()), (x0, x1, tx.float()))
            else:
                uy, ux = unit_coordinates(layer, self._mapper.align, self.input_size, pts, (h, w))
                y0, y1, ty = _neighbours(uy, h)
                x0, x1, tx = _neighbours(ux, w)
                at = (batch[:, None],)
                out += _quadratic(g, at, (y0, y1, ty.float()), (x0, x1, tx.float()))
        return out.clamp_min_(0)


class LinearMapper:
    """Planned once for a model, layers and input size: runs the network prefix on a batch and
    keeps the chosen layers' maps (:class:`LayerMaps`), or applies a :class:`LinearMap` to them.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        input_size: ``H`` or ``(H, W)`` of the images.
        in_channels: Input channels; by default those of the model's first convolution.
        align: ``"rf"`` or ``"half-pixel"``.
        max_bytes: Largest output to allocate; by default half the memory available now.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec,
        input_size: int | str | Sequence[int],
        *,
        in_channels: int | None = None,
        align: Align = "rf",
        max_bytes: int | None = None,
    ) -> None:
        self.extractor = HypercolumnExtractor(
            model, layers, input_size, in_channels=in_channels, align=align, max_bytes=max_bytes
        )
        self.align = align
        self.layers = self.extractor.layers
        self.slices = self.extractor.slices
        self.channels = self.extractor.channels
        self.input_size = self.extractor.input_size
        self.in_channels = self.extractor.features.in_channels

    def maps(self, x: torch.Tensor) -> LayerMaps:
        """Run the network prefix on ``x`` ``(B, C, H, W)`` and keep the layers' maps."""
        return LayerMaps(self, self.extractor.features(x, as_maps=True))

    def __call__(
        self, x: torch.Tensor, m: LinearMap, points: Points = None, *, rows: int | None = None
    ) -> torch.Tensor:
        """``m`` applied to the hypercolumns of ``x``: dense ``(B, K, H, W)`` or at ``points``
        ``(B, N, K)``; with ``rows``, dense and a band of that many output rows at a time (for
        one image too large to run whole; see :mod:`~hypercolumns.features.bands`)."""
        if rows is None:
            return self.maps(x).linear(m, points)
        if points is not None:
            raise OptionError("rows= computes dense output in bands; leave points unset with it")
        banded = BandedHypercolumns(
            self.extractor.features.model,
            [layer.name for layer in self.layers],
            self.input_size,
            in_channels=self.in_channels,
            align=self.align,
            project=dict(m.weights),
        )
        out = torch.empty((1, m.outputs, *self.input_size), device=x.device)
        for r0, band in banded(x, rows):
            total = band.view(len(self.layers), m.outputs, *band.shape[1:]).sum(0)
            out[0, :, r0 : r0 + band.shape[1]] = total + m.bias.to(total)[:, None, None]
        return out


def _mapper(
    model: nn.Module, x: torch.Tensor, layers: LayerSpec, align: Align, max_bytes: int | None
) -> LinearMapper:
    image_batch(x)
    check_align(align)
    budget(max_bytes, "max_bytes")
    spec = layers if isinstance(layers, str | int) else tuple(spec_items(layers))

    def build() -> LinearMapper:
        size = tuple(x.shape[-2:])
        return LinearMapper(
            model, layers, size, in_channels=x.shape[1], align=align, max_bytes=max_bytes
        )

    key = ("linear", spec, tuple(x.shape[1:]), align, max_bytes)
    return planned(model, key, build, lambda p: p.extractor.features._hold_weakly())


def layer_maps(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec,
    *,
    align: Align = "rf",
    max_bytes: int | None = None,
) -> LayerMaps:
    """The chosen layers' maps of ``x`` at their own resolution, ready to be read per pixel
    (planned once per model, layers and input size, as :func:`hypercolumns` is)."""
    return _mapper(model, x, layers, align, max_bytes).maps(x)


def linear_map(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec,
    m: LinearMap,
    *,
    points: Points = None,
    align: Align = "rf",
    normalize: Normalize = None,
    max_bytes: int | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """``W h(p) + b`` of the hypercolumns of ``x`` without forming them: equal to
    ``hypercolumns(model, x, layers, ...)`` followed by the map, to float rounding.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        x: Images ``(B, C, H, W)``.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        m: The map, one block per layer (:meth:`LinearMap.split` makes one from a matrix).
        points: ``None`` for dense ``(B, K, H, W)``; pixels as for ``hypercolumns`` for
            ``(B, N, K)``.
        align: ``"rf"`` or ``"half-pixel"``.
        normalize: ``None``, or layer name to ``(mean, std)`` ``(C,)`` tensors to standardise
            with first (folded into the map). ``"l2"`` is refused: it scales each sampled
            hypercolumn, which a map at the layers' resolution cannot do exactly.
        max_bytes: Largest output to allocate; by default half the memory available now.
        rows: Compute one image densely in bands of this many rows, for images too large to
            run whole.
    """
    if isinstance(normalize, str):
        raise OptionError(
            f"normalize={normalize!r} scales each hypercolumn after sampling, which does not "
            "commute with a per-pixel linear map; use per-layer (mean, std) standardisation, or "
            "compute the hypercolumns explicitly (hc.hypercolumns) and apply the map to them"
        )
    mapper = _mapper(model, x, layers, align, max_bytes)
    if normalize is not None:
        standardize = mapper.extractor._check_normalize(normalize, list(mapper.slices))
        mean = torch.cat([standardize[n][0].reshape(-1) for n in mapper.slices])
        std = torch.cat([standardize[n][1].reshape(-1) for n in mapper.slices])
        matrix = torch.cat([m.weights[n] for n in mapper.slices], 1)
        m = LinearMap.split(matrix, mapper.slices, m.bias, mean=mean, std=std)
    return mapper(x, m, points, rows=rows)
