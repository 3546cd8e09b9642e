"""Pixel probes: prediction through the per-layer mechanism equals the explicit route, they
learn a separable mosaic, they are deterministic, saved and read back, and bad input is
refused with one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypercolumns as hc
from hypercolumns.errors import ImageError, LayerNotFoundError, OptionError, WeightsError
from hypercolumns.probes import probe as probe_module
from hypercolumns.probes import skimage_features
from tests.conftest import TINY
from tests.tiny_models import tiny

LAYERS = [0, 3]


def mosaic(n: int, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three textures (stripes in one colour channel each, three orientations) in random
    rectangles, with their exact masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    tex = [((yy // 2) % 2).float(), ((xx // 2) % 2).float(), (((yy + xx) // 2) % 2).float()]
    images, masks = [], []
    for _ in range(n):
        cy, cx = (int(v) for v in torch.randint(6, size - 6, (2,), generator=g))
        lab = torch.full((size, size), 2, dtype=torch.long)
        lab[:cy, :cx] = 0
        lab[:cy, cx:] = 1
        img = 0.1 * torch.randn(3, size, size, generator=g)
        for k in range(3):
            img[k] += (lab == k) * (0.5 + tex[k])
        images.append(img)
        masks.append(lab)
    return torch.stack(images), torch.stack(masks)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny().eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return mosaic(4)


@pytest.fixture(scope="module")
def fitted(model, data) -> hc.Probe:
    return hc.fit_probe(model, *data, LAYERS, points=150, classes=["a", "b", "c"])


def _explicit(probe: hc.Probe, model, x: torch.Tensor) -> torch.Tensor:
    cols = hc.hypercolumns(model, x, probe.layers, align=probe.meta["align"]).features
    z = probe.standardizer(cols.permute(0, 2, 3, 1))
    return probe.head(z).permute(0, 3, 1, 2)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_prediction_equals_explicit_hypercolumns_and_the_head(model, data, head) -> None:
    p = hc.fit_probe(model, *data, LAYERS, points=60, head=head, max_iter=30, hidden=16)
    x = mosaic(2, size=30, seed=5)[0]
    got, want = p.predict(x), _explicit(p, model, x)
    assert got.shape == (2, 3, 30, 30)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_mlp_bands_equal_the_whole(model, data, monkeypatch) -> None:
    p = hc.fit_probe(model, *data, LAYERS, points=60, head="mlp", max_iter=20, hidden=8)
    x = mosaic(1, size=32, seed=6)[0]
    whole = p.predict(x)
    monkeypatch.setattr(probe_module, "_BAND_BYTES", 32 * 10 * 4 * 3 * 5)  # 5 rows a band
    assert torch.allclose(p.predict(x), whole, atol=1e-5)


def test_a_linear_probe_learns_a_texture_mosaic(fitted) -> None:
    scores = fitted.evaluate(*mosaic(3, seed=1))
    assert scores["pixel_accuracy"] > 0.9, scores
    assert scores["miou"] > 0.8, scores
    assert set(scores["per_class_iou"]) == {"a", "b", "c"}
    assert scores["images"] == 3
    labels = fitted.segment(mosaic(1, seed=2)[0])
    assert labels.shape == (1, 24, 24)
    assert labels.dtype == torch.int64


def test_deterministic_for_a_seed(model, data) -> None:
    a = hc.fit_probe(model, *data, LAYERS, points=50, seed=3, max_iter=20)
    b = hc.fit_probe(model, *data, LAYERS, points=50, seed=3, max_iter=20)
    c = hc.fit_probe(model, *data, LAYERS, points=50, seed=4, max_iter=20)
    assert torch.equal(a.head.tensors["weight"], b.head.tensors["weight"])
    assert not torch.equal(a.head.tensors["weight"], c.head.tensors["weight"])


def test_ignore_index_pixels_are_never_sampled_nor_scored(model, data, fitted) -> None:
    x, y = data
    scribbles = torch.full_like(y, 255)
    scribbles[:, ::5, ::5] = y[:, ::5, ::5]  # sparse scribbles
    p = hc.fit_probe(model, x, scribbles, LAYERS, points=500, max_iter=20)
    assert p.meta["samples"] == int((scribbles != 255).sum())
    xt, yt = mosaic(1, seed=7)
    yt[0, :10] = 255
    assert fitted.evaluate(xt, yt)["pixels"] == int((yt != 255).sum())


def test_save_and_load(fitted, model, tmp_path) -> None:
    path = fitted.save(tmp_path / "p.safetensors")
    back = hc.load_probe(path, model)
    x = mosaic(1, seed=8)[0]
    assert torch.equal(back.predict(x), fitted.predict(x))
    assert back.classes == ["a", "b", "c"]
    meta = back.meta
    assert meta["layers"] == [{"name": "0", "channels": 4}, {"name": "3", "channels": 6}]
    assert meta["weights_sha256"] == hc.models.weights_digest(model)
    assert {"align", "preprocessing", "task", "head", "hypercolumns_version"} <= set(meta)
    with pytest.raises(OptionError, match=r"NAME\.safetensors"):
        fitted.save(tmp_path / "p.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


def test_a_probe_fitted_by_spec_is_rebuilt_from_its_record(data, tmp_path) -> None:
    p = hc.fit_probe(TINY, *data, LAYERS, points=40, max_iter=10)
    assert p.meta["weights"] == "random (seed 0)"
    back = hc.load_probe(p.save(tmp_path / "p.safetensors"))
    x = data[0][:1]
    assert torch.equal(back.predict(x), p.predict(x))


def test_other_layers_and_other_weights_are_refused(fitted, tmp_path) -> None:
    path = fitted.save(tmp_path / "p.safetensors")
    nn = torch.nn
    wider = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.ReLU(), nn.Conv2d(5, 6, 1))
    with pytest.raises(LayerNotFoundError, match=r"0: 4 ch, the model's 5.*another model"):
        hc.load_probe(path, wider)
    with pytest.raises(LayerNotFoundError, match="does not have them"):
        hc.load_probe(path, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)))
    torch.manual_seed(1)
    other = hc.load_probe(path, tiny().eval())
    with pytest.raises(WeightsError, match="other weights"):
        other.predict(torch.zeros(1, 3, 16, 16))
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(OptionError, match="cannot read probe"):
        hc.load_probe(tmp_path / "x.safetensors")


def test_weights_changed_in_place_are_noticed(model, data) -> None:
    torch.manual_seed(0)
    net = tiny().eval()
    p = hc.fit_probe(net, *data, LAYERS, points=30, max_iter=5)
    p.predict(data[0][:1])
    with torch.no_grad():
        net[0].weight.add_(1)
    with pytest.raises(WeightsError, match="sha256"):
        p.predict(data[0][:1])


def test_bad_labels_are_refused(model, data) -> None:
    x, y = data
    bad = y.clone()
    bad[1, 0, 0] = 7
    with pytest.raises(OptionError, match=r"image 1 has label 7, outside the 3 classes \(0: a"):
        hc.fit_probe(model, x, bad, LAYERS, classes=["a", "b", "c"])
    with pytest.raises(OptionError, match="no labelled pixel"):
        hc.fit_probe(model, x, torch.full_like(y, 255), LAYERS)
    with pytest.raises(OptionError, match=r"class 'd' \(label 3\) has no pixel"):
        hc.fit_probe(model, x, y, LAYERS, classes=["a", "b", "c", "d"])
    gap = torch.where(y == 1, 2, y)
    with pytest.raises(OptionError, match=r"class '1' \(label 1\) has no pixel"):
        hc.fit_probe(model, x, gap, LAYERS)
    with pytest.raises(OptionError, match=r"l2.*does not commute"):
        hc.fit_probe(model, x, y, LAYERS, normalize="l2")
    with pytest.raises(OptionError, match="target of image 0 is 23x24"):
        hc.fit_probe(model, x, y[:, 1:], LAYERS)


def test_a_mask_of_another_size_names_the_file(model, tmp_path) -> None:
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((12, 9), np.uint8)).save(tmp_path / "a_mask.png")
    (tmp_path / "list.csv").write_text("path,mask\na.png,a_mask.png\n")
    with pytest.raises(ImageError, match=r"a_mask.png.*12x9, its image 12x10"):
        hc.fit_probe(model, tmp_path / "list.csv", None, LAYERS)


def test_regression_and_its_channel_counts(model, data) -> None:
    x = data[0]
    values = torch.stack([x[:, 0] * 2, x[:, 1] - x[:, 2]], 1)  # (N, 2, H, W)
    p = hc.fit_probe(model, x, values, LAYERS, task="regress", points=200)
    scores = p.evaluate(x, values)
    assert scores["rmse"] < 0.7 * float(values.std()), scores  # well under a constant's
    assert scores["psnr"] > 0
    assert p.predict(x[:1]).shape == (1, 2, 24, 24)
    with pytest.raises(OptionError, match="has 3 channels, this probe's 2"):
        p.evaluate(x, torch.cat([values, values[:, :1]], 1))
    mixed = [values[0], values[1, :1], values[2], values[3]]
    with pytest.raises(OptionError, match="image 1 has 1 channels, those of image 0 2"):
        hc.fit_probe(model, x, mixed, LAYERS, task="regress")


def test_colorization(model, data) -> None:
    x = data[0].clamp(0, 1)
    p = hc.fit_probe(model, x, None, LAYERS, task="regress", colorize=True, points=100)
    assert p.classes == ["r", "g", "b"]
    scores = p.evaluate(x)
    assert scores["psnr"] > 10, scores


def test_from_a_sparse_store_with_labels(tmp_path) -> None:
    from hypercolumns.pipeline import Settings, run

    x, y = mosaic(3, seed=9)
    lines = ["path,mask"]
    for i in range(3):
        rgb = (x[i].clamp(0, 1.5) / 1.5 * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
        Image.fromarray(y[i].byte().numpy()).save(tmp_path / f"{i}_m.png")
        lines.append(f"{i}.png,{i}_m.png")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    settings = Settings(model=TINY, layers="0,3", points=120)
    run([str(tmp_path / "list.csv")], tmp_path / "hc.parquet", settings)
    p = hc.fit_probe(None, tmp_path / "hc.parquet", max_iter=50)
    assert p.layers == ["0", "3"]
    assert p.meta["samples"] == 360
    assert p.meta["weights"] == "random (seed 0)"
    scores = p.evaluate(tmp_path / "list.csv")
    assert scores["pixel_accuracy"] > 0.8, scores
    # a data set is scored one image at a time: each read when its turn comes
    events: list[str] = []
    from hypercolumns.probes import samples

    real_read, real_segment = samples.load_image, p.segment

    def read(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append(f"read {Path(path).name}")
        return real_read(path, *args, **kwargs)

    def segment(x):  # type: ignore[no-untyped-def]
        events.append("segment")
        return real_segment(x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samples, "load_image", read)
        mp.setattr(p, "segment", segment)
        assert p.evaluate(tmp_path / "list.csv") == scores
    assert events == ["read 0.png", "segment", "read 1.png", "segment", "read 2.png", "segment"]
    with pytest.raises(OptionError, match="holds layers"):
        hc.fit_probe(None, tmp_path / "hc.parquet", layers=[0])


def test_skimage_trainable_segmenter(model) -> None:
    from skimage.future import TrainableSegmenter
    from sklearn.ensemble import RandomForestClassifier

    x, y = mosaic(1, seed=3)
    image = (x[0].clamp(0, 1.5) / 1.5).permute(1, 2, 0).numpy()
    func = skimage_features(model, LAYERS)
    assert func(image).shape == (24, 24, 10)
    assert func(image[..., 0]).shape == (24, 24, 10)
    scribbles = np.zeros((24, 24), np.uint8)
    scribbles[::3, ::3] = y[0, ::3, ::3].numpy() + 1  # 0 unlabelled, classes 1..3
    clf = RandomForestClassifier(n_estimators=20, random_state=0)
    seg = TrainableSegmenter(clf=clf, features_func=func)
    seg.fit(image, scribbles)
    labels = seg.predict(image) - 1
    assert (labels == y[0].numpy()).mean() > 0.85
