"""The explorer's tests share one small model: VGG-16's convolutional part (random weights,
seeded), whose layers 3, 8, 15, 22, 29 are those the app shows by default for VGG-16, run on
64x64 images (the bundled photo resized) so that the whole of tests/app stays quick."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from hypercolumns.app.state import Explorer, State
from hypercolumns.app.uploads import Limits
from hypercolumns.demo import image_path

LAYERS = ["3", "8", "15", "22", "29"]
SIDE = 64


@pytest.fixture(scope="module")
def vgg_features() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().features.eval()


@pytest.fixture(scope="module")
def explorer(vgg_features: nn.Module) -> Explorer:
    return Explorer(
        vgg_features, "vgg16 features", weights="random (seed 0)", images=[image_path()],
        layers=LAYERS, limits=Limits(side=SIDE, longest=2 * SIDE),
    )  # fmt: skip


@pytest.fixture(scope="module")
def state(explorer: Explorer) -> State:
    return explorer.open(image_path())
