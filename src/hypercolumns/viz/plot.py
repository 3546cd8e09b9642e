"""Figures: feature maps, channel grids, mean hypercolumn activation, receptive fields, ERFs.

Every function returns a :class:`matplotlib.figure.Figure` built directly (no ``pyplot``, so
no global figure state and no GUI backend); :func:`save` writes it as PNG, PDF or SVG by the
file extension. Titles name the layer and its shape; maps have colorbars; layouts are
constrained so nothing overlaps.

Images are ``(C, H, W)`` (or ``(1, C, H, W)``, ``(H, W)``) tensors or arrays with values in
``[0, 1]``, e.g. ``Preprocessing.unnormalize(x)`` of :func:`hypercolumns.images.load_image`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hypercolumns._atomic import check_writable, staged
from hypercolumns.errors import HypercolumnsError
from hypercolumns.rf.erf import ERF
from hypercolumns.rf.layers import Layer

__all__ = [
    "FORMATS",
    "channel_grid",
    "check_path",
    "erf_comparison",
    "erf_map",
    "erf_on_image",
    "feature_map",
    "mean_hypercolumn",
    "receptive_fields",
    "rf_boxes",
    "save",
    "unit_at",
]

FORMATS = (".png", ".pdf", ".svg")
_CMAP = "viridis"
Array = np.ndarray[Any, np.dtype[np.float64]]


def _array(t: torch.Tensor | np.ndarray[Any, Any]) -> Array:
    if isinstance(t, torch.Tensor):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def _maps(maps: torch.Tensor | np.ndarray[Any, Any]) -> Array:
    """``(C, H, W)`` from ``(C, H, W)`` or ``(1, C, H, W)``."""
    arr = _array(maps)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise HypercolumnsError(
            f"expected feature maps of shape (C, H, W) or (1, C, H, W), got {tuple(arr.shape)}; "
            "a global layer (shape (C,)) has no spatial map to draw"
        )
    return arr


def _image(image: torch.Tensor | np.ndarray[Any, Any]) -> Array:
    """``(H, W)`` or ``(H, W, 3)`` in ``[0, 1]`` for ``imshow``."""
    arr = _array(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) wins when ambiguous: the library's layout
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise HypercolumnsError(f"expected an image (C, H, W) or (H, W), got {tuple(arr.shape)}")
    return np.clip(arr, 0.0, 1.0)


def _name(layer: Layer | str | None) -> str:
    if layer is None:
        return "feature maps"
    return layer if isinstance(layer, str) else layer.name


def _shape(shape: Sequence[int]) -> str:
    return "\u00d7".join(str(int(s)) for s in shape)


def _show_image(ax: Any, img: Array, title: str) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="none")
    ax.set_title(title)
    ax.set_xlabel("x (input pixels)")
    ax.set_ylabel("y (input pixels)")


def feature_map(
    maps: torch.Tensor | np.ndarray[Any, Any],
    channel: int = 0,
    *,
    layer: Layer | str | None = None,
    image: torch.Tensor | np.ndarray[Any, Any] | None = None,
) -> Figure:
    """One channel of a layer's feature maps, with a colorbar.

    Args:
        maps: ``(C, H, W)`` or ``(1, C, H, W)`` activations of one layer.
        channel: Channel to draw (negative counts from the end).
        layer: The layer (or its name) for the title.
        image: The input image, drawn beside the map when given.
    """
    arr = _maps(maps)
    c = arr.shape[0]
    if not -c <= channel < c:
        raise HypercolumnsError(
            f"channel {channel} is out of range: {_name(layer)} has {c} channels (0..{c - 1})"
        )
    channel %= c
    fig = Figure(figsize=(9.5 if image is not None else 5.2, 4.4), layout="constrained")
    axes = fig.subplots(1, 2 if image is not None else 1, squeeze=False)[0]
    if image is not None:
        img = _image(image)
        _show_image(axes[0], img, f"input {_shape(img.shape[:2])}")
    ax = axes[-1]
    im = ax.imshow(arr[channel], cmap=_CMAP, interpolation="nearest")
    ax.set_title(f"{_name(layer)}, channel {channel}\nmaps {_shape(arr.shape)}")
    ax.set_xlabel("x (units)")
    ax.set_ylabel("y (units)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="activation")
    return fig


def channel_grid(
    maps: torch.Tensor | np.ndarray[Any, Any],
    channels: int | Sequence[int] = 16,
    *,
    layer: Layer | str | None = None,
    cols: int | None = None,
) -> Figure:
    """A grid of channels on one shared colour scale, with one colorbar.

    Args:
        maps: ``(C, H, W)`` or ``(1, C, H, W)`` activations of one layer.
        channels: How many channels to draw from the first, or which ones.
        layer: The layer (or its name) for the title.
        cols: Columns of the grid; by default about the square root of the count.
    """
    arr = _maps(maps)
    c = arr.shape[0]
    chosen = list(range(min(int(channels), c))) if isinstance(channels, int) else list(channels)
    bad = [k for k in chosen if not 0 <= k < c]
    if not chosen or bad:
        raise HypercolumnsError(
            f"channels {bad or chosen} are not valid for {_name(layer)} with {c} channels"
        )
    n = len(chosen)
    ncols = cols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    shown = arr[chosen]
    vmin, vmax = float(np.percentile(shown, 1)), float(np.percentile(shown, 99))
    if vmax <= vmin:
        vmin, vmax = float(shown.min()), float(shown.max()) + 1e-12
    fig = Figure(figsize=(1.7 * ncols + 1.2, 1.7 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(shown[k], cmap=_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"ch {chosen[k]}", fontsize=8)
    fig.suptitle(f"{_name(layer)}: {n} of {c} channels, maps {_shape(arr.shape)}")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="activation (1st-99th percentile)")
    return fig


def mean_hypercolumn(
    features: torch.Tensor | np.ndarray[Any, Any],
    image: torch.Tensor | np.ndarray[Any, Any] | None = None,
    *,
    layers: Sequence[Layer | str] = (),
) -> Figure:
    """The mean hypercolumn activation per pixel, beside the image.

    Args:
        features: Dense hypercolumns ``(C, H, W)`` or ``(1, C, H, W)``.
        image: The input image, drawn on the left when given.
        layers: The layers the hypercolumns stack, for the title.
    """
    arr = _maps(features)
    mean = arr.mean(axis=0)
    fig = Figure(figsize=(9.5 if image is not None else 5.2, 4.4), layout="constrained")
    axes = fig.subplots(1, 2 if image is not None else 1, squeeze=False)[0]
    if image is not None:
        img = _image(image)
        _show_image(axes[0], img, f"input {_shape(img.shape[:2])}")
    names = ", ".join(_name(layer) for layer in layers) or "all layers"
    ax = axes[-1]
    im = ax.imshow(mean, cmap=_CMAP, interpolation="nearest")
    ax.set_title(f"mean hypercolumn activation\n{names}; hypercolumns {_shape(arr.shape)}")
    ax.set_xlabel("x (input pixels)")
    ax.set_ylabel("y (input pixels)")
    fig.colorbar(im, ax=ax, shrink=0.85, label=f"mean over {arr.shape[0]} channels")
    return fig


def _center_unit(layer: Layer) -> tuple[int, int]:
    grid = _grid(layer)
    if grid is None:
        return (0, 0)
    h, w = grid
    return ((h - 1) // 2, (w - 1) // 2)


def receptive_fields(
    image: torch.Tensor | np.ndarray[Any, Any],
    layers: Sequence[Layer],
    *,
    units: Sequence[tuple[int, int]] | None = None,
) -> Figure:
    """Receptive-field boxes of one unit per layer, drawn on the image.

    Args:
        image: The input image.
        layers: Layers with known receptive fields (from :func:`hypercolumns.rf.layers.layers`
            on this image size).
        units: The ``(i, j)`` unit of each layer; by default the unit nearest the map centre.
            Boxes (:meth:`ReceptiveField.unit_box`) may reach past the image: padding.
    """
    img = _image(image)
    height, width = img.shape[:2]
    if units is not None and len(units) != len(layers):
        raise HypercolumnsError(f"got {len(units)} units for {len(layers)} layers")
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    _show_image(ax, img, f"theoretical receptive fields on the {height}\u00d7{width} input")
    rf_boxes(ax, layers, units, (height, width))
    if layers:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    return fig


def _grid(layer: Layer) -> tuple[int, int] | None:
    if len(layer.shape) >= 3 and layer.layout is not None:
        return layer.layout.grid
    if len(layer.shape) >= 3:
        return layer.shape[-2], layer.shape[-1]
    return None


def unit_at(layer: Layer, y: float, x: float) -> tuple[int, int]:
    """The unit ``(i, j)`` of ``layer`` whose receptive field is centred nearest the input
    pixel ``(y, x)`` (``(0, 0)`` for a global layer)."""
    grid = _grid(layer)
    if layer.rf is None or layer.rf.is_global or grid is None:
        return (0, 0)
    uy, ux = layer.rf.to_units(y, x)
    return (min(max(round(uy), 0), grid[0] - 1), min(max(round(ux), 0), grid[1] - 1))


def rf_boxes(
    ax: Any,
    layers: Sequence[Layer],
    units: Sequence[tuple[int, int]] | None,
    size: tuple[int, int],
) -> None:
    """Draw one receptive-field box (and centre) per layer on ``ax``, whose image is ``size``,
    and widen the limits to show boxes that reach past the image."""
    height, width = size
    colors = [f"C{k % 10}" for k in range(len(layers))]
    lo_y, lo_x, hi_y, hi_x = -0.5, -0.5, height - 0.5, width - 0.5
    for k, layer in enumerate(layers):
        rf = layer.rf
        if rf is None:
            raise HypercolumnsError(f"layer {layer.name!r} has an unknown receptive field")
        i, j = units[k] if units is not None else _center_unit(layer)
        y0, x0, y1, x1 = rf.unit_box(i, j)
        cy, cx = rf.unit_center(i, j) if not rf.is_global else ((y0 + y1) / 2, (x0 + x1) / 2)
        label = f"{layer.name} unit ({i},{j}): rf {_shape(rf.size)}, stride " + (
            "-" if rf.is_global else ",".join(f"{s:g}" for s in rf.stride)
        )
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5),
                x1 - x0 + 1,
                y1 - y0 + 1,
                fill=False,
                lw=1.8,
                edgecolor=colors[k],
                label=label,
            )
        )
        ax.plot([cx], [cy], marker="+", color=colors[k], markersize=9)
        lo_y, lo_x = min(lo_y, y0 - 0.5), min(lo_x, x0 - 0.5)
        hi_y, hi_x = max(hi_y, y1 + 0.5), max(hi_x, x1 + 0.5)
    pad = 0.02 * max(hi_y - lo_y, hi_x - lo_x)
    ax.set_xlim(lo_x - pad, hi_x + pad)
    ax.set_ylim(hi_y + pad, lo_y - pad)


def check_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` if its extension is one of :data:`FORMATS`."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise HypercolumnsError(
            f"cannot write a figure to {str(path)!r}: use a {', '.join(FORMATS)} file name"
        )
    check_writable(path)
    return path


def save(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (PNG, PDF or SVG by extension) atomically.

    Raises:
        HypercolumnsError: The extension is not one of :data:`FORMATS`.
    """
    path = check_path(path)
    with staged(path) as (tmp,), tmp.open("wb") as fh:
        fig.savefig(fh, format=path.suffix.lower()[1:], dpi=dpi)
    return path


