"""Training samples: images and targets in the forms users have, hypercolumns at pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hypercolumns as hc
from hypercolumns.errors import ImageError, OptionError
from hypercolumns.probes.samples import Standardizer, examples, sample
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
