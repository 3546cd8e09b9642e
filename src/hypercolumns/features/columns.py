"""Hypercolumns (Hariharan et al. 2015): per pixel, the activations of every chosen layer above it.

Each layer's map is sampled at the pixel's position in that layer's own unit grid, bilinear and
clamped at the borders; global layers (fully connected, globally pooled, class tokens) are
broadcast to every pixel. The layers' blocks are stacked along the channels in the order given.

Alignment (``align``):

* ``"rf"`` (default): pixel ``p`` samples unit ``(p - center) / stride`` of the layer's exact
  receptive-field geometry, so a unit's value lands on the pixel its receptive field is
  centred on.
* ``"half-pixel"``: the classic ``F.interpolate(mode="bilinear", align_corners=False)`` of the
  map to the output size, as the papers did; it ignores where units really are (up to half a
  cell off for ResNet-style padding).

Dense output is ``(B, C, H, W)`` at the input resolution (or ``size``); with ``points`` it is
sparse, ``(B, N, C)``, sampled at exactly those pixels, identical to the dense result there.

Normalisation and projection are applied per layer to the low-resolution map, before sampling,
where they are cheap; both are affine per unit and bilinear weights sum to one, so the result
is exactly that of projecting the upsampled hypercolumns. ``normalize="l2"`` is the exception:
it scales every sampled hypercolumn's block of each layer to unit length, after sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch
from torch import nn

from hypercolumns.errors import HypercolumnsError, InputSizeError
from hypercolumns.features._resample import AxisMap, AxisPlan, PointPlan, resample
from hypercolumns.features.maps import FeatureExtractor
from hypercolumns.rf.geometry import as_fraction
from hypercolumns.rf.layers import Layer, LayerSpec, parse_size

__all__ = ["PCA", "HypercolumnExtractor", "Hypercolumns", "fit_pca", "hypercolumns"]

Align = Literal["rf", "half-pixel"]
Normalize = None | Literal["l2"] | Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Points = None | int | torch.Tensor


@dataclass(frozen=True)
class PCA:
    """A principal-component projection of one layer's channels: ``components @ (x - mean)``.

    Attributes:
        mean: ``(C,)`` mean of the samples it was fitted on.
        components: ``(K, C)`` principal axes, by decreasing variance.
        explained_variance: ``(K,)`` variance of the samples along each axis.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., C)`` vectors to ``(..., K)``."""
        return (x - self.mean.to(x)) @ self.components.to(x).T


@dataclass(frozen=True)
class Hypercolumns:
    """The result of :func:`hypercolumns`.

    Attributes:
        features: Dense ``(B, C, H, W)``, or sparse ``(B, N, C)`` when points were given.
        points: ``(B, N, 2)`` float ``(y, x)`` pixel coordinates of sparse samples, else ``None``.
        slices: Layer name to its channels in ``features``, in the order the layers were given.
        layers: The layers, in that order.
    """

    features: torch.Tensor
    points: torch.Tensor | None
    slices: dict[str, slice]
    layers: list[Layer] = field(repr=False)

    @property
    def dense(self) -> bool:
        return self.points is None

    def of(self, name: str) -> torch.Tensor:
        """The channels of layer ``name``: ``(B, C_layer, H, W)`` dense, ``(B, N, C_layer)``
        sparse."""
        if name not in self.slices:
            raise HypercolumnsError(
                f"no layer {name!r} in these hypercolumns; they hold {list(self.slices)}"
            )
        sl = self.slices[name]
        return self.features[:, sl] if self.dense else self.features[..., sl]


def _channels(layer: Layer) -> int:
    layout = layer.layout
    total = math.prod(layer.shape)
    if layout is None:
        return total
    spatial = {layout.y, layout.x}
    return math.prod(s for d, s in enumerate(layer.shape, start=1) if d not in spatial)


def _fraction_axis(layer: Layer, axis: int) -> tuple[Fraction, Fraction]:
    rf = layer.rf
    assert rf is not None
    if rf.axes is not None:
        return rf.axes[axis].center, rf.axes[axis].stride
    return as_fraction(rf.center[axis]), as_fraction(rf.stride[axis])


def available_bytes(device: torch.device) -> int | None:
    """Memory that can still be allocated on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gib(n: float) -> str:
    if n < 2**20:
        return f"{int(n)} bytes"
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    if not dtype.is_floating_point:
        raise HypercolumnsError(
            f"dtype must be a floating-point type such as torch.float32, torch.float16 or "
            f"torch.bfloat16, got {dtype}"
        )
    try:
        probe = torch.zeros(2, 2, dtype=dtype, device=device)
        torch.lerp(probe, probe, 0.5).index_select(
            0, torch.zeros(1, dtype=torch.long, device=device)
        )
    except (RuntimeError, TypeError, NotImplementedError) as err:
        raise HypercolumnsError(
            f"dtype {dtype} is not supported on {device.type} for hypercolumns "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); use "
            "torch.float32, or torch.float16 / torch.bfloat16 where the device supports them"
        ) from err


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    if a is b:
        return True
    return b is not None and a.shape == b.shape and a.device == b.device and torch.equal(a, b)


