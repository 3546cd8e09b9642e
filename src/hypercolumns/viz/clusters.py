"""Cluster maps: a palette of distinct colours, label maps coloured with it, and the figure of
each image beside its cluster map (the clustering figure of hypercolumn write-ups).

Labels are ``(H, W)`` ints in ``0..k-1`` (e.g. ``KMeans.assign(x)[0]``); images as for
:mod:`hypercolumns.viz.plot`, ``(C, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hypercolumns.errors import HypercolumnsError
from hypercolumns.viz.plot import Array, _array, _image, _shape, _show_image

__all__ = ["cluster_figure", "colorize", "palette"]


def palette(k: int) -> Array:
    """``(k, 3)`` RGB colours in ``[0, 1]``, as distinct as ``k`` allows: ``tab10`` up to 10,
    ``tab20`` up to 20, then evenly spaced hues."""
    if k < 1:
        raise HypercolumnsError(f"a palette needs at least one colour, got k={k}")
    if k <= 10:
        colors = colormaps["tab10"].colors[:k]  # type: ignore[attr-defined]
    elif k <= 20:
        colors = colormaps["tab20"].colors[:k]  # type: ignore[attr-defined]
    else:
        colors = colormaps["hsv"](np.arange(k) / k)[:, :3]
    return np.asarray(colors, dtype=np.float64)


def colorize(labels: torch.Tensor | np.ndarray[Any, Any], k: int) -> Array:
    """``(H, W, 3)``: each pixel of ``(H, W)`` ``labels`` in ``0..k-1`` in its :func:`palette`
    colour."""
    arr = _array(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise HypercolumnsError(f"expected (H, W) labels, got shape {tuple(arr.shape)}")
    idx = arr.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise HypercolumnsError(f"labels must lie in 0..{k - 1}, got {idx.min()}..{idx.max()}")
    return palette(k)[idx]


def cluster_figure(
    images: Sequence[torch.Tensor | np.ndarray[Any, Any]],
    labels: Sequence[torch.Tensor | np.ndarray[Any, Any]],
    k: int,
    *,
    titles: Sequence[str] | None = None,
    layers: Sequence[str] = (),
) -> Figure:
    """One row per image: the image, then its cluster map in the :func:`palette`, with a legend
    of the clusters (their share of the pixels of all images).

    Args:
        images: ``(C, H, W)`` images in ``[0, 1]`` (sizes may differ).
        labels: ``(H, W)`` cluster of every pixel, one map per image.
        k: The number of clusters.
        titles: One per image (e.g. the file names).
        layers: The layers clustered, for the title.
    """
    if len(images) != len(labels) or not images:
        raise HypercolumnsError(f"got {len(images)} images and {len(labels)} label maps")
    if titles is not None and len(titles) != len(images):
        raise HypercolumnsError(f"got {len(titles)} titles for {len(images)} images")
    maps = [colorize(lab, k) for lab in labels]
    pictures = [_image(img) for img in images]
    aspect = max(p.shape[1] / p.shape[0] for p in pictures)
    height = min(3.6, 9.0 / len(images)) if len(images) > 3 else 3.6
    fig = Figure(
        figsize=(2 * height * min(aspect, 2.5) + 0.6, height * len(images) + 0.9),
        layout="constrained",
    )
    axes = fig.subplots(len(images), 2, squeeze=False)
    counts = np.zeros(k)
    for i, (picture, colored, lab) in enumerate(zip(pictures, maps, labels, strict=True)):
        name = titles[i] if titles is not None else f"image {i}"
        _show_image(axes[i, 0], picture, f"{name} {_shape(picture.shape[:2])}")
        _show_image(axes[i, 1], colored, f"{k} clusters")
        counts += np.bincount(_array(lab).astype(np.int64).ravel(), minlength=k)
        for ax in axes[i]:
            ax.set_xlabel("")
            ax.set_ylabel("")
    colors = palette(k)
    share = counts / max(counts.sum(), 1)
    handles = [Patch(color=colors[c], label=f"{c}: {share[c]:.0%}") for c in range(k)]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(k, 8),
        fontsize=8,
        frameon=False,
        title="cluster: share of pixels",
        title_fontsize=8,
    )
    names = ", ".join(layers) or "hypercolumns"
    fig.suptitle(f"k-means on hypercolumns of {names}" + (", fitted jointly" * (len(images) > 1)))
    return fig
