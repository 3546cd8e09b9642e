"""Cluster maps and PCA images as figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypercolumns.errors import HypercolumnsError
from hypercolumns.viz.clusters import cluster_figure, colorize, palette
from hypercolumns.viz.pca_image import pca_figure


@pytest.mark.parametrize("k", [1, 8, 15, 40])
def test_palette_colours_are_distinct(k: int) -> None:
    colors = palette(k)
    assert colors.shape == (k, 3)
    assert ((colors >= 0) & (colors <= 1)).all()
    assert len({tuple(np.round(c, 4)) for c in colors}) == k


def test_colorize_and_bad_labels() -> None:
    labels = torch.tensor([[0, 1], [2, 1]])
    rgb = colorize(labels, 3)
    assert rgb.shape == (2, 2, 3)
    assert np.array_equal(rgb[0, 1], palette(3)[1])
    assert np.array_equal(rgb[0, 1], rgb[1, 1])
    with pytest.raises(HypercolumnsError, match=r"0\.\.1, got 0\.\.2"):
        colorize(labels, 2)
    with pytest.raises(HypercolumnsError, match="at least one colour"):
        palette(0)


def test_figures() -> None:
    images = [torch.rand(3, 8, 10), torch.rand(3, 12, 6)]
    labels = [torch.zeros(8, 10, dtype=torch.long), torch.ones(12, 6, dtype=torch.long)]
    fig = cluster_figure(images, labels, 2, titles=["a", "b"], layers=["3", "8"])
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title().startswith("a ")
    with pytest.raises(HypercolumnsError, match="2 images and 1 label maps"):
        cluster_figure(images, labels[:1], 2)
    fig = pca_figure(images[0], torch.rand(3, 8, 10), layers=["3"], explained=[0.5, 0.2, 0.1])
    assert "R 50%" in fig.axes[1].get_title()
