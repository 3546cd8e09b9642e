"""PCA images: the first three principal components of the hypercolumns as RGB, beside the
image (e.g. ``PCAImage.rgb(x)[0]`` of :mod:`hypercolumns.probes.pca_image`)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from hypercolumns.viz.plot import _image, _shape, _show_image

__all__ = ["pca_figure"]


def pca_figure(
    image: torch.Tensor | np.ndarray[Any, Any],
    rgb: torch.Tensor | np.ndarray[Any, Any],
    *,
    layers: Sequence[str] = (),
    explained: Sequence[float] | None = None,
) -> Figure:
    """The image and, beside it, the PCA image of its hypercolumns.

    Args:
        image: ``(C, H, W)`` in ``[0, 1]``.
        rgb: ``(3, H, W)`` in ``[0, 1]``: the first three components as red, green, blue.
        layers: The layers the hypercolumns stack, for the title.
        explained: The share of the variance along each component, for the title.
    """
    img, col = _image(image), _image(rgb)
    aspect = img.shape[1] / img.shape[0]
    fig = Figure(figsize=(2 * 4.2 * min(aspect, 2.5) + 0.4, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    _show_image(axes[0], img, f"input {_shape(img.shape[:2])}")
    share = ""
    if explained is not None:
        share = "\nvariance: " + ", ".join(
            f"{c} {v:.0%}" for c, v in zip("RGB", explained, strict=False)
        )
    names = textwrap.fill(", ".join(layers) or "all layers", 40)
    _show_image(axes[1], col, f"PCA image (RGB: components 1-3) of\n{names}{share}")
    return fig
