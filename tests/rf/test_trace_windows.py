"""Rules for windows: reshapes that cut spatial axes into blocks, and sliding windows
(overlapping ``F.unfold`` / ``F.fold``, ``Tensor.unfold``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import GeometryWarning
from tests.rf.graphs import Lambda, conv, geometry, rf
from tests.tiny_models import (
    HaloAttention,
    OutlookAttention,
    PatchMerging,
    SpaceToDepth,
    WindowAttention,
    WindowConv,
)

# --- windows: reshapes that cut spatial axes into blocks ------------------------------------


def test_window_attention_reads_whole_windows() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), WindowAttention(8, 4))
    found = {layer.name: layer for layer in hc.layers(model, 64)}
    attn = found["1"].rf
    assert attn is not None
    # Stem units are 4x4 pixels; each window holds 4x4 of them: 16x16 pixels, read by all.
    assert geometry(attn) == ((16, 16), (4.0, 4.0), (1.5, 1.5))
    assert not attn.uniform
    assert attn.unit_box(0, 3) == (0.0, 0.0, 15.0, 15.0)
    assert attn.unit_box(5, 6) == (16.0, 16.0, 31.0, 31.0)
    # Inside the block, laid out as windows: per-token layers keep their stem geometry, the
    # projection after attention reads the whole window; neither is a map to sample.
    qkv, proj = found["1.qkv"], found["1.proj"]
    assert qkv.layout is None
    assert proj.layout is None
    assert qkv.rf is not None
    assert proj.rf is not None
    assert geometry(qkv.rf) == ((4, 4), (4.0, 4.0), (1.5, 1.5))
    assert proj.rf.size == (16, 16)
    assert "1.qkv" not in [la.name for la in hc.select(list(found.values()), "all")]
    with pytest.raises(hc.HypercolumnsError, match="laid out as windows"):
        hc.hypercolumns(model, torch.zeros(1, 3, 64, 64), ["1.qkv"])


def test_shifted_windows_follow_the_roll() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), WindowAttention(8, 4, shift=2))
    r = rf(model, "1", 64)
    # Rolled by 2 units (8 pixels) before the windows are cut: windows start at pixel 8.
    assert r.unit_box(2, 2) == (8.0, 8.0, 23.0, 23.0)
    assert r.unit_box(5, 5) == (8.0, 8.0, 23.0, 23.0)
    assert r.unit_box(6, 6) == (24.0, 24.0, 39.0, 39.0)


def test_space_to_depth_and_patch_merging_give_block_geometry() -> None:
    stem = nn.Conv2d(3, 4, 3, padding=1)
    s2d = rf(nn.Sequential(stem, SpaceToDepth()), "1")
    assert geometry(s2d) == ((4, 4), (2.0, 2.0), (0.5, 0.5))
    merged = rf(nn.Sequential(stem, PatchMerging(4)), "1")
    assert geometry(merged) == ((4, 4), (2.0, 2.0), (0.5, 0.5))


def test_convolution_inside_windows_is_padded_at_each_window_border() -> None:
    r = rf(nn.Sequential(nn.Conv2d(3, 8, 1), WindowConv(8, 4)), "1", 16)
    assert r.size == (3, 3)
    assert not r.uniform
    assert r.unit_box(3, 3) == (2.0, 2.0, 3.0, 3.0)  # last in its window: no right neighbour
    assert r.unit_box(4, 5) == (4.0, 4.0, 5.0, 6.0)  # first in the next: no left neighbour


def test_windows_that_do_not_line_up_are_unknown_not_guessed() -> None:
    class Mismatched(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            a = x.reshape(b, c, h // 4, 4, w).transpose(2, 3).reshape(b, c, h, w)
            return a + x.reshape(b, c, h // 2, 2, w).transpose(2, 3).reshape(b, c, h, w)

    with pytest.warns(GeometryWarning, match="aten"):
        found = hc.layers(nn.Sequential(conv(3, p=1), Mismatched()), 16)
    assert found[-1].rf is None


class Patches(nn.Module):
    """``F.unfold`` into 2x2 patches, a softmax inside each patch, ``F.fold`` back (TNT-like)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = F.unfold(x, 2, stride=2).view(b, c, 4, -1).transpose(2, 3).softmax(-1)
        return F.fold(t.transpose(2, 3).reshape(b, c * 4, -1), (h, w), 2, stride=2)


def test_unfold_into_patches_and_fold_back() -> None:
    r = rf(nn.Sequential(conv(3, p=1), Patches()), "1", 12)
    assert r.size == (4, 4)  # a 3x3 stem unit, its 2x2 patch read by the softmax
    assert r.unit_box(5, 2) == (3.0, 1.0, 6.0, 4.0)
    assert r.unit_box(5, 3) == (3.0, 1.0, 6.0, 4.0)


# --- sliding windows: overlapping F.unfold / F.fold, Tensor.unfold ------------------------------


def test_outlook_attention_folds_overlapping_windows() -> None:
    r = rf(nn.Sequential(nn.Conv2d(3, 4, 1), OutlookAttention(4)), "1", 16)
    # 3x3 windows every 2 pixels, padded by 1: an even pixel lies in one window, an odd one
    # in two; the fold places each window's values back where they came from.
    assert geometry(r) == ((5, 5), (1.0, 1.0), (0.0, 0.0))
    assert not r.uniform
    assert r.aligned
    assert r.unit_box(4, 5) == (3.0, 3.0, 5.0, 7.0)


def test_halo_attention_reads_the_block_and_its_halo() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), HaloAttention(4, block=4, halo=1))
    found = {layer.name: layer for layer in hc.layers(model, 16)}
    r = found["1"].rf
    assert r is not None
    assert geometry(r) == ((6, 6), (1.0, 1.0), (0.0, 0.0))
    assert r.unit_box(5, 2) == (3.0, -1.0, 8.0, 4.0)  # block 1 of rows, block 0 of columns
    # The relative-position logits read each query's block (the skew mixes its positions).
    assert found["1.relative"].rf is not None
    assert found["1.relative"].rf.unit_box(1, 0) == (4.0, 0.0, 7.0, 3.0)


def test_folding_windows_that_keep_their_positions_is_unknown() -> None:
    def refold(x: torch.Tensor) -> torch.Tensor:
        return F.fold(F.unfold(x, 3, padding=1), x.shape[-2:], 3, padding=1)

    with pytest.warns(GeometryWarning, match=r"aten\.col2im .*where in the window"):
        found = hc.layers(nn.Sequential(conv(3, p=1), Lambda(refold)), 16)
    assert found[-1].rf is None