def _erf_marks(ax: Any, erf: ERF) -> tuple[float, float, float, float]:
    """Draw the unit's theoretical box, its centre, the ERF's centroid and its 95 % square;
    return the limits ``(y0, x0, y1, x1)`` that show the image and the box."""
    y0, x0, y1, x1 = erf.rf_box
    ry, rx = erf.rf_size
    ax.add_patch(
        Rectangle((x0 - 0.5, y0 - 0.5), rx, ry, fill=False, lw=1.8, edgecolor="C3",
                  label=f"theoretical rf {ry:g}\u00d7{rx:g}")
    )  # fmt: skip
    r = erf.mass_radius[95]
    cy, cx = erf.rf_center
    ax.add_patch(
        Rectangle((cx - r - 0.5, cy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, lw=1.2,
                  linestyle="--", edgecolor="C1", label=f"95 % of the ERF (side {2 * r + 1:g})")
    )  # fmt: skip
    ax.plot([cx], [cy], marker="+", color="C3", markersize=10, linestyle="none",
            label="unit centre")  # fmt: skip
    ax.plot([erf.centroid[1]], [erf.centroid[0]], marker="x", color="C1", markersize=7,
            linestyle="none", label="ERF centroid")  # fmt: skip
    h, w = erf.input_size
    return (min(-0.5, y0 - 0.5), min(-0.5, x0 - 0.5), max(h - 0.5, y1 + 0.5),
            max(w - 0.5, x1 + 0.5))  # fmt: skip


def _limits(ax: Any, limits: tuple[float, float, float, float]) -> None:
    y0, x0, y1, x1 = limits
    pad = 0.02 * max(y1 - y0, x1 - x0)
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_ylim(y1 + pad, y0 - pad)


def _erf_title(erf: ERF) -> str:
    sy, sx = erf.std
    return (
        f"ERF of {erf.layer.name} unit ({erf.unit[0]},{erf.unit[1]}), {erf.inputs_text}\n"
        f"std {sy:.1f},{sx:.1f} px; 95 % within \u00b1{erf.mass_radius[95]:g} px"
    )


def erf_map(erf: ERF, *, log: bool = False) -> Figure:
    """The ERF as a heat map over the input, with the unit's theoretical receptive field.

    Marks: the theoretical box (exact, unclipped: it may reach past the image into the
    padding), the unit's centre (+), the ERF's centroid (x) and the smallest square around the
    centre holding 95 % of the ERF (dashed).

    Args:
        erf: A measured ERF (:func:`hypercolumns.rf.erf.erf`).
        log: Colour by ``log10`` of the map (small contributions become visible).
    """
    h, w = erf.input_size
    values = erf.map.numpy()
    label = "share of the gradient mass"
    if log:
        values = np.log10(np.maximum(values, values[values > 0].min()))
        label = f"log10 {label}"
    fig = Figure(figsize=(6.4, 5.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(values, cmap=_CMAP, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5))  # fmt: skip
    ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, lw=0.8, edgecolor="0.5"))
    _limits(ax, _erf_marks(ax, erf))
    ax.set_title(_erf_title(erf))
    ax.set_xlabel("x (input pixels)")
    ax.set_ylabel("y (input pixels)")
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False, ncols=2)
    return fig


