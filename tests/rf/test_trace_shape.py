"""Rules for ops that move values: indexing, and ops that may move values between positions
(flip, grid sampling), which are unknown along spatial dims."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import GeometryWarning
from tests.rf.graphs import Lambda, conv, geometry, rf


def test_unknown_op_that_changes_size_warns_and_marks_unknown() -> None:
    def warp(x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(x.shape[0], 5, 7, 2)
        return F.grid_sample(x, grid, align_corners=False)

    model = nn.Sequential(conv(3), Lambda(warp), conv(3, 1, 1))
    with pytest.warns(GeometryWarning, match=r"aten\.grid_sampler_2d in module '1'"):
        found = hc.layers(model, 16)
    assert [layer.rf is None for layer in found] == [False, True, True]
    assert found[1].to_dict()["rf_size"] is None


def test_flip_is_not_mistaken_for_an_elementwise_op() -> None:
    model = nn.Sequential(conv(3), Lambda(lambda x: x.flip(-1)))
    with pytest.warns(GeometryWarning, match="flip"):
        assert hc.layers(model, 16)[1].rf is None


def test_index_reorders_channels_but_not_positions() -> None:
    order = torch.tensor([2, 0, 1])
    r = rf(nn.Sequential(conv(3, p=1), Lambda(lambda x: x[:, order])), "1", 16)
    assert geometry(r) == ((3, 3), (1.0, 1.0), (0.0, 0.0))
    with pytest.warns(GeometryWarning, match=r"aten\.index"):
        found = hc.layers(nn.Sequential(conv(3, p=1), Lambda(lambda x: x[:, :, order])), 16)
    assert found[-1].rf is None
