"""What the unsupervised uses (k-means, PCA images) share: standardised hypercolumns sampled
from images in the forms users have, and a fitted map applied densely to new images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns.errors import OptionError
from hypercolumns.features.align import Align, check_align
from hypercolumns.features.linear import LinearMap, linear_map
from hypercolumns.probes.samples import Images, Samples, Standardizer, examples, sample
from hypercolumns.rf.layers import LayerSpec

__all__ = ["Fitted", "apply", "fitted_samples"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Fitted:
    """Sampled hypercolumns, standardised (or not).

    Attributes:
        samples: What :func:`~hypercolumns.probes.samples.sample` drew.
        standardizer: Fitted on the samples; ``None`` when not standardising.
        z: ``(M, C)`` float64 standardised samples (the samples themselves without a
            standardizer).
    """

    samples: Samples
    standardizer: Standardizer | None
    z: torch.Tensor


def fitted_samples(
    model: nn.Module,
    images: Images,
    layers: LayerSpec,
    *,
    points: int,
    seed: int,
    align: Align,
    standardize: bool,
    progress: Progress | None = None,
) -> Fitted:
    """Hypercolumns at ``points`` pixels of each image (image ``i`` drawn with seed
    ``seed + i``, as :func:`~hypercolumns.probes.samples.sample` draws them), standardised per
    channel when ``standardize``; ``progress(done, total)`` after each image."""
    check_align(align)
    items = examples(model, images)
    if progress is None:
        drawn = sample(model, items, layers, points=points, seed=seed, align=align)
    else:  # one image at a time, with the seed it would have had in one call
        parts = []
        for i, item in enumerate(items):
            parts.append(sample(model, [item], layers, points=points, seed=seed + i, align=align))
            progress(i + 1, len(items))
        first = parts[0]
        drawn = Samples(
            torch.cat([p.features for p in parts]),
            None,
            first.slices,
            first.layers,
            [c for p in parts for c in p.counts],
        )
    standardizer = Standardizer.fit(drawn.features) if standardize else None
    z = drawn.features if standardizer is None else standardizer(drawn.features)
    return Fitted(drawn, standardizer, z.double())


def apply(
    model: nn.Module,
    x: torch.Tensor,
    layer_names: list[str],
    m: LinearMap,
    *,
    align: Align,
    rows: int | None,
) -> torch.Tensor:
    """``m`` at every pixel of ``x`` ``(B, C, H, W)`` through the per-layer route:
    ``(B, K, H, W)``; with ``rows``, one image in bands of that many rows."""
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    if rows is not None and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] != 1:
        raise OptionError(f"rows= computes one image at a time, got a batch of {x.shape[0]}")
    with torch.no_grad():
        return linear_map(model, x, layer_names, m, align=align, rows=rows)
