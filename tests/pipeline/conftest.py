"""What the pipeline's tests share: pictures, a folder of them, the model a run builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypercolumns as hc
from hypercolumns.pipeline import Settings
from tests.conftest import HERE

SLOW = f"{HERE / 'tiny_models.py'}:slow_tiny"  # tiny, 0.05 s a forward pass
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


def _threads(count: int) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One PyTorch thread (no lanes), as a Ray actor of a 2-CPU instance: the same sums in the
    same order, so stores of the two engines are equal to the bit."""
    yield from _threads(1)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two PyTorch threads, where the local engine runs two lanes."""
    yield from _threads(2)
