"""Effective receptive fields (Luo, Li, Urtasun and Zemel, NeurIPS 2016).

The theoretical receptive field of a unit says which input pixels *can* influence it; the
effective receptive field (ERF) says how much each one *does*. It is measured from gradients:
for each input ``x``, the gradient of the unit's value (summed over the layer's channels) with
respect to ``x``, its absolute value summed over the input channels, averaged over the inputs::

    raw[y, x] = mean over inputs of  sum over c of | d(sum over k of out[k, i, j]) / d in[c, y, x] |

and ``map = raw / raw.sum()``, a distribution over the input pixels. The model runs in eval mode
with its weights as given (random weights show the architecture's ERF, trained ones what
training made of it). A batch of inputs takes one forward and one backward pass: in eval mode
the samples do not interact, so the gradient of the unit summed over the batch is, for every
sample, that sample's own gradient. Only the part of the network up to the layer runs.

Inputs: ``"noise"`` draws standard normal images *in the model's normalised space* (what the
model sees after ``(x - mean) / std``), seeded, each sample drawn on its own so results do not
depend on the batch size; images are loaded with :func:`hypercolumns.images.load_image` and
resized to the input size (aspect ratio not kept).

Statistics (see ``docs/erf.md`` for the exact definitions), all in input pixels:

* ``centroid``, ``std``: mean and per-axis standard deviation of ``map`` as a distribution;
* ``mass_radius[t]``: half-width of the smallest square centred on the unit's theoretical centre
  that holds ``t`` % of the map;
* ``area_ratio[t]``: RepLKNet's high-contribution area ratio (Ding et al., CVPR 2022);
* ``erf_to_rf``: side of the 95 % square over the unit's theoretical receptive-field size.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hypercolumns._checks import parse_size, positive_int
from hypercolumns._forward import StopForward, evaluating, first_tensor, hooked
from hypercolumns.errors import HypercolumnsError, ImageError, InputSizeError, ModelError
from hypercolumns.models import input_channels
from hypercolumns.rf.geometry import ReceptiveField
from hypercolumns.rf.layers import Layer, MapLayout, select
from hypercolumns.rf.layers import layers as list_layers

__all__ = [
    "AREA_LEVELS",
    "ERF",
    "MASS_LEVELS",
    "area_ratio",
    "center_unit",
    "erf",
    "mass_radius",
    "moments",
]

MASS_LEVELS = (20, 30, 50, 90, 95, 99)
"""Percentages of the ERF's mass for which :attr:`ERF.mass_radius` is reported."""
AREA_LEVELS = (20, 30, 50, 99)
"""Percentages for which :attr:`ERF.area_ratio` is reported (those of RepLKNet)."""

Unit = Literal["center"] | Sequence[int]
Inputs = Literal["noise"] | torch.Tensor | Sequence[str | Path]
Progress = Callable[[int, int], None]
_TOLERANCE = 1e-12  # relative slack when comparing cumulative mass with a share


