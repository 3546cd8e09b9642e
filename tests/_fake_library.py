"""Stand-ins for ``hypercolumns.features`` and ``hypercolumns.hypercolumns``.

Those modules are written on another branch; until they are merged, the CLI tests run against
these reference implementations of the agreed signatures (hooks + ``F.interpolate``
half-pixel upsampling). Once the real modules exist, the ``library`` fixture uses them instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hypercolumns.layers import Layer, layers, select


@dataclass
class FakeHypercolumns:
    features: torch.Tensor
    points: torch.Tensor | None
    slices: dict[str, slice]
    layers: list[Layer]


def _chosen(model: nn.Module, x: torch.Tensor, spec: Any) -> list[Layer]:
    found = layers(model, tuple(x.shape[-2:]), in_channels=x.shape[1])
    return select(found, spec)


def feature_maps(
    model: nn.Module, x: torch.Tensor, spec: Any, *, as_maps: bool = False
) -> dict[str, torch.Tensor]:
    chosen = _chosen(model, x, spec)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        return lambda _m, _i, out: captured.__setitem__(name, out.detach().clone())

    handles = [modules[c.name].register_forward_hook(hook(c.name)) for c in chosen]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for c in chosen:
        t = captured[c.name]
        if as_maps:
            t = c.layout.to_map(t) if c.layout is not None else t.flatten(1)
        out[c.name] = t
    return out


def hypercolumns(
    model: nn.Module,
    x: torch.Tensor,
    spec: Any,
    *,
    points: Any = None,
    align: str = "rf",
    size: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
    normalize: Any = None,
    project: Any = None,
    max_bytes: int | None = None,
    seed: int | None = None,
) -> FakeHypercolumns:
    chosen = _chosen(model, x, spec)
    maps = feature_maps(model, x, [c.name for c in chosen], as_maps=True)
    h, w = size or tuple(x.shape[-2:])
    parts, slices, start = [], {}, 0
    for c in chosen:
        t = maps[c.name]
        if t.dim() == 2:
            t = t[:, :, None, None].expand(-1, -1, h, w)
        else:
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        parts.append(t)
        slices[c.name] = slice(start, start + t.shape[1])
        start += t.shape[1]
    feats = torch.cat(parts, 1)
    pts = None
    if points is not None:
        b = x.shape[0]
        if isinstance(points, int):
            g = torch.Generator().manual_seed(0 if seed is None else seed)
            ys = torch.randint(h, (b, points), generator=g)
            xs = torch.randint(w, (b, points), generator=g)
            pts = torch.stack([ys, xs], -1)
        else:
            pts = torch.as_tensor(points).long()
        feats = torch.stack([feats[i][:, pts[i, :, 0], pts[i, :, 1]].T for i in range(b)])
    return FakeHypercolumns(feats.to(dtype or torch.float32), pts, slices, chosen)
