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
from hypercolumns.demo import image_path
from tests.app.conftest import LAYERS
from tests.tiny_models import tiny

PIXELS = [(0, 0), (40, 20), (63, 63), (11, 50)]


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
    found = hc.select(hc.layers(vgg_features, (64, 64)), LAYERS)
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
    line = handlers.status(state, 40, 20)
    assert line.startswith("pixel (y=40, x=20) of the 64x64 image")
    assert "3 unit (40,20) box y 38..42, x 18..22" in line
    assert "29 unit (2,1) box y -58..137, x -74..121" in line  # reaches into the padding


@pytest.mark.parametrize(("y", "x"), [(-1, 0), (0, 64), (64, 5), (1.5, 2)])
def test_a_click_outside_the_image_is_refused_with_the_image_size(
    state: State, y: float, x: float
) -> None:
    with pytest.raises(hc.OptionError, match=r"outside the 64x64 image \(y in 0..63"):
        handlers.status(state, y, x)  # type: ignore[arg-type]


def test_erf_view_is_hc_erf_of_the_clicked_unit_on_this_image(
    state: State, vgg_features: nn.Module
) -> None:
    measured = handlers.effective_rf(state, 50, 10, "15")
    unit = nearest_unit(hc.select(hc.layers(vgg_features, 64), "15")[0], 50, 10)
    direct = hc.erf(vgg_features, "15", 64, unit=unit, inputs=state.x, samples=1)
    assert measured.unit == unit == direct.unit
    assert measured.samples == 1
    assert measured.inputs == "tensor"
    torch.testing.assert_close(measured.map, direct.map)
    picture = handlers.erf_image(state, 50, 10, "15")
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
    assert kept.shape == (128, 32, 32)
    _, other = handlers.feature_map(state, "6")  # not chosen: computed
    direct = hc.feature_maps(vgg_features, state.x, ["6"], as_maps=True)["6"][0]
    torch.testing.assert_close(other, direct)
    assert handlers.channel_grid_image(state, "8", 4).ndim == 3
    assert handlers.channel_image(state, "8", 5).ndim == 3
    with pytest.raises(hc.HypercolumnsError, match="out of range: 8 has 128 channels"):
        handlers.channel_image(state, "8", 500)


def test_rf_view_draws_one_colour_per_layer_around_the_image(state: State) -> None:
    picture = handlers.rf_image(state, 40, 20)
    assert picture.ndim == 3
    assert picture.dtype == np.uint8
    # layer 29's box reaches 74 pixels left of the image: the canvas holds it, in grey margin
    assert (picture[:, 10] == (200, 200, 200)).all(axis=1).any()
    for colour in COLOURS[: len(LAYERS)]:
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert (picture.reshape(-1, 3) == rgb).all(axis=1).any(), colour
    html = handlers.legend_html(handlers.receptive_fields(state, 40, 20))
    assert "29 unit (2, 1): rf 196x196, stride 16,16" in html


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
    assert st.size == (64, 96)
    assert st.name == "wide.png"
    assert st.pixels.shape == (3, 64, 96)
    torch.testing.assert_close(st.pixels[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


# -- similarity, correspondence, PCA, k-means, scribbles ----------------------------------------


@pytest.fixture(scope="module")
def second(explorer: Explorer, tmp_path_factory: pytest.TempPathFactory) -> State:
    """The bundled photo mirrored and cropped, as the second image."""
    path = tmp_path_factory.mktemp("second") / "mirrored.png"
    with Image.open(image_path()) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 40, 512, 400)).save(path)
    return explorer.open(path)


@pytest.mark.parametrize(("y", "x"), PIXELS)
def test_the_similarity_of_a_pixel_to_itself_is_one(state: State, y: int, x: int) -> None:
    sim = handlers.similarity(state, y, x)
    assert sim.shape == state.size
    assert abs(float(sim[y, x]) - 1.0) < 1e-5
    assert float(sim.max()) <= 1.0


@pytest.mark.parametrize(("y", "x"), PIXELS[1:3])
def test_similarity_view_is_hc_similarity(
    state: State, vgg_features: nn.Module, y: int, x: int
) -> None:
    direct = hc.similarity(vgg_features, state.x, LAYERS, torch.tensor([[y, x]]))[0]
    torch.testing.assert_close(handlers.similarity(state, y, x), direct)
    picture = handlers.similarity_image(state, y, x)
    assert picture.dtype == np.uint8
    assert picture.shape[1] == 7 * 64  # enlarged to about 448 screen pixels


def test_correspondence_marks_hc_corresponds_match(
    state: State, second: State, vgg_features: nn.Module
) -> None:
    with pytest.raises(hc.HypercolumnsError, match="second image"):
        handlers.correspondence(state, 10, 10)
    both = state.with_target(second)
    assert both.target is not None
    assert both.target.size == (64, 91)
    for y, x in PIXELS[1:3]:
        found = handlers.correspondence(both, y, x)
        direct = hc.correspond(vgg_features, state.x, second.x, LAYERS, torch.tensor([[y, x]]))
        assert found.point == tuple(direct.points[0].tolist())
        assert abs(found.score - float(direct.scores[0])) < 1e-5
        sim = hc.similarity(vgg_features, state.x, LAYERS, torch.tensor([[y, x]]), target=second.x)
        torch.testing.assert_close(found.map, sim[0])
    picture = handlers.target_image(both, 40, 20)
    assert (picture.reshape(-1, 3) == (0, 255, 102)).all(axis=1).any()  # the green cross
    fewer = both.with_layers("8,22")  # the second image follows the layers
    assert fewer.target is not None
    assert [layer.name for layer in fewer.target.layers] == ["8", "22"]


