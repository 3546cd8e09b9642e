from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypercolumns.errors import HypercolumnsError
from hypercolumns.rf.layers import layers
from hypercolumns.viz import plot
from tests.tiny_models import tiny


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _gradient_maps(c: int = 4, h: int = 12, w: int = 10) -> torch.Tensor:
    ramp = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    return torch.stack([ramp * (k + 1) for k in range(c)])


def test_feature_map_png_has_the_figure_size_and_varying_pixels(tmp_path: Path) -> None:
    fig = plot.feature_map(_gradient_maps(), 2, layer="features.3")
    out = plot.save(fig, tmp_path / "fm.png", dpi=100)
    w, h = fig.get_size_inches() * 100
    assert Image.open(out).size == (round(w), round(h))
    flat = plot.save(plot.feature_map(torch.zeros(4, 12, 10), 2), tmp_path / "flat.png", dpi=100)
    varying, constant = _pixels(out), _pixels(flat)
    assert varying.std() > constant.std()  # the gradient shows, the constant map does not
    assert fig.axes[0].get_title().startswith("features.3, channel 2")
    assert "4\u00d712\u00d710" in fig.axes[0].get_title()
    assert len(fig.axes) == 2  # the map and its colorbar


def test_feature_map_with_image_is_wider(tmp_path: Path) -> None:
    image = torch.rand(3, 12, 10)
    fig = plot.feature_map(_gradient_maps()[None], 0, image=image)
    out = plot.save(fig, tmp_path / "fm.png", dpi=50)
    alone = plot.save(plot.feature_map(_gradient_maps(), 0), tmp_path / "alone.png", dpi=50)
    assert Image.open(out).size[0] > Image.open(alone).size[0]


def test_channel_grid_draws_the_chosen_channels(tmp_path: Path) -> None:
    fig = plot.channel_grid(_gradient_maps(c=6), 5, layer="conv")
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert len(fig.axes) == 3 * 2 + 1  # a 3x2 grid (one panel empty) and the shared colorbar
    assert "5 of 6 channels" in fig.get_suptitle()
    out = plot.save(fig, tmp_path / "grid.png", dpi=60)
    assert _pixels(out).std() > 10
    fig = plot.channel_grid(_gradient_maps(c=6), [5, 0], cols=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()][:2] == ["ch 5", "ch 0"]


def test_mean_hypercolumn_shows_the_image_and_the_mean(tmp_path: Path) -> None:
    feats = torch.zeros(1, 3, 8, 8)
    feats[0, :, :, 4:] = 1.0
    image = torch.zeros(3, 8, 8)
    fig = plot.mean_hypercolumn(feats, image, layers=["a", "b"])
    assert "a, b" in fig.axes[1].get_title()
    drawn = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn)[:, :4], 0.0)
    np.testing.assert_allclose(np.asarray(drawn)[:, 4:], 1.0)
    out = plot.save(fig, tmp_path / "mean.pdf")
    assert out.read_bytes().startswith(b"%PDF")


def test_receptive_fields_draws_one_box_per_layer(tmp_path: Path) -> None:
    found = layers(tiny(), (16, 16))
    chosen = [found[1], found[4], found[-1]]  # relu, relu after pool, global linear
    fig = plot.receptive_fields(torch.rand(3, 16, 16), chosen)
    ax = fig.axes[0]
    boxes = ax.patches
    assert len(boxes) == 3
    # centre unit of layer 1: (7, 7), rf 3 -> pixels 6..8 -> box from 5.5, 3 wide
    assert (boxes[0].get_x(), boxes[0].get_y(), boxes[0].get_width()) == (5.5, 5.5, 3.0)
    assert boxes[2].get_width() == 16.0  # global: the whole input
    plot.save(fig, tmp_path / "rf.svg")
    assert (tmp_path / "rf.svg").read_text().lstrip().startswith("<?xml")


def test_errors_and_no_half_written_files(tmp_path: Path) -> None:
    fig = plot.feature_map(_gradient_maps(), 0)
    with pytest.raises(HypercolumnsError, match=r"\.png, \.pdf, \.svg"):
        plot.save(fig, tmp_path / "fig.jpg")
    with pytest.raises(HypercolumnsError, match="channel 9 is out of range: x has 4 channels"):
        plot.feature_map(_gradient_maps(), 9, layer="x")
    with pytest.raises(HypercolumnsError, match="global layer"):
        plot.feature_map(torch.zeros(1, 7), 0)
    assert list(tmp_path.iterdir()) == []


def test_no_pyplot_state() -> None:
    code = (
        "import sys, torch; from hypercolumns.viz import plot; "
        "plot.save(plot.feature_map(torch.rand(2, 4, 4)), sys.argv[1]); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(
            [sys.executable, "-c", code, str(Path(tmp) / "x.png")],
            capture_output=True,
            text=True,
            check=True,
        )
    assert res.stdout.strip() == "False"
