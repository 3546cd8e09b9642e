"""Models shared by the feature tests (random weights, seeded; one per test module)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()
