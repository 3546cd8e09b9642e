from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError
from hypercolumns.viz import plot
from tests.rf.test_erf import ones_stack
from tests.tiny_models import tiny


@pytest.fixture(scope="module")
def erf() -> hc.ERF:
    return hc.erf(ones_stack(2, (3, 3)), -1, (12, 10), unit=(2, 3), samples=1)


def _boxes(ax: object) -> list[tuple[float, float, float, float]]:
    """``(x, y, width, height)`` of the unfilled rectangles drawn on an axes."""
    return [
        (p.get_x(), p.get_y(), p.get_width(), p.get_height())
        for p in ax.patches  # type: ignore[attr-defined]
        if isinstance(p, Rectangle) and not p.get_fill()
    ]


def test_erf_map_draws_the_theoretical_box(erf: hc.ERF, tmp_path: Path) -> None:
    fig = plot.erf_map(erf)
    ax = fig.axes[0]
    assert ax.get_title().startswith("ERF of 1 unit (2,3), 1 noise input\nstd 1.2,1.2 px")
    # unit (2, 3) of two 3x3 convolutions: rf pixels 0..4 x 1..5, drawn edge to edge
    assert (0.5, -0.5, 5.0, 5.0) in _boxes(ax)
    assert len(fig.axes) == 2  # the map and its colorbar
    out = plot.save(fig, tmp_path / "erf.png", dpi=60)
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10
    log = plot.erf_map(erf, log=True)
    assert "log10" in log.axes[1].get_ylabel()


def test_erf_comparison_side_by_side(erf: hc.ERF) -> None:
    other = hc.erf(tiny(), 3, 16, samples=2)
    fig = plot.erf_comparison([erf, other], ["ones", "tiny"], rescale="log")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["ones", "tiny"]
    assert all(float(ax.images[0].get_array().max()) == pytest.approx(1.0) for ax in panels)
    assert "log10" in fig.axes[-1].get_ylabel()
    with pytest.raises(HypercolumnsError, match="2 titles for 1 ERFs"):
        plot.erf_comparison([erf], ["a", "b"])
    with pytest.raises(HypercolumnsError, match="rescale must be"):
        plot.erf_comparison([erf], rescale="sqrt")
    with pytest.raises(HypercolumnsError, match="no ERFs"):
        plot.erf_comparison([])


def test_erf_on_image_overlays_the_erf(erf: hc.ERF) -> None:
    image = torch.full((3, 12, 10), 0.5)
    fig = plot.erf_on_image(erf, image)
    ax = fig.axes[0]
    assert len(ax.images) == 2  # the image and the overlay
    overlay = ax.images[1].get_array()
    alpha = np.asarray(overlay)[..., 3]
    assert alpha.max() == pytest.approx(0.85)
    assert alpha[0, 9] == 0
    assert (0.5, -0.5, 5.0, 5.0) in _boxes(ax)
    with pytest.raises(HypercolumnsError, match="image is 8\u00d78 but the ERF"):
        plot.erf_on_image(erf, torch.zeros(3, 8, 8))
