"""Hypercolumns for scikit-image's ``TrainableSegmenter`` (``skimage.future``): a
``features_func`` that turns an image into channels-last features, as that API expects, so
the classic random-forest pixel classifier can use hypercolumns instead of (or besides)
``multiscale_basic_features``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hypercolumns.errors import ImageError
from hypercolumns.features.align import Align, check_align
from hypercolumns.features.columns import hypercolumns
from hypercolumns.models import input_channels, normalization
from hypercolumns.rf.layers import LayerSpec

__all__ = ["skimage_features"]

FeaturesFunc = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]


def skimage_features(
    model: nn.Module,
    layers: LayerSpec,
    *,
    align: Align = "rf",
    standardize: bool = True,
) -> FeaturesFunc:
    """A ``features_func`` for ``skimage.future.TrainableSegmenter`` (or ``fit_segmenter``):
    image ``(H, W)`` or ``(H, W, C)`` numpy (uint8, uint16, or floats in ``[0, 1]``) to
    ``(H, W, F)`` float32 dense hypercolumns of ``layers``, channels last.

    The image is normalised as the model expects (grey images repeated to its channels); with
    ``standardize`` each channel is standardised over the image (tree ensembles do not need
    it, linear classifiers do).

    Example:
        >>> from skimage.future import TrainableSegmenter
        >>> seg = TrainableSegmenter(features_func=skimage_features(model, [3, 8]))
        >>> seg.fit(image, scribbles)  # scribbles: 0 unlabelled, classes 1..K
    """
    check_align(align)
    channels = input_channels(model)
    norm = normalization(model)

    def features(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ImageError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
        if arr.dtype.kind in "ui":
            arr = arr / float(np.iinfo(arr.dtype).max)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
        if x.shape[0] == 1 and channels != 1:
            x = x.expand(channels, -1, -1)
        elif x.shape[0] == 4 and channels == 3:  # RGBA: drop alpha
            x = x[:3]
        if x.shape[0] != channels:
            raise ImageError(f"the model takes {channels} channels, the image has {x.shape[0]}")
        mean = torch.tensor(norm.mean).view(-1, 1, 1)
        std = torch.tensor(norm.std).view(-1, 1, 1)
        x = ((x - mean) / std)[None]
        with torch.no_grad():
            cols = hypercolumns(model, x, layers, align=align).features[0]
        if standardize:
            flat = cols.flatten(1)
            cols = (cols - flat.mean(1)[:, None, None]) / flat.std(1).clamp_min(1e-6)[:, None, None]
        return cols.permute(1, 2, 0).contiguous().numpy()

    return features
