"""Training samples: images and targets in the forms users have, hypercolumns at pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypercolumns as hc
from hypercolumns.errors import ImageError, OptionError
from hypercolumns.probes.samples import Standardizer, examples, sample, stream_examples
from tests.tiny_models import tiny


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny().eval()


def test_samples_are_the_hypercolumns_at_stratified_pixels(model) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, 20, generator=gen)
    labels = torch.full((2, 24, 20), 255)
    labels[0, :5] = 0
    labels[0, 10:12, :3] = 1  # a small class: every one of its 6 pixels is drawn
    labels[1, 20:] = 2
    items = examples(model, x, labels)
    s = sample(model, items, "all", points=30, seed=3)
    assert s.counts == [30, 30]
    assert s.targets is not None
    assert set(s.targets.tolist()) == {0, 1, 2}
    assert int((s.targets == 1).sum()) == 6
    assert 255 not in s.targets.tolist()
    first = hc.hypercolumns(
        model,
        x[:1],
        "all",
        points=30,
        labels=torch.where(labels[:1] == 255, -1, labels[:1]),
        seed=3,
    )
    assert torch.allclose(s.features[:30], first.features[0], atol=1e-5)


def test_paths_and_a_csv_with_masks(model, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 18, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        Image.fromarray(np.full((16, 18), i, dtype=np.uint8)).save(tmp_path / f"{i}_m.png")
    (tmp_path / "list.csv").write_text("path,mask\n0.png,0_m.png\n1.png,1_m.png\n")
    items = examples(model, tmp_path / "list.csv")
    assert [ex.target.unique().tolist() for ex in items] == [[0], [1]]
    by_path = examples(model, [tmp_path / "0.png"], [tmp_path / "0_m.png"])
    assert torch.equal(by_path[0].image, items[0].image)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small.png.*5x5, its image 16x18"):
        examples(model, [tmp_path / "0.png"], [tmp_path / "small.png"])


def test_a_stream_reads_each_image_when_it_comes(model, tmp_path, monkeypatch) -> None:
    """``probe predict`` over a data set: one image in memory at a time, names known first."""
    from hypercolumns.probes import samples

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 18, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    whole = examples(model, paths[:1])[0].image
    read: list[str] = []
    real = samples.load_image

    def counted(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        read.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(samples, "load_image", counted)
    stream = stream_examples(model, paths)
    assert (stream.names, len(stream), read) == ([str(p) for p in paths], 3, [])
    it = iter(stream)
    first = next(it)
    assert read == ["0.png"]
    assert torch.equal(first.image, whole)
    assert [Path(ex.name).name for ex in it] == ["1.png", "2.png"]
    assert read == ["0.png", "1.png", "2.png"]
    with pytest.raises(OptionError, match="3 images but 1 targets"):  # counts: at once
        stream_examples(model, paths, [torch.zeros(16, 18, dtype=torch.long)])


def test_bad_input(model) -> None:
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(OptionError, match="2 images but 1 targets"):
        examples(model, x, [torch.zeros(8, 8, dtype=torch.long)])
    with pytest.raises(OptionError, match="target of image 0 is 7x8"):
        examples(model, x, torch.zeros(2, 7, 8, dtype=torch.long))
    with pytest.raises(OptionError, match="no labelled pixel"):
        sample(model, examples(model, x, torch.full((2, 8, 8), 255)), "all", points=4)


def test_standardizer() -> None:
    f = torch.randn(100, 3) * torch.tensor([1.0, 5.0, 0.0]) + 2
    st = Standardizer.fit(f)
    z = st(f)
    assert torch.allclose(z[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z[:, :2].std(0, correction=0), torch.ones(2), atol=1e-4)
    assert torch.isfinite(z).all()
