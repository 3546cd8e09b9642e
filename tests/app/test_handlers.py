"""Each view of the explorer checked against the library function it shows, without a browser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import hypercolumns as hc
from hypercolumns.app import handlers
from hypercolumns.app.render import COLOURS
from hypercolumns.app.state import Explorer, State, default_layers
from hypercolumns.app.uploads import Limits, check_upload, model_size
from tests.app.conftest import LAYERS
from tests.tiny_models import tiny

PIXELS = [(0, 0), (100, 60), (223, 223), (37, 190)]


def nearest_unit(layer: hc.Layer, y: int, x: int) -> tuple[int, int]:
    """The unit whose centre is nearest to (y, x), by search over the grid."""
    assert layer.rf is not None
    assert layer.layout is not None
    h, w = layer.layout.grid
    cy = [abs(layer.rf.unit_center(i, 0)[0] - y) for i in range(h)]
    cx = [abs(layer.rf.unit_center(0, j)[1] - x) for j in range(w)]
    return (int(np.argmin(cy)), int(np.argmin(cx)))


@pytest.mark.parametrize(("y", "x"), PIXELS)
def test_boxes_are_the_layer_geometry_of_the_clicked_unit(
    state: State, vgg_features: nn.Module, y: int, x: int
) -> None:
    found = hc.select(hc.layers(vgg_features, (224, 224)), LAYERS)
    boxes = handlers.receptive_fields(state, y, x)
    assert [b.layer.name for b in boxes] == LAYERS
    for k, (b, layer) in enumerate(zip(boxes, found, strict=True)):
        assert layer.rf is not None
        unit = nearest_unit(layer, y, x)
        assert b.unit == unit
        assert b.box == layer.rf.unit_box(*unit)
        assert b.center == layer.rf.unit_center(*unit)
        assert b.colour == COLOURS[k]
    first = boxes[0]  # features.3 at stride 1: a 5x5 box centred on the pixel itself
    assert first.box == (y - 2, x - 2, y + 2, x + 2)


def test_boxes_of_a_global_layer_cover_the_image() -> None:
    torch.manual_seed(0)
    model = tiny()
    ex = Explorer(model, "tiny", weights="random", images=["unused.png"], layers=[0, 3, 5])
    x = torch.randn(1, 3, 16, 20)
    st = ex.show(x, x[0].sigmoid(), "noise")
    boxes = handlers.receptive_fields(st, 5, 7)
    assert boxes[-1].unit == (0, 0)
    assert boxes[-1].box == (0.0, 0.0, 15.0, 19.0)
    with pytest.raises(hc.HypercolumnsError, match="no spatial units"):
        handlers.effective_rf(st, 5, 7, "5")


def test_status_line_names_pixel_units_and_boxes(state: State) -> None:
    line = handlers.status(state, 100, 60)
    assert line.startswith("pixel (y=100, x=60) of the 224x224 image")
    assert "3 unit (100,60) box y 98..102, x 58..62" in line
    assert "29 unit (6,3) box y 6..201, x -42..153" in line  # reaches into the padding


@pytest.mark.parametrize(("y", "x"), [(-1, 0), (0, 224), (224, 5), (1.5, 2)])
def test_a_click_outside_the_image_is_refused_with_the_image_size(
    state: State, y: float, x: float
) -> None:
    with pytest.raises(hc.OptionError, match=r"outside the 224x224 image \(y in 0..223"):
        handlers.status(state, y, x)  # type: ignore[arg-type]


def test_erf_view_is_hc_erf_of_the_clicked_unit_on_this_image(
    state: State, vgg_features: nn.Module
) -> None:
    measured = handlers.effective_rf(state, 150, 40, "15")
    unit = nearest_unit(hc.select(hc.layers(vgg_features, 224), "15")[0], 150, 40)
    direct = hc.erf(vgg_features, "15", 224, unit=unit, inputs=state.x, samples=1)
    assert measured.unit == unit == direct.unit
    assert measured.samples == 1
    assert measured.inputs == "tensor"
    torch.testing.assert_close(measured.map, direct.map)
    picture = handlers.erf_image(state, 150, 40, "15")
    assert picture.dtype == np.uint8
    assert picture.ndim == 3


def test_erf_layer_defaults_to_the_deepest_chosen_spatial_layer(state: State) -> None:
    assert handlers.erf_layer(state).name == "29"
    with pytest.raises(hc.LayerNotFoundError, match="featurs"):
        handlers.erf_layer(state, "featurs.3")


@pytest.mark.parametrize(("y", "x"), PIXELS)
def test_profile_is_the_hypercolumn_at_the_pixel(
    state: State, vgg_features: nn.Module, y: int, x: int
) -> None:
    got = handlers.hypercolumn(state, y, x)
    direct = hc.hypercolumns(vgg_features, state.x, LAYERS, points=torch.tensor([[[y, x]]]))
    torch.testing.assert_close(got.values, direct.features[0, 0])
    assert {k: [v.start, v.stop] for k, v in got.slices.items()} == direct.channel_ranges()
    picture = handlers.profile_image(state, y, x)
    assert picture.shape == (300, 760, 3)
    for colour in COLOURS[: len(LAYERS)]:  # one coloured block per layer
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert (picture.reshape(-1, 3) == rgb).all(axis=1).any(), colour


def test_mean_activation_is_the_mean_of_the_dense_hypercolumns(
    state: State, vgg_features: nn.Module
) -> None:
    dense = hc.hypercolumns(vgg_features, state.x, LAYERS).features[0]
    torch.testing.assert_close(handlers.mean_activation(state), dense.mean(0), rtol=1e-4, atol=1e-5)
    assert handlers.mean_activation_image(state).ndim == 3


def test_feature_maps_come_from_the_kept_maps_or_one_forward(
    state: State, vgg_features: nn.Module
) -> None:
    layer, kept = handlers.feature_map(state, "8")
    assert layer.name == "8"
    assert kept.shape == (128, 112, 112)
    _, other = handlers.feature_map(state, "6")  # not chosen: computed
    direct = hc.feature_maps(vgg_features, state.x, ["6"], as_maps=True)["6"][0]
    torch.testing.assert_close(other, direct)
    assert handlers.channel_grid_image(state, "8", 4).ndim == 3
    assert handlers.channel_image(state, "8", 5).ndim == 3
    with pytest.raises(hc.HypercolumnsError, match="out of range: 8 has 128 channels"):
        handlers.channel_image(state, "8", 500)


def test_rf_view_draws_one_colour_per_layer_around_the_image(state: State) -> None:
    picture = handlers.rf_image(state, 100, 60)
    assert picture.ndim == 3
    assert picture.dtype == np.uint8
    # layer 29's box reaches 42 pixels left of the image: the canvas holds it, in grey margin
    assert picture.shape[1] > picture.shape[0]
    for colour in COLOURS[: len(LAYERS)]:
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert (picture.reshape(-1, 3) == rgb).all(axis=1).any(), colour
    html = handlers.legend_html(handlers.receptive_fields(state, 100, 60))
    assert "29 unit (6, 3): rf 196x196, stride 16,16" in html


def test_layer_table_marks_the_chosen_layers(state: State) -> None:
    rows = handlers.layer_rows(state)
    assert len(rows[0]) == len(handlers.LAYER_COLUMNS)
    chosen = [row[2] for row in rows if row[0]]
    assert chosen == LAYERS
    row = next(r for r in rows if r[2] == "29")
    assert row[5:8] == ["196x196", "16,16", "7.5,7.5"]


def test_choosing_layers_replans_and_keeps_the_image(state: State) -> None:
    other = state.with_layers("8,22")
    assert [layer.name for layer in other.layers] == ["8", "22"]
    assert other.x is state.x
    assert other.maps.channels == 128 + 512
    with pytest.raises(hc.LayerNotFoundError):
        state.with_layers("nope")
    with pytest.raises(hc.LayerNotFoundError, match="at most 8"):
        state.with_layers("all")


def test_default_layers_are_one_per_resolution(vgg_features: nn.Module) -> None:
    found = hc.layers(vgg_features, 224)
    assert [layer.name for layer in default_layers(found)] == ["8", "15", "22", "29", "30"]


def test_uploads_are_checked_before_decoding(tmp_path: Path, explorer: Explorer) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(hc.ImageError, match=r"'notes\.png' is not an image"):
        explorer.open(text)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(hc.OutputTooLargeError, match=r"300x200 = 0.1 megapixels"):
        check_upload(big, Limits(max_pixels=50_000))
    with pytest.raises(hc.OutputTooLargeError, match="MiB"):
        check_upload(big, Limits(max_bytes=10))
    assert check_upload(big, Limits()) == (200, 300)


def test_images_are_resized_to_the_model_size(tmp_path: Path, explorer: Explorer) -> None:
    assert model_size((200, 300), Limits()) == (224, 336)
    assert model_size((100, 1000), Limits()) == (45, 448)  # the longer side is bounded
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (255, 0, 0)).save(wide)
    st = explorer.open(wide)
    assert st.size == (224, 336)
    assert st.name == "wide.png"
    assert st.pixels.shape == (3, 224, 336)
    torch.testing.assert_close(st.pixels[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
