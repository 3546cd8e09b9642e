"""k-means clusters of hypercolumns, assigned densely at each layer's own resolution.

:func:`fit_kmeans` samples hypercolumns from the images, standardises each channel, seeds the
centroids with k-means++ and runs Lloyd iterations. :meth:`KMeans.assign` labels every pixel
of new images without forming their hypercolumns: the nearest centroid is the one with the
largest affine score, ``argmin_c |z - c|^2 = argmax_c (c.z - |c|^2 / 2)`` (``|z|^2`` is the
same for every ``c``), and the scores are a per-pixel linear map of the hypercolumn with the
standardisation folded in (:class:`~hypercolumns.features.linear.LinearMap`, ``K = k``), so
each layer contributes ``k`` maps at its own resolution and only those are resampled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns.errors import OptionError
from hypercolumns.features.align import Align
from hypercolumns.features.linear import LinearMap
from hypercolumns.probes._fitting import apply, fitted_samples
from hypercolumns.probes.samples import Images
from hypercolumns.rf.layers import Layer, LayerSpec

__all__ = ["KMeans", "fit_kmeans"]


@dataclass(frozen=True, eq=False)
class KMeans:
    """k-means centroids of standardised hypercolumns, ready to label pixels.

    Attributes:
        model: The network the hypercolumns are of.
        layers: The layers, in the order given.
        slices: Layer name to its channels in the hypercolumn.
        centroids: ``(k, C)`` in the standardised space ``z = (h - mean) / std``.
        mean: ``(C,)`` per-channel mean of the samples; ``None`` without standardisation.
        std: ``(C,)`` per-channel scale; ``None`` without standardisation.
        align: How hypercolumns sample the layers.
        inertia: Sum of squared distances of the samples to their centroids.
        iterations: Lloyd iterations run (of the best restart).
        sizes: ``(k,)`` samples in each cluster.
        counts: Samples drawn from each image.
    """

    model: nn.Module
    layers: list[Layer]
    slices: dict[str, slice]
    centroids: torch.Tensor
    mean: torch.Tensor | None
    std: torch.Tensor | None
    align: Align
    inertia: float
    iterations: int
    sizes: torch.Tensor
    counts: list[int]

    @property
    def k(self) -> int:
        """The number of clusters."""
        return int(self.centroids.shape[0])

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` hypercolumns in the space of the centroids."""
        if self.mean is None or self.std is None:
            return features
        return (features - self.mean.to(features)) / self.std.to(features)

    @property
    def linear_map(self) -> LinearMap:
        """The scores ``c.z - |c|^2 / 2`` of each centroid ``c`` as a map of the raw
        hypercolumn ``h`` (``z`` its standardised form), one block per layer."""
        c = self.centroids.double()
        return LinearMap.split(
            c.float(), self.slices, -0.5 * (c * c).sum(1), mean=self.mean, std=self.std
        )

    def scores(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """``(B, k, H, W)``: ``c.z - |c|^2 / 2`` per centroid at every pixel of ``x``
        ``(B, C, H, W)``, the largest for the nearest centroid; ``rows`` computes one image in
        bands of that many rows."""
        names = [layer.name for layer in self.layers]
        return apply(self.model, x, names, self.linear_map, align=self.align, rows=rows)

    def assign(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """``(B, H, W)`` int64: the nearest centroid of every pixel's hypercolumn."""
        return self.scores(x, rows=rows).argmax(1)

    def nearest(self, features: torch.Tensor) -> torch.Tensor:
        """``(...,)`` int64: the nearest centroid of hypercolumns ``(..., C)`` given explicitly
        (e.g. sampled ones), by squared distance."""
        z = self.standardize(features.double())
        c = self.centroids.double().to(z.device)
        return torch.cdist(z.reshape(-1, z.shape[-1]), c).argmin(1).reshape(z.shape[:-1])


def _sq_distances(z: torch.Tensor, c: torch.Tensor, z_sq: torch.Tensor) -> torch.Tensor:
    """``(M, k)`` squared distances (never negative)."""
    return (z_sq[:, None] - 2 * z @ c.T + (c * c).sum(1)[None]).clamp_min_(0)


def _plus_plus(z: torch.Tensor, z_sq: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid a sample drawn with probability proportional to
    its squared distance to the nearest centroid so far (uniformly among those not yet chosen
    when every sample sits on a centroid)."""
    m = z.shape[0]
    chosen = [int(torch.randint(m, (1,), generator=gen))]
    d2 = _sq_distances(z, z[chosen], z_sq)[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            nxt = int(torch.multinomial(d2 / total, 1, generator=gen))
        else:
            free = torch.ones(m, dtype=torch.bool)
            free[chosen] = False
            pool = free.nonzero()[:, 0]
            nxt = int(pool[int(torch.randint(len(pool), (1,), generator=gen))])
        chosen.append(nxt)
        d2 = torch.minimum(d2, _sq_distances(z, z[nxt : nxt + 1], z_sq)[:, 0])
    return z[chosen].clone()


def _lloyd(
    z: torch.Tensor, z_sq: torch.Tensor, centroids: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lloyd iterations until no label changes (or ``iterations``); an empty cluster takes the
    sample farthest from its centroid. Returns centroids, labels, inertia, iterations run."""
    k = centroids.shape[0]
    labels = torch.full((z.shape[0],), -1, dtype=torch.long)
    run = 0
    for run in range(1, iterations + 1):
        d2 = _sq_distances(z, centroids, z_sq)
        new = d2.argmin(1)
        if torch.equal(new, labels):
            run -= 1
            break
        labels = new
        sizes = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, z)
        centroids = sums / sizes.clamp_min(1)[:, None].to(z)
        empty = (sizes == 0).nonzero()[:, 0].tolist()
        if empty:
            far = d2.gather(1, labels[:, None])[:, 0].argsort(descending=True)
            for j, idx in zip(empty, far.tolist(), strict=False):
                centroids[j] = z[idx]
            labels = torch.full_like(labels, -1)  # re-label against the moved centroids
    d2 = _sq_distances(z, centroids, z_sq)
    labels = d2.argmin(1)
    inertia = float(d2.gather(1, labels[:, None]).sum())
    return centroids, labels, inertia, run


def fit_kmeans(
    model: nn.Module,
    images: Images,
    layers: LayerSpec,
    k: int,
    *,
    points: int = 1000,
    seed: int = 0,
    align: Align = "rf",
    standardize: bool = True,
    iterations: int = 100,
    restarts: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> KMeans:
    """k-means on hypercolumns sampled from ``images`` (clustered jointly).

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        images: A ``(N, C, H, W)`` tensor; a sequence of ``(C, H, W)`` / ``(1, C, H, W)``
            tensors (sizes may differ) or of image paths; or a list file or folder, as
            :func:`~hypercolumns.probes.samples.examples` reads them.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        k: Clusters.
        points: Pixels sampled per image (uniformly, image ``i`` with seed ``seed + i``; every
            pixel of a smaller image).
        seed: Seed of the sampling and of the k-means++ seeding.
        align: ``"rf"`` or ``"half-pixel"``, as for hypercolumns.
        standardize: Standardise each channel (mean 0, std 1 over the samples) first, so that
            layers with large activations do not dominate the distances.
        iterations: Most Lloyd iterations per restart (they stop when no label changes).
        restarts: k-means++ seedings to run; the one with the least inertia is kept.
        progress: Called as ``progress(done, total)`` after sampling each image.

    Returns:
        The fitted :class:`KMeans`; ``assign(x)`` labels every pixel of ``x``.

    Raises:
        OptionError: ``k``, ``iterations`` or ``restarts`` below 1, or ``k`` larger than the
            number of hypercolumns sampled.
    """
    for name, value in (("k", k), ("iterations", iterations), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{name} must be a positive int, got {value!r}")
    fitted = fitted_samples(
        model,
        images,
        layers,
        points=points,
        seed=seed,
        align=align,
        standardize=standardize,
        progress=progress,
    )
    z, counts = fitted.z, fitted.samples.counts
    if k > z.shape[0]:
        raise OptionError(
            f"k={k} clusters but only {z.shape[0]} hypercolumns were sampled ({len(counts)} "
            f"image(s), points={points}): ask for fewer clusters, or sample more points or images"
        )
    z_sq = (z * z).sum(1)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    for _ in range(restarts):
        result = _lloyd(z, z_sq, _plus_plus(z, z_sq, k, gen), iterations)
        if best is None or result[2] < best[2]:
            best = result
    assert best is not None
    centroids, labels, inertia, run = best
    st = fitted.standardizer
    return KMeans(
        model=model,
        layers=list(fitted.samples.layers),
        slices=dict(fitted.samples.slices),
        centroids=centroids.float(),
        mean=None if st is None else st.mean,
        std=None if st is None else st.std,
        align=align,
        inertia=inertia,
        iterations=run,
        sizes=torch.bincount(labels, minlength=k),
        counts=list(counts),
    )
