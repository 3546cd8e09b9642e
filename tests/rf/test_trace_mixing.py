"""Rules for ops that combine values: branches that meet (union, alignment), global context,
fully connected layers and attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hypercolumns as hc
from tests.rf.graphs import TinyViT, TwoStage, conv, geometry, rf


class TwoBranches(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module, merge: str = "add") -> None:
        super().__init__()
        self.a, self.b, self.merge = a, b, merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        if self.merge == "cat":
            return torch.cat([a, b], dim=1)
        return a * b if self.merge == "mul" else a + b


@pytest.mark.parametrize("merge", ["add", "mul", "cat"])
def test_aligned_branches_take_the_union(merge: str) -> None:
    model = nn.Sequential(TwoBranches(conv(3, 2, 1), conv(5, 2, 2), merge))
    r = rf(model, "0")
    assert geometry(r) == ((5, 5), (2.0, 2.0), (0.0, 0.0))
    assert r.aligned
    assert r.uniform


def test_misaligned_branches_are_flagged() -> None:
    # conv k=2 (centre 0.5) meets conv k=3 (centre 1): same stride, different centres.
    model = nn.Sequential(TwoBranches(conv(2), nn.Sequential(conv(3), nn.ZeroPad2d((0, 1, 0, 1)))))
    r = rf(model, "0")
    assert not r.aligned
    assert r.center == (0.75, 0.75)
    y0, _, y1, _ = r.unit_box(4, 4)
    assert y0 <= 4
    assert y1 >= 6


def test_misalignment_propagates_downstream() -> None:
    model = nn.Sequential(
        TwoBranches(conv(2), nn.Sequential(conv(3), nn.ZeroPad2d((0, 1, 0, 1)))), conv(3, 1, 1)
    )
    assert not rf(model, "1").aligned


def test_two_stage_graph() -> None:
    found = {layer.name: layer for layer in hc.layers(TwoStage(), 32)}
    assert found["b"].rf is not None
    assert found["b"].rf.size == (7, 7)
    r = found["down"].rf
    assert r is not None
    assert geometry(r) == ((9, 9), (2.0, 2.0), (0.0, 0.0))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(3, 1, 1)
        self.fc = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_global_context_gate_does_not_widen_the_field() -> None:
    r = rf(nn.Sequential(SqueezeExcite()), "0")
    assert geometry(r) == ((3, 3), (1.0, 1.0), (0.0, 0.0))


def test_global_layers() -> None:
    model = nn.Sequential(conv(3, 2), nn.Flatten(), nn.Linear(3 * 15 * 15, 10))
    found = {layer.name: layer for layer in hc.layers(model, 32)}
    for name in ("1", "2"):
        r = found[name].rf
        assert r is not None
        assert r.is_global
        assert r.size == (32, 32)
    assert found["2"].shape == (10,)
    pooled = nn.Sequential(conv(3), nn.AdaptiveAvgPool2d(1))
    assert rf(pooled, "1").is_global


def test_attention_keeps_positions_but_sees_everything() -> None:
    found = {layer.name: layer for layer in hc.layers(TinyViT(), (32, 48))}
    patch = found["patch"].rf
    assert patch is not None
    assert geometry(patch) == ((4, 4), (4.0, 4.0), (1.5, 1.5))
    attn = found["attn"]
    assert attn.rf is not None
    assert not attn.rf.is_global
    assert attn.rf.size == (32, 48)
    assert not attn.rf.uniform
    assert attn.layout is not None
    assert attn.layout.prefix == 1
    assert attn.layout.grid == (8, 12)
    assert found["head"].is_global
