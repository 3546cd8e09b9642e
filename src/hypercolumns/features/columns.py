"""Hypercolumns (Hariharan et al. 2015): per pixel, the activations of every chosen layer above it.

Each layer's map is sampled at the pixel's position in that layer's own unit grid, bilinear and
clamped at the borders; global layers (fully connected, globally pooled, class tokens) are
broadcast to every pixel. The layers' blocks are stacked along the channels in the order given.

Alignment (``align``, see :mod:`hypercolumns.features.align`): ``"rf"`` (default) puts each
unit's value on the pixel its receptive field is centred on; ``"half-pixel"`` is the classic
``F.interpolate(mode="bilinear", align_corners=False)`` that the papers used.

Dense output is ``(B, C, H, W)`` at the input resolution (or ``size``); with ``points`` it is
sparse, ``(B, N, C)``, sampled at exactly those pixels, identical to the dense result there.

Normalisation and projection are applied per layer to the low-resolution map, before sampling,
where they are cheap; both are affine per unit and bilinear weights sum to one, so the result
is exactly that of projecting the upsampled hypercolumns. ``normalize="l2"`` is the exception:
it scales every sampled hypercolumn's block of each layer to unit length, after sampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from hypercolumns._checks import budget, image_batch, parse_size
from hypercolumns.errors import LayerNotFoundError, OptionError, OutputTooLargeError
from hypercolumns.features._plans import planned
from hypercolumns.features._resample import AxisMap, AxisPlan, PointPlan, resample
from hypercolumns.features.align import Align, axis_maps, check_align, unit_coordinates
from hypercolumns.features.maps import FeatureExtractor
from hypercolumns.features.points import check_points, sample_points
from hypercolumns.rf.layers import Layer, LayerSpec, spec_items

__all__ = ["HypercolumnExtractor", "Hypercolumns", "Projection", "channel_ranges", "hypercolumns"]

Normalize = None | Literal["l2"] | Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Points = None | int | torch.Tensor


class Projection(Protocol):
    """A learned projection of one layer's channels, ``components @ (x - mean)``, such as the
    :class:`~hypercolumns.features.pca.PCA` that ``fit_pca`` returns."""

    @property
    def components(self) -> torch.Tensor: ...

    @property
    def mean(self) -> torch.Tensor: ...


def channel_ranges(slices: Mapping[str, slice]) -> dict[str, list[int]]:
    """Layer name to ``[start, stop]`` of its channels: ``slices`` as JSON-ready lists."""
    return {name: [int(s.start), int(s.stop)] for name, s in slices.items()}


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
            raise LayerNotFoundError(
                f"no layer {name!r} in these hypercolumns; they hold {list(self.slices)}"
            )
        sl = self.slices[name]
        return self.features[:, sl] if self.dense else self.features[..., sl]

    def channel_ranges(self) -> dict[str, list[int]]:
        """Layer name to ``[start, stop]`` of its channels, as metadata records them."""
        return channel_ranges(self.slices)


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
        raise OptionError(
            f"dtype must be a floating-point type such as torch.float32, torch.float16 or "
            f"torch.bfloat16, got {dtype}"
        )
    try:
        probe = torch.zeros(2, 2, dtype=dtype, device=device)
        torch.lerp(probe, probe, 0.5).index_select(
            0, torch.zeros(1, dtype=torch.long, device=device)
        )
    except (RuntimeError, TypeError, NotImplementedError) as err:
        raise OptionError(
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
        raise OptionError(f"out must be a tensor, got {type(out).__name__}")
    got = (tuple(out.shape), out.dtype, out.device)
    if got != (shape, dtype, device) or not out.is_contiguous():
        layout = "" if out.is_contiguous() else " (not contiguous)"
        raise OptionError(
            f"out must be a contiguous {dtype} tensor of shape {shape} on {device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}{layout}; allocate it with "
            f"torch.empty({shape}, dtype={dtype})"
        )


def _projection(
    name: str, value: torch.Tensor | Projection, channels: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(value, torch.Tensor):
        matrix, mean = value, None
    elif isinstance(getattr(value, "components", None), torch.Tensor) and isinstance(
        getattr(value, "mean", None), torch.Tensor
    ):
        matrix, mean = value.components, value.mean
    else:
        raise OptionError(
            f"project[{name!r}] must be a (C_out, C_layer) tensor or a PCA from fit_pca, "
            f"got {type(value).__name__}"
        )
    if matrix.dim() != 2 or matrix.shape[1] != channels:
        raise OptionError(
            f"project[{name!r}] must have shape (C_out, {channels}) for layer {name!r} with "
            f"{channels} channels, got {tuple(matrix.shape)}"
        )
    if mean is not None and tuple(mean.shape) != (channels,):
        raise OptionError(
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
        project: Mapping[str, torch.Tensor | Projection] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        check_align(align)
        self.features = FeatureExtractor(model, layers, input_size, in_channels=in_channels)
        self.layers = self.features.layers
        self.input_size = self.features.input_size
        self.size = self.input_size if size is None else parse_size(size)
        self.align = align
        self.dtype = dtype
        self.max_bytes = budget(max_bytes, "max_bytes")
        names = [layer.name for layer in self.layers]
        for layer in self.layers:
            if layer.rf is None or (not layer.rf.is_global and layer.layout is None):
                why = (
                    "is unknown (see the GeometryWarning of `hypercolumns layers`)"
                    if layer.rf is None
                    else "is laid out as windows (tokens grouped by window), not as a map"
                )
                raise OptionError(
                    f"the output of layer {layer.name!r} {why}, so it cannot be placed on the "
                    "image; choose other layers (e.g. the block's output), or read it raw with "
                    "feature_maps"
                )
        self._standardize = self._check_normalize(normalize, names)
        self.normalize = "l2" if isinstance(normalize, str) else None
        unknown = [k for k in (project or {}) if k not in names]
        if unknown:
            raise OptionError(
                f"project names layers that were not chosen: {unknown}; chosen: {names}"
            )
        self._project = {
            name: _projection(name, value, layer.channels)
            for layer in self.layers
            for name, value in (project or {}).items()
            if name == layer.name
        }
        self.slices: dict[str, slice] = {}
        start = 0
        for layer in self.layers:
            proj = self._project.get(layer.name)
            width = int(proj[0].shape[0]) if proj else layer.channels
            self.slices[layer.name] = slice(start, start + width)
            start += width
        self.channels = start
        self._plans: dict[tuple[str, int, int], tuple[AxisPlan, AxisPlan]] = {}
        # the points of the last call and their plans, replaced as one (calls may run in threads)
        self._point_plans: tuple[torch.Tensor | None, dict[str, PointPlan]] = (None, {})
        self._sampled: dict[tuple[object, ...], torch.Tensor] = {}  # seeded points, last call

    @staticmethod
    def _check_normalize(
        normalize: Normalize, names: list[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if normalize is None or normalize == "l2":
            return {}
        if not isinstance(normalize, Mapping):
            raise OptionError(
                f"normalize must be None, 'l2', or a mapping layer name -> (mean, std) tensors, "
                f"got {normalize!r}"
            )
        missing = [n for n in names if n not in normalize]
        extra = [k for k in normalize if k not in names]
        if missing or extra:
            raise OptionError(
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
                raise OptionError(
                    f"normalize[{name!r}] must be a (mean, std) pair of tensors, got {pair!r}"
                )
            out[name] = (pair[0], pair[1])
        return out

    # -- planning helpers ----------------------------------------------------------------------

    def axis_maps(self, layer: Layer, h: int, w: int) -> tuple[AxisMap, AxisMap]:
        """Where output pixels sample an ``h x w`` map of ``layer``, per axis."""
        return axis_maps(layer, self.align, self.input_size, self.size, (h, w))

    def _axis_plans(self, layer: Layer, h: int, w: int) -> tuple[AxisPlan, AxisPlan]:
        key = (layer.name, h, w)
        if key not in self._plans:
            my, mx = self.axis_maps(layer, h, w)
            self._plans[key] = (AxisPlan(my, h, self.size[0]), AxisPlan(mx, w, self.size[1]))
        return self._plans[key]

    def _guard(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        need = math.prod(shape) * (torch.finfo(dtype).bits // 8)
        limit = self.max_bytes
        if limit is None:
            free = available_bytes(device)
            limit = None if free is None else free // 2
        if limit is not None and need > limit:
            raise OutputTooLargeError(
                f"hypercolumns of shape {shape} in {dtype} need {_gib(need)}, more than the "
                f"{_gib(limit)} allowed (max_bytes); sample points (points=N), project the "
                "layers (project=..., fit_pca), use dtype=torch.float16, or a smaller size",
                need=need,
                limit=limit,
                detail=f"hypercolumns of shape {shape} in {dtype}",
            )

    def _points(
        self,
        points: int | torch.Tensor,
        batch: int,
        labels: torch.Tensor | None,
        seed: int | None,
        device: torch.device,
    ) -> torch.Tensor:
        if isinstance(points, bool) or not isinstance(points, int | torch.Tensor):
            raise OptionError(
                f"points must be an int N (pixels to sample) or a (B, N, 2) / (N, 2) tensor of "
                f"(y, x) pixel coordinates, got {type(points).__name__}"
            )
        if isinstance(points, int):
            seeded = labels is None and seed is not None
            key = (points, batch, seed, device)
            last = self._sampled.get(key) if seeded else None
            if last is not None:
                return last  # the same pixels as the last call
            pts = sample_points(points, batch, self.input_size, labels, seed).to(device)
            if seeded:
                self._sampled = {key: pts}
            return pts
        if labels is not None:
            raise OptionError("labels= stratifies sampled points: give points=N with it")
        return check_points(points, batch, self.input_size, device)

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
        its module has run, so no feature map is kept or copied. At points on a CPU, the model
        runs channels-last (see :mod:`hypercolumns.features.maps`); dense output does not, so
        that a layer at the input's resolution equals :func:`feature_maps` exactly.

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
            raise OptionError("labels= stratifies sampled points: give points=N with it")
        pts = None if points is None else self._points(points, batch, labels, seed, device)
        planned, plans = self._point_plans
        if pts is not None and not _same(pts, planned):
            plans = {}
            self._point_plans = (pts, plans)
        if pts is None:
            shape: tuple[int, ...] = (batch, self.channels, *self.size)
        elif self.size != self.input_size:
            raise OptionError(
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
            if value.shape[0] != batch:  # a layout the analysis took for one: caught here
                raise OptionError(
                    f"the output of layer {layer.name!r} holds {value.shape[0]} rows for a batch "
                    f"of {batch} image(s) (patches, windows or tokens taken as a batch), not one "
                    "map or vector per image, so it cannot be placed on the image; choose other "
                    "layers (e.g. the block's output), or read it raw with feature_maps"
                )
            value = self._prepare(layer, value, dtype)
            sl = self.slices[layer.name]
            if pts is None:
                self._dense(layer, value, result[:, sl])
            else:
                self._sparse(layer, value, pts, plans, result[..., sl])

        self.features.stream(x, consume, channels_last=pts is not None)
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
        self,
        layer: Layer,
        value: torch.Tensor,
        pts: torch.Tensor,
        plans: dict[str, PointPlan],
        target: torch.Tensor,
    ) -> None:
        if value.dim() == 2:
            target.copy_(value[:, None, :])
            return
        h, w = value.shape[-2:]
        plan = plans.get(layer.name)
        if plan is None or plan.key != (*pts.shape[:2], h, w, value.dtype):
            uy, ux = unit_coordinates(layer, self.align, self.input_size, pts, (h, w))
            plan = plans[layer.name] = PointPlan(uy, ux, h, w, value.dtype)
        plan.sample(value, target)


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
    project: Mapping[str, torch.Tensor | Projection] | None = None,
    max_bytes: int | None = None,
    labels: torch.Tensor | None = None,
    seed: int | None = 0,
) -> Hypercolumns:
    """Hypercolumns of the images ``x``: per pixel, the chosen layers' activations stacked.

    Calling it in a loop costs what a planned :class:`HypercolumnExtractor` does: the plan
    (the receptive-field analysis and resampling tables) is kept per model, layers, input size
    and options, and made again when the model's modules change. Only calls with ``normalize``
    or ``project`` tensors are planned afresh each time.

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
        project: Layer name to a ``(C_out, C_layer)`` matrix or a
            :class:`~hypercolumns.features.pca.PCA` from
            :func:`~hypercolumns.features.pca.fit_pca`, applied before upsampling.
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
    image_batch(x)
    budget(max_bytes, "max_bytes")
    spec_items(layers)  # a malformed spec fails here, not in the plan cache

    def build() -> HypercolumnExtractor:
        return HypercolumnExtractor(
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

    key = _plan_key(layers, x, align, size, dtype, normalize, project, max_bytes)
    if key is None:
        extractor = build()
    else:
        extractor = planned(model, key, build, lambda e: e.features._hold_weakly())
    return extractor(x, points, labels=labels, seed=seed)


def _plan_key(
    layers: LayerSpec,
    x: torch.Tensor,
    align: Align,
    size: int | Sequence[int] | None,
    dtype: torch.dtype | None,
    normalize: Normalize,
    project: Mapping[str, torch.Tensor | Projection] | None,
    max_bytes: int | None,
) -> tuple[object, ...] | None:
    """What a one-shot plan depends on, or ``None`` not to keep one: tensors given for
    ``normalize`` or ``project`` may change in place, so those calls are planned afresh."""
    if project or not (normalize is None or normalize == "l2"):
        return None
    spec = layers if isinstance(layers, str | int) else tuple(layers)
    shape = tuple(x.shape[1:])
    size_key = size if size is None or isinstance(size, int) else tuple(size)
    try:
        key = (spec, shape, align, size_key, dtype, normalize, max_bytes)
        hash(key)
    except TypeError:
        return None
    return key
