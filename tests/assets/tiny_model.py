"""A tiny CNN for tests, loadable as ``tests/assets/tiny_model.py:tiny``."""

from torch import nn


def tiny(channels: int = 4, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, num_classes),
    )


def not_a_model() -> str:
    return "hello"
