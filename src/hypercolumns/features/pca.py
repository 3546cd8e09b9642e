"""Principal components of each layer's hypercolumn block, to project hypercolumns with.

:func:`fit_pca` fits them on sampled pixels; ``hypercolumns(..., project=...)`` applies them to
each layer's low-resolution map before upsampling, which equals projecting the upsampled
hypercolumns (the projection is affine and bilinear weights sum to one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns._checks import image_batch
from hypercolumns.errors import OptionError
from hypercolumns.features.align import Align
from hypercolumns.features.columns import HypercolumnExtractor
from hypercolumns.rf.layers import LayerSpec

__all__ = ["PCA", "fit_pca"]


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

    @classmethod
    def fit(cls, data: torch.Tensor, k: int) -> PCA:
        """The first ``k`` principal axes of ``(M, C)`` samples (``1 <= k <= min(M, C)``, which
        the caller checks and explains)."""
        mean = data.mean(0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
        variance = s[:k] ** 2 / max(data.shape[0] - 1, 1)
        return cls(mean=mean, components=vh[:k].contiguous(), explained_variance=variance)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., C)`` vectors to ``(..., K)``."""
        return (x - self.mean.to(x)) @ self.components.to(x).T


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
        image_batch(batch, "images must be batches of shape")
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
        raise OptionError("fit_pca needs at least one batch of images")
    fitted: dict[str, PCA] = {}
    for name, parts in samples.items():
        data = torch.cat(parts)
        k = n_components if isinstance(n_components, int) else n_components.get(name)
        if k is None:
            raise OptionError(f"n_components gives no number for layer {name!r}")
        limit = min(data.shape)
        if not 1 <= k <= limit:
            raise OptionError(
                f"n_components={k} for layer {name!r} must lie in 1..{limit}: it has "
                f"{data.shape[1]} channels and {data.shape[0]} samples; sample more points or "
                "images, or ask for fewer components"
            )
        fitted[name] = PCA.fit(data, k)
    return fitted