def test_kmeans_view_is_fit_kmeans_assign(state: State, vgg_features: nn.Module) -> None:
    labels = handlers.kmeans(state, 4)
    direct = hc.fit_kmeans(vgg_features, state.x, LAYERS, 4, points=1000).assign(state.x)[0]
    assert torch.equal(labels, direct)
    assert handlers.kmeans_image(state, 4).ndim == 3
    with pytest.raises(hc.OptionError, match="k must be between 2 and 16"):
        handlers.kmeans(state, 1)


def test_pca_view_is_fit_pca_image_rgb(state: State, vgg_features: nn.Module) -> None:
    direct = hc.fit_pca_image(vgg_features, state.x, LAYERS, points=300).rgb(state.x)[0]
    torch.testing.assert_close(handlers.pca_rgb(state, points=300), direct)
    assert handlers.pca_image(state, points=300).ndim == 3


def _rgba(hex_colour: str, alpha: int = 255) -> list[int]:
    return [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)] + [alpha]


def test_scribbles_decode_to_labels_with_255_unpainted() -> None:
    red, blue = handlers.SCRIBBLE_CLASSES["red"], handlers.SCRIBBLE_CLASSES["blue"]
    layer = np.zeros((8, 10, 4), dtype=np.uint8)
    layer[1, 1:5] = _rgba(red)
    layer[6, 2:9] = _rgba(blue)
    layer[3, 3] = _rgba(red, 60)  # a faint rim: left out
    layer[4, 4] = [128, 128, 128, 255]  # not a brush colour
    over = np.zeros_like(layer)
    over[6, 8] = _rgba(red)  # a later layer paints over
    labels = handlers.scribble_labels({"layers": [layer, over]}, (8, 10))
    want = np.full((8, 10), 255, dtype=np.uint8)
    want[1, 1:5] = 0
    want[6, 2:8] = 1
    want[6, 8] = 0
    np.testing.assert_array_equal(labels, want)
    big = np.repeat(np.repeat(layer, 2, axis=0), 2, axis=1)  # another size: resized
    assert (handlers.scribble_labels([big], (8, 10)) == 0).sum() == 4


def test_scribble_probe_is_fit_probe_on_the_painted_pixels(
    state: State, vgg_features: nn.Module, tmp_path: Path
) -> None:
    labels = np.full(state.size, 255, dtype=np.uint8)
    labels[5:9, 5:60] = 1  # blue across the top
    labels[50:54, 5:60] = 3  # yellow across the bottom
    probe = handlers.scribble(state, labels)
    target = torch.full(state.size, 255, dtype=torch.long)
    target[5:9, 5:60], target[50:54, 5:60] = 0, 1
    direct = hc.fit_probe(
        vgg_features, state.x, target[None], LAYERS, points=1024, classes=["blue", "yellow"]
    )
    assert probe.classes == ["blue", "yellow"]
    for name, value in direct.head.tensors.items():
        torch.testing.assert_close(probe.head.tensors[name], value)
    torch.testing.assert_close(probe.standardizer.mean, direct.standardizer.mean)
    torch.testing.assert_close(probe.standardizer.std, direct.standardizer.std)
    seg = handlers.segmentation(state, probe)
    assert torch.equal(seg, direct.segment(state.x)[0])
    assert handlers.segmentation_image(state, probe).ndim == 3
    saved = handlers.save_probe(probe, tmp_path)
    assert saved.name == "scribble-probe.safetensors"
    loaded = hc.load_probe(saved, model=vgg_features)
    assert torch.equal(loaded.segment(state.x)[0], seg)
    one = np.full(state.size, 255, dtype=np.uint8)
    one[5:9, 5:60] = 0
    with pytest.raises(hc.OptionError, match="at least two classes"):
        handlers.scribble(state, one)


def test_a_probe_records_how_to_rebuild_the_model(state: State) -> None:
    record = {"model": "torchvision:vgg16", "model_kwargs": {}, "weights": "random (seed 0)",
              "weights_seed": 0, "weights_file": None, "pretrained": False}  # fmt: skip
    ex = state.explorer
    ex.record = record
    try:
        labels = np.full(state.size, 255, dtype=np.uint8)
        labels[5:9], labels[50:54] = 0, 1
        probe = handlers.scribble(state, labels, points=64)
    finally:
        ex.record = None
    assert {k: probe.meta[k] for k in record} == record


def test_every_event_of_the_page_is_a_named_endpoint(explorer: Explorer) -> None:
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from hypercolumns.app.page import ENDPOINTS, IDS, build

    page = build(explorer)
    public = [fn for fn in page.fns.values() if fn.api_visibility != "private"]
    assert sorted(fn.api_name for fn in public) == sorted(ENDPOINTS)
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert set(IDS) <= ids
