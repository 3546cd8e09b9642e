"""Figures of what looks the same to the network: the similarity map of one pixel, and the
correspondences between two images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from hypercolumns.errors import HypercolumnsError
from hypercolumns.rf.layers import Layer
from hypercolumns.viz.plot import _array, _image, _shape, _show_image, rf_boxes, unit_at

__all__ = ["matches", "similarity_map"]

_SCORES = "viridis"


def similarity_map(
    image: torch.Tensor | np.ndarray[Any, Any],
    similarity: torch.Tensor | np.ndarray[Any, Any],
    point: tuple[float, float],
    *,
    layers: Sequence[Layer] = (),
) -> Figure:
    """The cosine similarity of one pixel's hypercolumn to every pixel, beside the image, with
    the receptive field of the unit of each layer nearest the pixel drawn on both.

    Args:
        image: The input image.
        similarity: ``(H, W)`` or ``(1, H, W)``, as :func:`hypercolumns.similarity` gives it.
        point: The query pixel ``(y, x)``.
        layers: The layers of the hypercolumns (from :func:`hypercolumns.layers` on this image
            size); spatial ones get a box.
    """
    img = _image(image)
    sim = _array(similarity)
    if sim.ndim == 3 and sim.shape[0] == 1:
        sim = sim[0]
    if sim.shape != img.shape[:2]:
        raise HypercolumnsError(
            f"the similarity map {tuple(sim.shape)} must have the image's size "
            f"{tuple(img.shape[:2])}"
        )
    y, x = point
    spatial = [layer for layer in layers if layer.rf is not None and not layer.rf.is_global]
    units = [unit_at(layer, y, x) for layer in spatial]
    size = (int(img.shape[0]), int(img.shape[1]))
    fig = Figure(figsize=(11, 5.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _show_image(left, img, f"input {_shape(size)}, pixel (y, x) = ({y:g}, {x:g})")
    im = right.imshow(sim, cmap=_SCORES, vmin=float(sim.min()), vmax=1.0,
                      interpolation="nearest")  # fmt: skip
    names = ", ".join(layer.name for layer in layers) or "all layers"
    right.set_title(f"cosine similarity of its hypercolumn\n{names}")
    right.set_xlabel("x (input pixels)")
    right.set_ylabel("y (input pixels)")
    for ax in (left, right):
        rf_boxes(ax, spatial, units, size)
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor="none", color="red",
                linestyle="none")  # fmt: skip
    if spatial:
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    fig.colorbar(im, ax=right, shrink=0.85, label="cosine similarity")
    return fig


def matches(
    source: torch.Tensor | np.ndarray[Any, Any],
    target: torch.Tensor | np.ndarray[Any, Any],
    source_points: torch.Tensor | np.ndarray[Any, Any],
    points: torch.Tensor | np.ndarray[Any, Any],
    scores: torch.Tensor | np.ndarray[Any, Any],
    *,
    mutual: torch.Tensor | np.ndarray[Any, Any] | None = None,
    title: str = "",
) -> Figure:
    """Two images side by side and a line from each source point to its match, coloured by
    score; with ``mutual``, the other matches are drawn faint and dashed.

    Args:
        source: The first image.
        target: The second image (any size).
        source_points: ``(N, 2)`` ``(y, x)`` pixels of ``source``.
        points: ``(N, 2)`` ``(y, x)`` pixels of ``target``.
        scores: ``(N,)`` scores (cosine similarity).
        mutual: ``(N,)`` bool, the matches that check back.
        title: A first line for the title (e.g. the model and layers).
    """
    a, b = _image(source), _image(target)
    src, dst, score = _array(source_points), _array(points), _array(scores)
    n = len(score)
    if src.shape != (n, 2) or dst.shape != (n, 2):
        raise HypercolumnsError(
            f"expected (N, 2) source and target points and (N,) scores, got {src.shape}, "
            f"{dst.shape} and {score.shape}"
        )
    keep = np.ones(n, bool) if mutual is None else _array(mutual).astype(bool)
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    gap = max(4, round(0.03 * (wa + wb)))
    height = max(ha, hb)
    canvas = np.ones((height, wa + gap + wb, 3))
    canvas[:ha, :wa] = a if a.ndim == 3 else a[..., None]
    canvas[:hb, wa + gap :] = b if b.ndim == 3 else b[..., None]
    fig = Figure(figsize=(11, 11 * height / canvas.shape[1] + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(canvas, interpolation="none")
    ax.set_axis_off()
    segments = np.stack((src[:, ::-1], dst[:, ::-1] + [wa + gap, 0]), axis=1)
    lo, hi = (float(score.min()), float(score.max())) if n else (0.0, 1.0)
    faint = LineCollection(segments[~keep], cmap=_SCORES, linewidths=0.6, alpha=0.35,
                           linestyles="dashed")  # fmt: skip
    faint.set_array(score[~keep])
    faint.set_clim(lo, hi)
    ax.add_collection(faint)
    lines = LineCollection(segments[keep], cmap=_SCORES, linewidths=1.1, alpha=0.9)
    lines.set_array(score[keep])
    lines.set_clim(lo, hi)
    ax.add_collection(lines)
    ax.scatter(segments[keep, :, 0].ravel(), segments[keep, :, 1].ravel(), s=6, c="white",
               edgecolors="black", linewidths=0.3)  # fmt: skip
    count = f"{n} matches" if mutual is None else f"{int(keep.sum())} of {n} matches mutual"
    ax.set_title(f"{title}\n{count}; source {_shape((ha, wa))}, target {_shape((hb, wb))}"
                 if title else count)  # fmt: skip
    fig.colorbar(lines, ax=ax, shrink=0.7, label="cosine similarity", location="bottom")
    return fig