def _check_out(
    out: object, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    if not isinstance(out, torch.Tensor):
        raise HypercolumnsError(f"out must be a tensor, got {type(out).__name__}")
    got = (tuple(out.shape), out.dtype, out.device)
    if got != (shape, dtype, device) or not out.is_contiguous():
        layout = "" if out.is_contiguous() else " (not contiguous)"
        raise HypercolumnsError(
            f"out must be a contiguous {dtype} tensor of shape {shape} on {device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}{layout}; allocate it with "
            f"torch.empty({shape}, dtype={dtype})"
        )


def _projection(
    name: str, value: torch.Tensor | PCA, channels: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(value, PCA):
        matrix, mean = value.components, value.mean
    elif isinstance(value, torch.Tensor):
        matrix, mean = value, None
    else:
        raise HypercolumnsError(
            f"project[{name!r}] must be a (C_out, C_layer) tensor or a PCA from fit_pca, "
            f"got {type(value).__name__}"
        )
    if matrix.dim() != 2 or matrix.shape[1] != channels:
        raise HypercolumnsError(
            f"project[{name!r}] must have shape (C_out, {channels}) for layer {name!r} with "
            f"{channels} channels, got {tuple(matrix.shape)}"
        )
    if mean is not None and tuple(mean.shape) != (channels,):
        raise HypercolumnsError(
            f"the PCA for {name!r} has a mean of shape {tuple(mean.shape)}, expected ({channels},)"
        )
    return matrix, mean


class HypercolumnExtractor:
    """Hypercolumns of chosen layers for batches of one input size, planned once.

    Planning lists the model's layers, resolves ``layers``, checks the options and computes
    each layer's sampling geometry; every call then runs the network prefix once.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        layers: Names, indices, globs, ``"all"``, ``"3,8"`` or ``"NAME:cls"`` class tokens.
        input_size: ``H`` or ``(H, W)`` of the images.
        in_channels: Input channels; by default those of the model's first convolution.
        align: ``"rf"`` or ``"half-pixel"`` (see the module docstring).
        size: Output ``H`` or ``(H, W)`` of dense hypercolumns; by default the input size.
        dtype: Output dtype (e.g. ``torch.float16``); by default that of the features.
        normalize: ``None``, ``"l2"``, or a mapping layer name to ``(mean, std)`` ``(C,)``
            tensors (every layer must have one) to standardise each channel.
        project: Layer name to a ``(C_out, C_layer)`` matrix or a :class:`PCA`; other layers
            are kept whole.
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
        size: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        normalize: Normalize = None,
        project: Mapping[str, torch.Tensor | PCA] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if align not in ("rf", "half-pixel"):
            raise HypercolumnsError(f"align must be 'rf' or 'half-pixel', got {align!r}")
        self.features = FeatureExtractor(model, layers, input_size, in_channels=in_channels)
        self.layers = self.features.layers
        self.input_size = self.features.input_size
        self.size = self.input_size if size is None else parse_size(size)
        self.align = align
        self.dtype = dtype
        self.max_bytes = max_bytes
        names = [layer.name for layer in self.layers]
        for layer in self.layers:
            if layer.rf is None or (not layer.rf.is_global and layer.layout is None):
                why = (
                    "is unknown (see the GeometryWarning of `hypercolumns layers`)"
                    if layer.rf is None
                    else "is laid out as windows (tokens grouped by window), not as a map"
                )
                raise HypercolumnsError(
                    f"the output of layer {layer.name!r} {why}, so it cannot be placed on the "
                    "image; choose other layers (e.g. the block's output), or read it raw with "
                    "feature_maps"
                )
        self._standardize = self._check_normalize(normalize, names)
        self.normalize = "l2" if isinstance(normalize, str) else None
        unknown = [k for k in (project or {}) if k not in names]
        if unknown:
            raise HypercolumnsError(
                f"project names layers that were not chosen: {unknown}; chosen: {names}"
            )
        self._project = {
            name: _projection(name, value, _channels(layer))
            for layer in self.layers
            for name, value in (project or {}).items()
            if name == layer.name
        }
        self.slices: dict[str, slice] = {}
        start = 0
        for layer in self.layers:
            proj = self._project.get(layer.name)
            width = int(proj[0].shape[0]) if proj else _channels(layer)
            self.slices[layer.name] = slice(start, start + width)
            start += width
        self.channels = start
        self._plans: dict[tuple[str, int, int], tuple[AxisPlan, AxisPlan]] = {}
        self._point_plans: dict[str, PointPlan] = {}  # for the points of the last call
        self._planned_points: torch.Tensor | None = None
        self._sampled: dict[tuple[object, ...], torch.Tensor] = {}  # seeded points, last call

    @staticmethod
    def _check_normalize(
        normalize: Normalize, names: list[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if normalize is None or normalize == "l2":
            return {}
        if not isinstance(normalize, Mapping):
            raise HypercolumnsError(
                f"normalize must be None, 'l2', or a mapping layer name -> (mean, std) tensors, "
                f"got {normalize!r}"
            )
        missing = [n for n in names if n not in normalize]
        extra = [k for k in normalize if k not in names]
        if missing or extra:
            raise HypercolumnsError(
                f"normalize must give (mean, std) for exactly the chosen layers {names}; "
                f"missing: {missing}, not chosen: {extra}"
            )
        out = {}
        for name, pair in normalize.items():
            if not (
                isinstance(pair, tuple | list)
                and len(pair) == 2
                and all(isinstance(t, torch.Tensor) for t in pair)
            ):
                raise HypercolumnsError(
                    f"normalize[{name!r}] must be a (mean, std) pair of tensors, got {pair!r}"
                )
            out[name] = (pair[0], pair[1])
        return out

    # -- planning helpers ----------------------------------------------------------------------

    def _axis_maps(self, layer: Layer, h: int, w: int) -> tuple[AxisMap, AxisMap]:
        """Where output pixels sample an ``h x w`` map of ``layer``, per axis."""
        (height, width), (out_h, out_w) = self.input_size, self.size
        if self.align == "half-pixel":
            return AxisMap.half_pixel(h, out_h), AxisMap.half_pixel(w, out_w)
        (cy, sy), (cx, sx) = _fraction_axis(layer, 0), _fraction_axis(layer, 1)
        return AxisMap.rf(cy, sy, height, out_h), AxisMap.rf(cx, sx, width, out_w)

    def _axis_plans(self, layer: Layer, h: int, w: int) -> tuple[AxisPlan, AxisPlan]:
        key = (layer.name, h, w)
        if key not in self._plans:
            my, mx = self._axis_maps(layer, h, w)
            self._plans[key] = (AxisPlan(my, h, self.size[0]), AxisPlan(mx, w, self.size[1]))
        return self._plans[key]

    def _guard(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        need = math.prod(shape) * (torch.finfo(dtype).bits // 8)
        limit = self.max_bytes
        if limit is None:
            free = available_bytes(device)
            limit = None if free is None else free // 2
        if limit is not None and need > limit:
            raise HypercolumnsError(
                f"hypercolumns of shape {shape} in {dtype} need {_gib(need)}, more than the "
                f"{_gib(limit)} allowed (max_bytes); sample points (points=N), project the "
                "layers (project=..., fit_pca), use dtype=torch.float16, or a smaller size"
            )

    def _points(
        self,
        points: int | torch.Tensor,
        batch: int,
        labels: torch.Tensor | None,
        seed: int | None,
        device: torch.device,
    ) -> torch.Tensor:
        height, width = self.input_size
        if isinstance(points, bool) or not isinstance(points, int | torch.Tensor):
            raise HypercolumnsError(
                f"points must be an int N (pixels to sample) or a (B, N, 2) / (N, 2) tensor of "
                f"(y, x) pixel coordinates, got {type(points).__name__}"
            )
        if isinstance(points, int):
            seeded = labels is None and seed is not None
            key = (points, batch, seed, device)
            if seeded and key in self._sampled:
                return self._sampled[key]  # the same pixels as the last call
            pts = _sample(points, batch, (height, width), labels, seed).to(device)
            if seeded:
                self._sampled = {key: pts}
            return pts
        if labels is not None:
            raise HypercolumnsError("labels= stratifies sampled points: give points=N with it")
        pts = points
        if pts.dim() == 2:
            pts = pts.unsqueeze(0).expand(batch, -1, -1)
        if pts.dim() != 3 or pts.shape[0] != batch or pts.shape[2] != 2:
            raise HypercolumnsError(
                f"points must have shape (B={batch}, N, 2) or (N, 2) as (y, x), got "
                f"{tuple(points.shape)}"
            )
        if pts.is_complex() or pts.dtype == torch.bool:
            raise HypercolumnsError(f"points must be int or float coordinates, got {pts.dtype}")
        pts = pts.to(device=device, dtype=torch.float64)
        bad = ~(
            (pts[..., 0] >= -0.5)
            & (pts[..., 0] <= height - 0.5)
            & (pts[..., 1] >= -0.5)
            & (pts[..., 1] <= width - 0.5)
        )
        if bool(bad.any()):
            b, n = (int(i) for i in bad.nonzero()[0])
            y, x = (float(v) for v in pts[b, n])
            raise HypercolumnsError(
                f"point {n} of image {b}, (y, x) = ({y:g}, {x:g}), is outside the "
                f"{height}x{width} image (y must lie in [-0.5, {height - 0.5}], x in "
                f"[-0.5, {width - 0.5}]); {int(bad.sum())} point(s) are outside in all"
            )
        return pts

    # -- running ---------------------------------------------------------------------------------

    def _prepare(self, layer: Layer, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Standardise and project one layer's ``(B, C, h, w)`` map or ``(B, C)`` vector, in
        the wider of its dtype and the output's."""
        if layer.name in self._standardize:
            mean, std = (
                t.to(value).reshape(-1, *[1] * (value.dim() - 2))
                for t in self._standardize[layer.name]
            )
            value = (value - mean) / std
        if layer.name in self._project:
            matrix, center = self._project[layer.name]
            matrix = matrix.to(value)
            flat = value.reshape(value.shape[0], value.shape[1], -1)
            projected = torch.matmul(matrix, flat)
            if center is not None:
                projected = projected - (matrix @ center.to(value)).unsqueeze(-1)
            value = projected.reshape(value.shape[0], -1, *value.shape[2:])
        # sampled at the wider of the two precisions, rounded once into the output
        return value.to(torch.promote_types(value.dtype, dtype))

    def __call__(
        self,
        x: torch.Tensor,
        points: Points = None,
        *,
        labels: torch.Tensor | None = None,
        seed: int | None = 0,
        out: torch.Tensor | None = None,
    ) -> Hypercolumns:
        """Hypercolumns of the batch ``x`` ``(B, C, H, W)``; see :func:`hypercolumns`.

        Each layer is upsampled or sampled into the output inside its forward hook, as soon as
        its module has run, so no feature map is kept or copied.

        Args:
            out: A contiguous tensor of the result's shape, dtype and device to write into and
                return as ``features``, instead of allocating one: reusing one buffer across
                calls saves allocating (and first touching) a large output every time.
        """
        self.features.check(x)
        batch, device = x.shape[0], x.device
        dtype = self.dtype or (x.dtype if x.is_floating_point() else torch.float32)
        if self.dtype is not None:
            _check_dtype(self.dtype, device)
        if labels is not None and points is None:
            raise HypercolumnsError("labels= stratifies sampled points: give points=N with it")
        pts = None if points is None else self._points(points, batch, labels, seed, device)
        if pts is not None and not _same(pts, self._planned_points):
            self._point_plans.clear()
            self._planned_points = pts
        if pts is None:
            shape: tuple[int, ...] = (batch, self.channels, *self.size)
        elif self.size != self.input_size:
            raise HypercolumnsError(
                f"size={self.size} only applies to dense hypercolumns; sparse points are "
                "input pixel coordinates, so leave size unset with points"
            )
        else:
            shape = (batch, pts.shape[1], self.channels)
        if out is None:
            self._guard(shape, dtype, device)
            result = torch.empty(shape, dtype=dtype, device=device)
        else:
            _check_out(out, shape, dtype, device)
            result = out

        def consume(layer: Layer, value: torch.Tensor) -> None:
            value = self._prepare(layer, value, dtype)
            sl = self.slices[layer.name]
            if pts is None:
                self._dense(layer, value, result[:, sl])
            else:
                self._sparse(layer, value, pts, result[..., sl])

        self.features.stream(x, consume)
        if self.normalize == "l2":
            for sl in self.slices.values():
                block = result[:, sl] if pts is None else result[..., sl]
                dim = 1 if pts is None else -1
                norm = torch.linalg.vector_norm(block, dim=dim, keepdim=True, dtype=torch.float32)
                block.div_(norm.clamp_min(1e-12).to(dtype))
        return Hypercolumns(
            result,
            None if pts is None else pts.to(torch.float32),
            dict(self.slices),
            list(self.layers),
        )

    def _dense(self, layer: Layer, value: torch.Tensor, target: torch.Tensor) -> None:
        if value.dim() == 2:  # global: one vector broadcast to every pixel
            target.copy_(value[:, :, None, None])
            return
        resample(value, *self._axis_plans(layer, *value.shape[-2:]), target)

    def _sparse(
        self, layer: Layer, value: torch.Tensor, pts: torch.Tensor, target: torch.Tensor
    ) -> None:
        if value.dim() == 2:
            target.copy_(value[:, None, :])
            return
        h, w = value.shape[-2:]
        plan = self._point_plans.get(layer.name)
        if plan is None or plan.key != (*pts.shape[:2], h, w, value.dtype):
            height, width = self.input_size
            py, px = pts[..., 0], pts[..., 1]
            if self.align == "half-pixel":
                uy = (py + 0.5) * (h / height) - 0.5
                ux = (px + 0.5) * (w / width) - 0.5
            else:
                (cy, sy), (cx, sx) = _fraction_axis(layer, 0), _fraction_axis(layer, 1)
                uy = (py - float(cy)) / float(sy)
                ux = (px - float(cx)) / float(sx)
            plan = self._point_plans[layer.name] = PointPlan(uy, ux, h, w, value.dtype)
        plan.sample(value, target)


def _sample(
    n: int, batch: int, size: tuple[int, int], labels: torch.Tensor | None, seed: int | None
) -> torch.Tensor:
    """``(B, n, 2)`` distinct pixels per image, uniform or stratified by ``labels``."""
    height, width = size
    if n < 1 or n > height * width:
        raise HypercolumnsError(
            f"points={n} cannot be sampled without replacement from a {height}x{width} image: "
            f"give 1 to {height * width} points"
        )
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    if labels is not None and (
        not isinstance(labels, torch.Tensor)
        or labels.shape != (batch, height, width)
        or labels.is_floating_point()
    ):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise HypercolumnsError(
            f"labels must be an int tensor of shape (B={batch}, {height}, {width}), got "
            f"{got}{'' if not isinstance(labels, torch.Tensor) else ' ' + str(labels.dtype)}"
        )
    flat_all: list[torch.Tensor] = []
    for b in range(batch):
        if labels is None:
            flat = torch.randperm(height * width, generator=gen)[:n]
        else:
            flat = _stratified(n, labels[b].reshape(-1).cpu(), gen, b)
        flat_all.append(flat)
    flat_t = torch.stack(flat_all)
    return torch.stack((flat_t // width, flat_t % width), dim=-1).to(torch.float64)


def _stratified(n: int, labels: torch.Tensor, gen: torch.Generator, b: int) -> torch.Tensor:
    """``n`` pixels, as equal a number per label present as the labels' sizes allow (pixels
    with negative labels are never chosen)."""
    present = [int(v) for v in torch.unique(labels) if v >= 0]
    pools = [(labels == v).nonzero().squeeze(1) for v in present]
    available = sum(len(p) for p in pools)
    if available < n:
        raise HypercolumnsError(
            f"image {b} has {available} labelled (non-negative) pixels, fewer than points={n}"
        )
    quota = [0] * len(pools)
    left, open_ = n, list(range(len(pools)))
    while left:  # water-filling: equal shares, a small label gives its surplus to the others
        share = max(1, left // len(open_))
        for i in list(open_):
            take = min(share, len(pools[i]) - quota[i], left)
            quota[i] += take
            left -= take
            if quota[i] == len(pools[i]):
                open_.remove(i)
            if not left:
                break
    chosen = [
        p[torch.randperm(len(p), generator=gen)[:q]] for p, q in zip(pools, quota, strict=True)
    ]
    return torch.cat(chosen)


def hypercolumns(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec,
    *,
    points: Points = None,
    align: Align = "rf",
    size: int | Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    normalize: Normalize = None,
    project: Mapping[str, torch.Tensor | PCA] | None = None,
    max_bytes: int | None = None,
    labels: torch.Tensor | None = None,
    seed: int | None = 0,
) -> Hypercolumns:
    """Hypercolumns of the images ``x``: per pixel, the chosen layers' activations stacked.

    For many batches of one size build a :class:`HypercolumnExtractor` once instead.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        x: Images ``(B, C, H, W)``.
        layers: Names, indices (negative from the end), globs, ``"all"``, ``"3,8"``, or
            ``"NAME:cls"`` (a vision transformer's class token, broadcast like a global layer).
        points: ``None`` for dense output; a ``(B, N, 2)`` (or ``(N, 2)``, shared by the
            batch) int or float tensor of ``(y, x)`` pixel coordinates; or an int ``N`` of
            pixels to sample per image, uniformly without replacement (stratified by
            ``labels`` when given).
        align: ``"rf"`` or ``"half-pixel"`` (see the module docstring).
        size: Output ``H`` or ``(H, W)`` of dense hypercolumns; by default the input size.
        dtype: Output dtype, e.g. ``torch.float16``.
        normalize: ``None``, ``"l2"`` (each layer's block of every hypercolumn scaled to unit
            length), or layer name to ``(mean, std)`` ``(C,)`` tensors to standardise with.
        project: Layer name to a ``(C_out, C_layer)`` matrix or a :class:`PCA` from
            :func:`fit_pca`, applied before upsampling.
        max_bytes: Largest output to allocate; by default half the memory available now.
        labels: ``(B, H, W)`` int labels: with ``points=N``, equal numbers of points per
            label present (negative labels are never sampled).
        seed: Seed of the point sampling; ``None`` for a fresh one each call.

    Returns:
        :class:`Hypercolumns`: dense ``features`` ``(B, C, H, W)`` or sparse ``(B, N, C)``,
        ``points``, and ``slices`` mapping each layer to its channels.

    Raises:
        LayerNotFoundError: A layer is unknown or given twice.
        InputSizeError: ``x`` is not a ``(B, C, H, W)`` batch.
        HypercolumnsError: Points outside the image, an output larger than ``max_bytes``, a
            dtype the device cannot do, or a bad ``normalize`` / ``project``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputSizeError(f"expected images of shape (B, C, H, W), got {got}")
    extractor = HypercolumnExtractor(
        model,
        layers,
        tuple(x.shape[-2:]),
        in_channels=x.shape[1],
        align=align,
        size=size,
        dtype=dtype,
        normalize=normalize,
        project=project,
        max_bytes=max_bytes,
    )
    return extractor(x, points, labels=labels, seed=seed)


def fit_pca(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    layers: LayerSpec,
    *,
    n_components: int | Mapping[str, int],
    points: int = 256,
    seed: int | None = 0,
    align: Align = "rf",
) -> dict[str, PCA]:
    """Principal components of each layer's hypercolumn block, fitted on sampled pixels.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        images: A ``(B, C, H, W)`` batch, or an iterable of such batches.
        layers: As for :func:`hypercolumns`.
        n_components: Components per layer, or layer name to components.
        points: Pixels sampled per image (global layers count once per image).
        seed: Seed of the point sampling.
        align: As for :func:`hypercolumns`.

    Returns:
        Layer name to :class:`PCA`, ready for ``hypercolumns(..., project=...)``.
    """
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    extractors: dict[tuple[int, ...], HypercolumnExtractor] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    for i, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            got = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise InputSizeError(f"images must be (B, C, H, W) batches, got {got}")
        key = tuple(batch.shape[1:])
        if key not in extractors:
            extractors[key] = HypercolumnExtractor(
                model, layers, key[1:], in_channels=key[0], align=align
            )
        ext = extractors[key]
        n = min(points, key[1] * key[2])
        result = ext(batch, n, seed=None if seed is None else seed + i)
        for layer in result.layers:
            block = result.of(layer.name).float()
            rows = block[:, 0] if layer.rf is not None and layer.rf.is_global else block
            samples.setdefault(layer.name, []).append(rows.reshape(-1, block.shape[-1]))
    if not samples:
        raise HypercolumnsError("fit_pca needs at least one batch of images")
    fitted: dict[str, PCA] = {}
    for name, parts in samples.items():
        data = torch.cat(parts)
        k = n_components if isinstance(n_components, int) else n_components.get(name)
        if k is None:
            raise HypercolumnsError(f"n_components gives no number for layer {name!r}")
        limit = min(data.shape)
        if not 1 <= k <= limit:
            raise HypercolumnsError(
                f"n_components={k} for layer {name!r} must lie in 1..{limit}: it has "
                f"{data.shape[1]} channels and {data.shape[0]} samples; sample more points or "
                "images, or ask for fewer components"
            )
        mean = data.mean(0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
        variance = s[:k] ** 2 / max(data.shape[0] - 1, 1)
        fitted[name] = PCA(mean=mean, components=vh[:k].contiguous(), explained_variance=variance)
    return fitted
