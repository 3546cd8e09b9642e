"""Tiny models for fast tests, loadable as ``tests/tiny_models.py:tiny``."""

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