def erf_comparison(
    erfs: Sequence[ERF],
    titles: Sequence[str] | None = None,
    *,
    rescale: str = "max",
) -> Figure:
    """Several ERFs side by side on one colour scale (several models, depths, or random
    against given weights, as in RepLKNet's figure), each with its theoretical box.

    Args:
        erfs: Measured ERFs (input sizes may differ).
        titles: One title per ERF; by default the layer names.
        rescale: ``"max"``: each map over its maximum; ``"log"``: RepLKNet's
            ``log10(raw + 1)`` of the raw gradients, over its maximum.
    """
    if not erfs:
        raise HypercolumnsError("no ERFs to compare")
    if titles is not None and len(titles) != len(erfs):
        raise HypercolumnsError(f"got {len(titles)} titles for {len(erfs)} ERFs")
    if rescale not in ("max", "log"):
        raise HypercolumnsError(f"rescale must be 'max' or 'log', got {rescale!r}")
    n = len(erfs)
    fig = Figure(figsize=(3.6 * n + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    im = None
    for k, (ax, e) in enumerate(zip(axes, erfs, strict=True)):
        values = (np.log10(e.raw.numpy() + 1) if rescale == "log" else e.map.numpy()).copy()
        values /= max(values.max(), np.finfo(np.float64).tiny)
        h, w = e.input_size
        im = ax.imshow(values, cmap=_CMAP, vmin=0, vmax=1, interpolation="nearest",
                       extent=(-0.5, w - 0.5, h - 0.5, -0.5))  # fmt: skip
        _limits(ax, _erf_marks(ax, e))
        sy, sx = e.std
        name = titles[k] if titles is not None else f"{e.layer.name} ({e.unit[0]},{e.unit[1]})"
        ax.set_title(f"{name}\nstd {sy:.1f},{sx:.1f}; rf {_shape(e.rf_size)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    assert im is not None
    how = "log10(gradient + 1) / max" if rescale == "log" else "ERF / max"
    fig.colorbar(im, ax=axes, shrink=0.8, label=how)
    return fig


def erf_on_image(erf: ERF, image: torch.Tensor | np.ndarray[Any, Any]) -> Figure:
    """The ERF of a unit drawn over the image, with the unit's theoretical receptive field.

    The ERF is an overlay whose colour and opacity grow with the contribution (saturating at
    its 99.5th percentile, so that a few extreme pixels do not hide the rest); the marks are
    those of :func:`erf_map`.

    Args:
        erf: An ERF measured on this image size.
        image: The input image ``(C, H, W)`` in ``[0, 1]``.
    """
    from matplotlib import colormaps

    img = _image(image)
    if tuple(img.shape[:2]) != erf.input_size:
        raise HypercolumnsError(
            f"the image is {_shape(img.shape[:2])} but the ERF was measured on "
            f"{_shape(erf.input_size)} inputs"
        )
    h, w = erf.input_size
    m = erf.map.numpy()
    values = np.clip(m / max(float(np.quantile(m, 0.995)), np.finfo(np.float64).tiny), 0, 1)
    overlay = colormaps["hot"](values)
    overlay[..., 3] = 0.85 * np.sqrt(values)
    fig = Figure(figsize=(6.4, 5.8), layout="constrained")
    ax = fig.subplots()
    _show_image(ax, img, _erf_title(erf))
    ax.imshow(overlay, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    _limits(ax, _erf_marks(ax, erf))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False, ncols=2)
    return fig
