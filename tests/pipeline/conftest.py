"""What the pipeline's tests share: pictures, a folder of them, the model a run builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypercolumns as hc
from hypercolumns.pipeline import Settings

SIZES = [(20, 16), (24, 18), (20, 16), (17, 23), (24, 18)]


def picture(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five images of three sizes, PNG and JPEG, one in a subfolder."""
    root = tmp_path / "images"
    for i, size in enumerate(SIZES):
        name = f"sub/im{i}.jpg" if i == 3 else f"im{i}.{'png' if i % 2 else 'jpg'}"
        picture(root / name, size, i)
    return root


def model_of(settings: Settings) -> torch.nn.Module:
    """The model a run builds: random weights are seeded, so every process gets the same."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return hc.load_model(settings.model)
