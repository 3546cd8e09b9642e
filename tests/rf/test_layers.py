"""``hc.layers``: which modules are listed, in what order and with what index, and the input
it is run on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import ModelError
from tests.rf.graphs import conv


def test_layer_indices_follow_leaf_run_order() -> None:
    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = conv(3)
            self.early = conv(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(self.early(x))

    found = hc.layers(Reordered(), 16)
    assert [(layer.index, layer.name) for layer in found] == [(0, "early"), (1, "late")]


def test_containers_are_listed_before_their_children_without_index() -> None:
    model = nn.Sequential(nn.Sequential(conv(3), nn.ReLU()), conv(3))
    found = hc.layers(model, 16)
    assert [(layer.index, layer.name) for layer in found] == [
        (None, "0"),
        (0, "0.0"),
        (1, "0.1"),
        (2, "1"),
    ]
    assert found[0].rf == found[2].rf


def test_in_channels_default_to_the_first_convolution() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    assert hc.layers(model, 8)[0].shape == (4, 6, 6)
    model = nn.Sequential(nn.Conv2d(5, 4, 3))
    assert hc.layers(model, (8, 10), in_channels=5)[0].shape == (4, 6, 8)


def test_text_model_is_refused() -> None:
    model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 2))
    with pytest.raises(ModelError, match="does not look like an image model"):
        hc.layers(model, 16)
    with pytest.raises(ModelError, match=r"in module '0' \(Embedding\)"):
        hc.layers(model, 16, in_channels=3)
