"""Tiny models for fast tests, loadable as ``tests/tiny_models.py:tiny``."""

import time
from collections import OrderedDict

import torch
from torch import nn


def tiny(in_chans: int = 3, classes: int = 2) -> nn.Sequential:
    """Leaf layers: 0 conv(4), 1 relu, 2 pool/2, 3 conv(6), 4 relu, 5 gap, 6 flatten, 7 linear."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    )


def not_a_model() -> str:
    return "hello"


def tiny_vgg(in_chans: int = 3) -> nn.Sequential:
    """VGG-like: 3x3 convolutions (padding 1) and 2x2 max pooling; total stride 4."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.down = nn.Conv2d(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.bn(self.conv1(x)))) + self.down(x))


def tiny_resnet(in_chans: int = 3) -> nn.Sequential:
    """ResNet-like: a 7x7 stride-2 stem, padded max pooling, strided residual blocks (total
    stride 16, receptive-field centres off the cell centres, as in ResNet)."""
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(in_chans, 4, 7, 2, 3),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(3, 2, 1),
            block1=_Block(4, 6, 1),
            block2=_Block(6, 8, 2),
            block3=_Block(8, 8, 2),
        )
    )
    with torch.no_grad():  # running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def tiny_se() -> nn.Sequential:
    """A squeeze-and-excitation gate: every unit depends on the whole image's mean."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), _SqueezeExcite(4), nn.Conv2d(4, 4, 3, padding=1)
    )


class _Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x


def slow_tiny() -> nn.Sequential:
    """:func:`tiny` that takes 0.05 s per forward pass (for tests that interrupt a run)."""
    return nn.Sequential(_Slow(), *tiny())


def tiny_hourglass() -> nn.Sequential:
    """Down by 4 with strided convolutions, back up by a stride-4 transposed convolution: the
    output has stride 1, the layers in between stride 2 and 4."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 4, 4),
    )


def tiny_not_in_ray_actors() -> nn.Sequential:
    """:func:`tiny`, but in a Ray actor building it fails (as a model file missing on a
    cluster's nodes would), for the Ray engine's error path."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        raise RuntimeError("this model cannot be built here: not in a Ray actor")
    return tiny()
