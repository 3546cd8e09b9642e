"""Helpers and small graphs shared by the tests of the trace (``hc.layers`` on graphs whose
receptive fields are computed by hand)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import hypercolumns as hc


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def rf(model: nn.Module, name: str, size: int | tuple[int, int] = 32) -> hc.ReceptiveField:
    found = {layer.name: layer for layer in hc.layers(model, size)}
    r = found[name].rf
    assert r is not None, f"{name} is unknown"
    return r


def geometry(
    r: hc.ReceptiveField,
) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float]]:
    return r.size, r.stride, r.center


def conv(
    k: int | tuple[int, int] = 3,
    s: int = 1,
    p: int | str | tuple[int, int] = 0,
    d: int = 1,
    c: int = 3,
    groups: int = 1,
) -> nn.Conv2d:
    return nn.Conv2d(c, 3, k, s, p, d, groups=groups)


class TwoStage(nn.Module):
    """``c = a(x) + b(x)`` with the wide path second: a walk following only the first branch of
    each merge would say the receptive field of ``c`` is 3, and of ``out`` 7 instead of 11."""

    def __init__(self) -> None:
        super().__init__()
        self.a = conv(3, 1, 1)
        self.b = nn.Sequential(conv(3, 1, 1), conv(5, 1, 2))
        self.down = conv(3, 2, 1)
        self.skip = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.a(x) + self.b(x)
        return self.down(c) + self.skip(c)


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t[:, 0])
