"""PCA images: the first three principal components of the whole hypercolumn, as RGB.

:func:`fit_pca_image` samples hypercolumns from one image or jointly from several, standardises
each channel and fits the principal axes of the whole (standardised) hypercolumn
(:class:`~hypercolumns.features.pca.PCA`). Each component is then scaled to ``[0, 1]`` by a
fixed range fitted on the samples (robust percentiles), so every image drawn with the same
:class:`PCAImage` shares its colours. :meth:`PCAImage.rgb` computes the three components at
every pixel as a per-pixel linear map of the hypercolumn (``K = 3``, the standardisation and
the scaling folded in), at each layer's own resolution; only the clipping to ``[0, 1]`` comes
after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns.errors import OptionError
from hypercolumns.features.align import Align
from hypercolumns.features.linear import LinearMap
from hypercolumns.features.pca import PCA
from hypercolumns.probes._fitting import apply, fitted_samples
from hypercolumns.probes.samples import Images
from hypercolumns.rf.layers import Layer, LayerSpec

__all__ = ["PCAImage", "fit_pca_image"]

COMPONENTS = 3


@dataclass(frozen=True, eq=False)
class PCAImage:
    """Three principal components of standardised hypercolumns and the range of each that
    maps to ``[0, 1]``.

    Attributes:
        model: The network the hypercolumns are of.
        layers: The layers, in the order given.
        slices: Layer name to its channels in the hypercolumn.
        pca: The principal axes in the standardised space ``z = (h - mean) / std``
            (``components`` ``(3, C)``, each signed so its largest loading is positive).
        mean: ``(C,)`` per-channel mean of the samples; ``None`` without standardisation.
        std: ``(C,)`` per-channel scale; ``None`` without standardisation.
        low: ``(3,)`` the component values drawn as 0 (a low percentile of the samples).
        high: ``(3,)`` the component values drawn as 1.
        explained_ratio: ``(3,)`` the share of the samples' total variance along each
            component.
        align: How hypercolumns sample the layers.
        counts: Samples drawn from each image.
    """

    model: nn.Module
    layers: list[Layer]
    slices: dict[str, slice]
    pca: PCA
    mean: torch.Tensor | None
    std: torch.Tensor | None
    low: torch.Tensor
    high: torch.Tensor
    explained_ratio: torch.Tensor
    align: Align
    counts: list[int]

    def _map(self, scaled: bool) -> LinearMap:
        comps = self.pca.components.double()
        bias = -(comps @ self.pca.mean.double())
        if scaled:
            span = (self.high - self.low).double()
            comps = comps / span[:, None]
            bias = (bias - self.low.double()) / span
        return LinearMap.split(comps.float(), self.slices, bias, mean=self.mean, std=self.std)

    @property
    def rgb_map(self) -> LinearMap:
        """The three components, scaled so the fitted range is ``[0, 1]``, as a map of the raw
        hypercolumn, one block per layer: :meth:`rgb` is it, clipped."""
        return self._map(True)

    def project(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """``(B, 3, H, W)``: the three components at every pixel of ``x`` ``(B, C, H, W)``,
        unscaled; ``rows`` computes one image in bands of that many rows."""
        names = [layer.name for layer in self.layers]
        return apply(self.model, x, names, self._map(False), align=self.align, rows=rows)

    def rgb(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]``: the components scaled by the fitted range and
        clipped, red the first."""
        names = [layer.name for layer in self.layers]
        out = apply(self.model, x, names, self.rgb_map, align=self.align, rows=rows)
        return out.clamp_(0, 1)

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., 3)``: the components of hypercolumns ``(..., C)`` given explicitly."""
        z = features
        if self.mean is not None and self.std is not None:
            z = (features - self.mean.to(features)) / self.std.to(features)
        return self.pca.transform(z)


def fit_pca_image(
    model: nn.Module,
    images: Images,
    layers: LayerSpec,
    *,
    points: int = 2000,
    seed: int = 0,
    align: Align = "rf",
    standardize: bool = True,
    percentiles: tuple[float, float] = (1.0, 99.0),
    progress: Callable[[int, int], None] | None = None,
) -> PCAImage:
    """The first three principal components of the hypercolumns of ``images`` (one, or several
    jointly), to draw as RGB.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        images: As for :func:`~hypercolumns.probes.kmeans.fit_kmeans` (sizes may differ).
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        points: Pixels sampled per image (image ``i`` with seed ``seed + i``).
        seed: Seed of the sampling.
        align: ``"rf"`` or ``"half-pixel"``.
        standardize: Standardise each channel over the samples first, so that layers with
            large activations do not decide the components alone.
        percentiles: The percentiles of each component over the samples drawn as 0 and 1;
            values beyond are clipped.
        progress: Called as ``progress(done, total)`` after sampling each image.

    Raises:
        OptionError: Fewer than 3 channels or samples, or percentiles not ``0 <= lo < hi <= 100``.
    """
    lo, hi = percentiles
    if not 0 <= lo < hi <= 100:
        raise OptionError(
            f"percentiles must be (lo, hi) with 0 <= lo < hi <= 100, got {percentiles}"
        )
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
    z = fitted.z
    if min(z.shape) < COMPONENTS:
        raise OptionError(
            f"a PCA image needs {COMPONENTS} components, but the samples are {z.shape[0]} "
            f"hypercolumns of {z.shape[1]} channels: choose more layers or channels, or sample "
            "more points"
        )
    pca = PCA.fit(z, COMPONENTS)
    sign = torch.where(
        pca.components.gather(1, pca.components.abs().argmax(1, keepdim=True)) < 0, -1.0, 1.0
    ).to(z)
    pca = PCA(pca.mean, pca.components * sign, pca.explained_variance)
    proj = pca.transform(z)
    q = torch.tensor([lo / 100, hi / 100], dtype=proj.dtype)
    low, high = torch.quantile(proj, q, dim=0)
    span = high - low
    high = torch.where(span > 0, high, low + 1)
    total = ((z - z.mean(0)) ** 2).sum() / max(z.shape[0] - 1, 1)
    st = fitted.standardizer
    return PCAImage(
        model=model,
        layers=list(fitted.samples.layers),
        slices=dict(fitted.samples.slices),
        pca=PCA(pca.mean.float(), pca.components.float(), pca.explained_variance.float()),
        mean=None if st is None else st.mean,
        std=None if st is None else st.std,
        low=low.float(),
        high=high.float(),
        explained_ratio=(pca.explained_variance / total).float(),
        align=align,
        counts=list(fitted.samples.counts),
    )