def moments(m: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centroid ``(cy, cx)`` and per-axis standard deviation ``(sy, sx)`` of a map.

    The map ``(H, W)`` is read as a distribution over pixel centres (pixel ``(y, x)`` at
    coordinate ``(y, x)``), normalised by its sum.
    """
    m = m.double() / m.double().sum()
    py, px = m.sum(1), m.sum(0)
    ys = torch.arange(m.shape[0], dtype=torch.float64)
    xs = torch.arange(m.shape[1], dtype=torch.float64)
    cy, cx = float(py @ ys), float(px @ xs)
    vy, vx = float(py @ (ys - cy) ** 2), float(px @ (xs - cx) ** 2)
    return (cy, cx), (math.sqrt(max(vy, 0.0)), math.sqrt(max(vx, 0.0)))


def _squares(
    m: torch.Tensor, center: tuple[float, float], levels: Sequence[int]
) -> dict[int, tuple[float, int]]:
    """Per level ``t``: the half-width ``r`` of the smallest square centred at ``center`` whose
    pixels hold at least ``t`` % of the map's sum, and how many pixels of the image it covers.

    A pixel lies in the square of half-width ``r`` when ``max(|y - cy|, |x - cx|) <= r``, so
    the candidate half-widths are the distinct distances of pixels from the centre.
    """
    h, w = m.shape
    dy = (torch.arange(h, dtype=torch.float64) - center[0]).abs()
    dx = (torch.arange(w, dtype=torch.float64) - center[1]).abs()
    dist = torch.round(torch.maximum(dy[:, None], dx[None, :]).flatten(), decimals=9)
    order = torch.argsort(dist, stable=True)
    dist = dist[order]
    cum = torch.cumsum(m.double().flatten()[order], 0)
    last = torch.ones_like(dist, dtype=torch.bool)  # the last pixel of each distance ring
    last[:-1] = dist[1:] != dist[:-1]
    total = float(cum[-1])
    out: dict[int, tuple[float, int]] = {}
    for t in levels:
        ok = last & (cum >= (t / 100 - _TOLERANCE) * total)
        k = int(torch.nonzero(ok)[0, 0])
        out[t] = (float(dist[k]), k + 1)
    return out


def mass_radius(
    m: torch.Tensor, center: tuple[float, float], levels: Sequence[int] = MASS_LEVELS
) -> dict[int, float]:
    """Half-width ``r`` (input pixels) of the smallest square centred at ``center`` holding at
    least ``t`` % of the map, for each ``t`` in ``levels``.

    The square of half-width ``r`` holds the pixels whose centres lie at most ``r`` from
    ``center`` along both axes: ``2r + 1`` pixels a side when ``center`` is a pixel centre (or
    halfway between two) and the square is inside the image. Squares are not clipped: they may
    reach past the image border, where there are no pixels and so no mass.
    """
    return {t: r for t, (r, _) in _squares(m, center, levels).items()}


def area_ratio(
    raw: torch.Tensor, center: tuple[float, float], levels: Sequence[int] = AREA_LEVELS
) -> dict[int, float]:
    """RepLKNet's high-contribution area ratio (Ding et al., CVPR 2022).

    The raw contribution map is rescaled as ``log10(raw + 1)`` and divided by its maximum;
    then, for each ``t``, the area of the smallest square centred at ``center`` holding at least
    ``t`` % of the rescaled map's total, over the input area ``H * W``. The area counts the
    square's pixels inside the image, so the ratio is at most 1.

    Args:
        raw: ``(H, W)`` mean absolute gradients, unnormalised (the logarithm depends on their
            scale, as in RepLKNet).
        center: The square's centre ``(y, x)`` in input pixels.
        levels: Percentages.
    """
    scaled = torch.log10(raw.double() + 1)
    peak = float(scaled.max())
    if peak > 0:
        scaled = scaled / peak
    area = raw.shape[0] * raw.shape[1]
    return {t: n / area for t, (_, n) in _squares(scaled, center, levels).items()}


@dataclass(frozen=True, eq=False)
class ERF:
    """The effective receptive field of one unit, and its statistics.

    Statistics are computed on first access; every length is in input pixels and every pair is
    ``(y, x)``.

    Attributes:
        map: ``(H, W)`` float64 contribution of each input pixel, summing to 1.
        scale: Sum of the raw mean absolute gradients (``map * scale`` is the raw map).
        layer: The layer, with its theoretical receptive field ``layer.rf``.
        unit: The unit ``(i, j)`` in the layer's grid.
        samples: Inputs averaged over.
        inputs: What was averaged over: ``"noise"``, ``"tensor"`` or ``"images"``.
    """

    map: torch.Tensor = field(repr=False)
    scale: float
    layer: Layer = field(repr=False)
    unit: tuple[int, int]
    samples: int
    inputs: str

    @property
    def input_size(self) -> tuple[int, int]:
        return (int(self.map.shape[0]), int(self.map.shape[1]))

    @property
    def raw(self) -> torch.Tensor:
        """``(H, W)`` mean absolute gradient per input pixel, as measured."""
        return self.map * self.scale

    @property
    def inputs_text(self) -> str:
        """What was averaged over, in words: ``"32 noise inputs"``, ``"1 image"``..."""
        n, s = self.samples, "s" if self.samples != 1 else ""
        what = {"noise": f"noise input{s}", "images": f"image{s}"}.get(self.inputs, f"input{s}")
        return f"{n} {what}"

    @property
    def rf(self) -> ReceptiveField:
        """The layer's theoretical receptive field."""
        assert self.layer.rf is not None  # erf() only measures layers of known geometry
        return self.layer.rf

    @property
    def rf_center(self) -> tuple[float, float]:
        """Input coordinate of the unit's centre (the theoretical receptive field's)."""
        return self.rf.unit_center(*self.unit)

    @property
    def rf_box(self) -> tuple[float, float, float, float]:
        """First and last input pixel ``(y0, x0, y1, x1)`` of the unit's theoretical receptive
        field, exact and *not* clipped: it may reach past the image (into the padding)."""
        return self.rf.unit_box(*self.unit)

    @property
    def rf_box_clipped(self) -> tuple[float, float, float, float]:
        """:attr:`rf_box` clipped to the image: the input pixels that can influence the unit."""
        y0, x0, y1, x1 = self.rf_box
        h, w = self.input_size
        return (max(y0, 0.0), max(x0, 0.0), min(y1, h - 1.0), min(x1, w - 1.0))

    @property
    def rf_size(self) -> tuple[int, int]:
        """Extent of the unit's theoretical receptive field, unclipped (``layer.rf.size`` for
        uniform layers; a unit's own extent may be smaller in a non-uniform layer)."""
        y0, x0, y1, x1 = self.rf_box
        return (round(y1 - y0) + 1, round(x1 - x0) + 1)

    @cached_property
    def _moments(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return moments(self.map)

    @property
    def centroid(self) -> tuple[float, float]:
        """Mean input position of the map seen as a distribution."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, float]:
        """Per-axis standard deviation of the map around its centroid."""
        return self._moments[1]

    @cached_property
    def mass_radius(self) -> dict[int, float]:
        """Per percentage in :data:`MASS_LEVELS`: the half-width of the smallest square centred
        on :attr:`rf_center` holding that share of the map (see :func:`mass_radius`)."""
        return mass_radius(self.map, self.rf_center, MASS_LEVELS)

    @cached_property
    def area_ratio(self) -> dict[int, float]:
        """Per percentage in :data:`AREA_LEVELS`: RepLKNet's high-contribution area ratio of
        the raw map around :attr:`rf_center` (see :func:`area_ratio`)."""
        return area_ratio(self.raw, self.rf_center, AREA_LEVELS)

    @property
    def erf_to_rf(self) -> tuple[float, float]:
        """Side of the 95 % square (``2 r + 1``) over the unit's receptive-field size, per axis."""
        side = 2 * self.mass_radius[95] + 1
        return (side / self.rf_size[0], side / self.rf_size[1])

    def to_dict(self, *, with_map: bool = False) -> dict[str, Any]:
        """A JSON-ready record (the ``hypercolumns erf --format json`` output).

        Args:
            with_map: Include the map as nested lists (rows of ``W`` values).
        """
        rf = self.rf
        out: dict[str, Any] = {
            "layer": self.layer.name,
            "unit": list(self.unit),
            "input_size": list(self.input_size),
            "inputs": self.inputs,
            "samples": self.samples,
            "rf_size": list(self.rf_size),
            "rf_center": list(self.rf_center),
            "rf_box": list(self.rf_box),
            "rf_box_clipped": list(self.rf_box_clipped),
            "stride": list(rf.stride),
            "uniform": rf.uniform,
            "aligned": rf.aligned,
            "centroid": list(self.centroid),
            "std": list(self.std),
            "mass_radius": {str(t): r for t, r in self.mass_radius.items()},
            "area_ratio": {str(t): a for t, a in self.area_ratio.items()},
            "erf_to_rf": list(self.erf_to_rf),
            "scale": self.scale,
        }
        if with_map:
            out["map"] = self.map.tolist()
        return out


def center_unit(layer: Layer) -> tuple[int, int]:
    """The unit at the middle of a spatial layer's grid: ``((h - 1) // 2, (w - 1) // 2)``."""
    if layer.layout is None:
        raise HypercolumnsError(f"layer {layer.name!r} has no spatial grid")
    h, w = layer.layout.grid
    return ((h - 1) // 2, (w - 1) // 2)


def _spatial(layer: Layer) -> MapLayout:
    if layer.rf is None:
        raise HypercolumnsError(
            f"the geometry of layer {layer.name!r} is unknown (see the GeometryWarning of "
            "`hypercolumns layers`), so its units cannot be located; choose another layer"
        )
    if layer.layout is None:
        raise HypercolumnsError(
            f"layer {layer.name!r} is global (output shape {layer.shape}): it has no spatial "
            "units, so every pixel reaches it; choose a spatial layer (see `hypercolumns layers`)"
        )
    return layer.layout


def _unit(spec: Unit, layer: Layer, layout: MapLayout) -> tuple[int, int]:
    if isinstance(spec, str) and spec == "center":
        return center_unit(layer)
    try:
        i, j = (operator.index(v) for v in spec)
    except (TypeError, ValueError) as err:
        raise HypercolumnsError(
            f"unit must be 'center' or two integers (i, j), got {spec!r}"
        ) from err
    h, w = layout.grid
    if not (0 <= i < h and 0 <= j < w):
        raise HypercolumnsError(
            f"unit ({i}, {j}) is outside layer {layer.name!r}, whose grid is {h}x{w} units "
            f"(i in 0..{h - 1}, j in 0..{w - 1})"
        )
    return i, j


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _batches(
    inputs: Inputs,
    model: nn.Module,
    size: tuple[int, int],
    channels: int,
    samples: int,
    seed: int,
    batch_size: int,
) -> tuple[str, int, Iterator[torch.Tensor]]:
    """What the inputs are, how many are used, and the batches, made one at a time."""
    shape = (channels, *size)
    if isinstance(inputs, str):
        if inputs != "noise":
            raise HypercolumnsError(
                f"inputs must be 'noise', a (N, C, H, W) tensor or a list of image paths, got "
                f"{inputs!r} (for one image, pass [path])"
            )
        gen = torch.Generator().manual_seed(seed)

        def noise() -> Iterator[torch.Tensor]:
            for a, b in _chunks(samples, batch_size):  # one draw per sample: any batch size
                yield torch.cat([torch.randn((1, *shape), generator=gen) for _ in range(a, b)])

        return "noise", samples, noise()
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != shape:
            raise InputSizeError(
                f"expected inputs of shape (N, {shape[0]}, {shape[1]}, {shape[2]}) for input "
                f"size {size[0]}x{size[1]}, got {tuple(inputs.shape)}"
            )
        if inputs.shape[0] == 0:
            raise InputSizeError("the inputs tensor holds no samples (N = 0)")
        data = inputs.detach()[:samples]
        return "tensor", len(data), (data[a:b] for a, b in _chunks(len(data), batch_size))
    paths = [Path(p) for p in inputs][:samples]
    if not paths:
        raise ImageError("no images given: pass at least one image path, or inputs='noise'")
    from hypercolumns.images import load_image

    resize = f"{size[0]},{size[1]}"

    def images() -> Iterator[torch.Tensor]:
        for a, b in _chunks(len(paths), batch_size):
            yield torch.cat(
                [load_image(p, model, channels=channels, resize=resize)[0] for p in paths[a:b]]
            )

    return "images", len(paths), images()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters need no gradient while the input's is taken (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _unit_value(
    model: nn.Module, layer: Layer, layout: MapLayout, x: torch.Tensor, unit: tuple[int, int]
) -> torch.Tensor:
    """The unit's value summed over its channels and the batch, with its graph to ``x``."""
    captured: list[torch.Tensor] = []

    def make_hook(_: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if t is not None and not captured:
                captured.append(t)
                raise StopForward

        return hook

    with hooked({layer.name: model.get_submodule(layer.name)}, make_hook), suppress(StopForward):
        model(x)
    if not captured:
        raise ModelError(f"layer {layer.name!r} produced no tensor when the model ran")
    return layout.to_map(captured[0])[:, :, unit[0], unit[1]].sum()


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def erf(
    model: nn.Module,
    layer: str | int,
    input_size: int | str | Sequence[int],
    *,
    unit: Unit = "center",
    inputs: Inputs = "noise",
    samples: int = 32,
    batch_size: int = 8,
    in_channels: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> ERF:
    """Measure the effective receptive field of one unit of ``layer``.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found (hooks removed,
            ``training`` and ``requires_grad`` flags restored, no ``.grad`` written).
        layer: One spatial layer: name or index (see :func:`hypercolumns.rf.layers.layers`).
        input_size: ``H`` or ``(H, W)`` of the inputs.
        unit: ``"center"`` (the middle of the grid, :func:`center_unit`) or ``(i, j)``.
        inputs: ``"noise"`` (standard normal in the model's normalised space), an ``(N, C, H,
            W)`` tensor of model inputs, or image file paths (resized to ``input_size``).
        samples: Largest number of inputs averaged over (noise draws this many; a tensor or a
            list of images gives its first ``samples``).
        batch_size: Inputs per forward and backward pass; bounds the memory.
        in_channels: Input channels; by default those of the model's first convolution.
        seed: Seed of the noise.
        device: Where to run; by default the device of the model's parameters.
        progress: Called as ``progress(done, total)`` after every batch.

    Returns:
        The map and its statistics.

    Raises:
        LayerNotFoundError: ``layer`` matches no layer, or more than one.
        InputSizeError: The input is too small for the model, or ``inputs`` has the wrong shape.
        ImageError: An image cannot be read, or none was given.
        HypercolumnsError: The layer is global or of unknown geometry, the unit is outside its
            grid, ``samples``/``batch_size`` is not positive, or the unit's gradient is zero or
            not finite.
    """
    samples = positive_int(samples, "samples")
    batch_size = positive_int(batch_size, "batch_size")
    size = parse_size(input_size)
    channels = input_channels(model) if in_channels is None else int(in_channels)
    found = select(list_layers(model, size, in_channels=channels), layer, input_size=size)
    if len(found) != 1:
        names = ", ".join(f.name for f in found)
        raise HypercolumnsError(f"name one layer, not {len(found)} ({names})")
    target = found[0]
    layout = _spatial(target)
    where = _unit(unit, target, layout)
    kind, count, batches = _batches(inputs, model, size, channels, samples, seed, batch_size)
    dev, dtype = _device(model, device), _dtype(model)
    total = torch.zeros(size, dtype=torch.float64)
    with evaluating(model), _frozen(model), torch.inference_mode(False), torch.enable_grad():
        done = 0
        for batch in batches:
            x = batch.to(dev, dtype).requires_grad_(True)
            value = _unit_value(model, target, layout, x, where)
            if not value.requires_grad:
                raise HypercolumnsError(
                    f"layer {target.name!r} does not depend on the input (no gradient reaches it)"
                )
            (grad,) = torch.autograd.grad(value, x)
            total += grad.abs().sum(1).double().cpu().sum(0)
            done += len(batch)
            del value, grad, x, batch
            if progress is not None:
                progress(done, count)
    raw = total / count
    scale = float(raw.sum())
    if not math.isfinite(scale):
        raise HypercolumnsError(
            f"the gradient of unit {where} of {target.name!r} is not finite (NaN or inf): the "
            "model overflows on these inputs"
        )
    if scale == 0:
        raise HypercolumnsError(
            f"the gradient of unit {where} of {target.name!r} is zero for every input (dead "
            "ReLUs?): try other inputs, more samples or trained weights"
        )
    return ERF(raw / scale, scale, target, where, count, kind)
