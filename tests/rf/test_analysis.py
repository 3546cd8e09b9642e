"""``hc.layers`` on small graphs whose receptive fields are computed by hand, one op kind each."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import GeometryWarning, InputSizeError, ModelError
from hypercolumns.rf.trace import _meta
from tests.tiny_models import (
    HaloAttention,
    OutlookAttention,
    PatchMerging,
    RowRNN,
    SpaceToDepth,
    WindowAttention,
    WindowConv,
    outlook_and_halo,
)


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


# --- layers one by one --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (conv(3, 2, 1), ((3, 3), (2.0, 2.0), (0.0, 0.0))),
        (conv((3, 5), 1, (1, 0)), ((3, 5), (1.0, 1.0), (0.0, 2.0))),
        (conv(3, 1, 2, d=2), ((5, 5), (1.0, 1.0), (0.0, 0.0))),
        (conv(3, 1, 1, groups=3), ((3, 3), (1.0, 1.0), (0.0, 0.0))),
        (nn.MaxPool2d(3, 2, 1), ((3, 3), (2.0, 2.0), (0.0, 0.0))),
        (nn.MaxPool2d(2, 2, ceil_mode=True), ((2, 2), (2.0, 2.0), (0.5, 0.5))),
        (nn.AvgPool2d(3, 2), ((3, 3), (2.0, 2.0), (1.0, 1.0))),
        (nn.AdaptiveAvgPool2d(8), ((4, 4), (4.0, 4.0), (1.5, 1.5))),
        (nn.AdaptiveMaxPool2d((16, 8)), ((2, 4), (2.0, 4.0), (0.5, 1.5))),
        (nn.ZeroPad2d((1, 0, 2, 0)), ((1, 1), (1.0, 1.0), (-2.0, -1.0))),
        (nn.ConstantPad2d((0, 1, 0, 1), 0.5), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.ReflectionPad2d(2), ((1, 1), (1.0, 1.0), (-2.0, -2.0))),
        (nn.PixelUnshuffle(2), ((2, 2), (2.0, 2.0), (0.5, 0.5))),
        (Lambda(lambda x: x[:, :, 2:-2, 1:]), ((1, 1), (1.0, 1.0), (2.0, 1.0))),
        (Lambda(lambda x: x[:, :, ::2, 1::4]), ((1, 1), (2.0, 4.0), (0.0, 1.0))),
        (Lambda(lambda x: F.pad(x, (1, 2, 3, 4))), ((1, 1), (1.0, 1.0), (-3.0, -1.0))),
        (Lambda(lambda x: torch.roll(x, 1, dims=3)), ((1, 1), (1.0, 1.0), (0.0, -1.0))),
        # Sliding windows averaged: a 3x3 pooling with stride 2, like nn.AvgPool2d(3, 2).
        (
            Lambda(lambda x: x.unfold(2, 3, 2).unfold(3, 3, 2).mean((-2, -1))),
            ((3, 3), (2.0, 2.0), (1.0, 1.0)),
        ),
        (
            Lambda(
                lambda x: (
                    F.unfold(x, 3, padding=1, stride=2)
                    .view(1, 3, 9, 16, 16)
                    .amax(2)
                    .view(1, 3, 16, 16)
                )
            ),
            ((3, 3), (2.0, 2.0), (0.0, 0.0)),
        ),
        (nn.GELU(), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.BatchNorm2d(3), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
        (nn.GroupNorm(1, 3), ((1, 1), (1.0, 1.0), (0.0, 0.0))),
    ],
)
def test_single_layer(layer: nn.Module, expected: tuple[object, ...]) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    r = rf(model, "1")
    assert geometry(r) == expected
    assert r.uniform
    assert r.aligned
    assert not r.is_global


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (nn.ConvTranspose2d(3, 3, 3, 2, 1, output_padding=1), ((2, 2), (0.5, 0.5), (0.0, 0.0))),
        (nn.ConvTranspose2d(3, 3, 4, 2, 1), ((2, 2), (0.5, 0.5), (-0.25, -0.25))),
        (nn.ConvTranspose2d(3, 3, 2, 2), ((1, 1), (0.5, 0.5), (-0.25, -0.25))),
        (nn.Upsample(scale_factor=2), ((1, 1), (0.5, 0.5), (-0.25, -0.25))),
        (nn.Upsample(size=(64, 64), mode="bilinear"), ((2, 2), (0.5, 0.5), (-0.25, -0.25))),
        (
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            ((2, 2), (31 / 63, 31 / 63), (0.0, 0.0)),
        ),
        (
            Lambda(lambda x: F.interpolate(x, scale_factor=(2, 4), mode="nearest")),
            ((1, 1), (0.5, 0.25), (-0.25, -0.375)),
        ),
        (nn.PixelShuffle(1), None),
        # bins [0, 11), [10, 22), [21, 32): centres 5, 15.5, 26, fitted 29/6 + j 32/3
        (nn.AdaptiveAvgPool2d(3), ((12, 12), (32 / 3, 32 / 3), (29 / 6, 29 / 6))),
    ],
)
def test_fractional_and_irregular_layers(
    layer: nn.Module,
    expected: tuple[object, ...] | None,
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer)
    r = rf(model, "1")
    if expected is None:  # pixel shuffle by 1 is the identity
        assert geometry(r) == ((1, 1), (1.0, 1.0), (0.0, 0.0))
        return
    size, stride, center = expected  # type: ignore[misc]
    assert r.size == size
    assert r.stride == pytest.approx(stride)
    assert r.center == pytest.approx(center)
    assert not r.uniform


def test_pixel_shuffle() -> None:
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.PixelShuffle(2))
    r = rf(model, "1")
    assert geometry(r) == ((1, 1), (0.5, 0.5), (-0.25, -0.25))
    assert not r.uniform


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
def test_same_padding_with_odd_and_even_kernels_and_sizes() -> None:
    for size in (15, 16):
        r = rf(nn.Sequential(nn.Conv2d(3, 3, 3, padding="same")), "0", size)
        assert geometry(r) == ((3, 3), (1.0, 1.0), (0.0, 0.0))
        # PyTorch pads an even kernel's extra pixel on the right: left 1, right 2.
        r = rf(nn.Sequential(nn.Conv2d(3, 3, 4, padding="same")), "0", size)
        assert geometry(r) == ((4, 4), (1.0, 1.0), (0.5, 0.5))
        r = rf(nn.Sequential(nn.Conv2d(3, 3, (2, 5), padding="same", dilation=2)), "0", size)
        assert geometry(r) == ((3, 9), (1.0, 1.0), (0.0, 0.0))


# --- graphs -------------------------------------------------------------------------------------


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


def test_model_is_left_as_found() -> None:
    model = nn.Sequential(conv(3), nn.Dropout(), nn.Sequential(nn.BatchNorm2d(3)))
    model.train()
    model[2].eval()
    before = {n: m.training for n, m in model.named_modules()}
    hc.layers(model, 16)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"


def test_works_under_inference_mode() -> None:
    with torch.inference_mode():
        assert geometry(rf(TwoStage(), "down")) == ((9, 9), (2.0, 2.0), (0.0, 0.0))


def test_data_dependent_forward_falls_back_to_real_tensors() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv(3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if float(y.abs().sum()) >= 0 else -y

    assert geometry(rf(DataDependent(), "conv")) == ((3, 3), (1.0, 1.0), (0.0, 0.0))


# --- unknown ops and bad input --------------------------------------------------------------------


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


def test_known_models_raise_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hc.layers(TwoStage(), 16)
        hc.layers(TinyViT(), 16)
        hc.layers(outlook_and_halo(), 32)


def test_input_too_small_names_the_layer() -> None:
    model = nn.Sequential(conv(3, 2), nn.Sequential(conv(3, 2), conv(5)))
    with pytest.raises(InputSizeError, match=r"too small.*'1\.1'"):
        hc.layers(model, 16)
    with pytest.raises(InputSizeError, match="positive"):
        hc.layers(model, 0)


def test_model_that_raises_is_named() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("expects a dict")

    model = nn.Sequential(conv(3), nn.Sequential(Broken()))
    with pytest.raises(ModelError, match=r"in module '1\.0' \(Broken\).*expects a dict"):
        hc.layers(model, 16)


def test_text_model_is_refused() -> None:
    model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 2))
    with pytest.raises(ModelError, match="does not look like an image model"):
        hc.layers(model, 16)
    with pytest.raises(ModelError, match=r"in module '0' \(Embedding\)"):
        hc.layers(model, 16, in_channels=3)


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.resnet18(),
        lambda: torchvision.models.googlenet(init_weights=False, aux_logits=False),
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, (3, 5), (2, 1), (1, 2), dilation=(1, 2)),
            nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
            nn.AvgPool2d((2, 3), (3, 1), (1, 0), ceil_mode=True),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 3, padding="same"),
        ),
    ],
)
@pytest.mark.parametrize("size", [(31, 37), (64, 64)])
def test_fast_module_forwards_agree_with_dispatch(
    build: Callable[[], nn.Module], size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build()
    fast = [layer.to_dict() for layer in hc.layers(model, size)]
    monkeypatch.setattr(_meta, "_fast_forward", lambda module, tracer: None)
    assert [layer.to_dict() for layer in hc.layers(model, size)] == fast


def timm_same_shape_modules() -> nn.Sequential:
    """Every timm module class that has a fast forward, around convolutions that move."""
    from timm import layers as tl

    nhwc = Lambda(lambda x: x.permute(0, 2, 3, 1))
    nchw = Lambda(lambda x: x.permute(0, 3, 1, 2))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2),
        tl.BatchNormAct2d(8, act_layer=nn.SiLU, drop_layer=nn.Dropout),
        tl.GroupNormAct(8, 2, act_layer=tl.HardSwish),
        tl.GroupNorm1Act(8, inplace=False),
        tl.LayerNormAct2d(8, act_layer=tl.GELU),
        tl.LayerNorm2d(8),
        tl.GroupNorm(8, 4),
        tl.GroupNorm1(8),
        nn.Conv2d(8, 8, 3, dilation=2),
        tl.GELU(),
        tl.GELUTanh(),
        tl.QuickGELU(),
        tl.Swish(),
        tl.Swish(inplace=True),
        tl.Mish(),
        tl.Sigmoid(),
        tl.Tanh(inplace=True),
        tl.HardSwish(inplace=True),
        tl.HardSigmoid(),
        tl.HardMish(),
        tl.PReLU(8),
        tl.DropPath(0.1),
        nhwc,
        tl.LayerNorm(8),
        tl.LayerNormAct(8, act_layer=nn.ReLU6),
        nchw,
        nn.Conv2d(8, 4, 3, 2, 1),
    )


@pytest.mark.parametrize(
    "build",
    [
        timm_same_shape_modules,
        # NHWC linear layers, timm LayerNorm and LayerNorm2d, GELU, DropPath
        lambda: timm.create_model("convnext_atto", drop_path_rate=0.1),
        # BatchNormAct2d (whose drop and act still run as modules), SiLU, DropPath
        lambda: timm.create_model("efficientnet_b0", drop_path_rate=0.1),
    ],
)
def test_fast_linear_and_norms_agree_with_dispatch(
    build: Callable[[], nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build()
    fast = [(layer.to_dict(), layer.rf) for layer in hc.layers(model, 67)]
    monkeypatch.setattr(_meta, "_fast_forward", lambda module, tracer: None)
    assert [(layer.to_dict(), layer.rf) for layer in hc.layers(model, 67)] == fast


def test_every_timm_module_with_a_fast_forward_is_tested() -> None:
    from timm import layers as tl

    kinds = {type(m) for m in timm_same_shape_modules().modules()}
    assert {getattr(tl, name) for name in _meta._TIMM_SAME_SHAPE} <= kinds


def test_fast_linear_on_tokens() -> None:
    assert hc.layers(TinyViT(), 32)[-1].is_global


def test_a_forward_hook_that_replaces_an_output_is_followed() -> None:
    model = nn.Sequential(conv(3), nn.ReLU())
    model[0].register_forward_hook(lambda module, args, out: out[..., ::2, ::2])
    found = hc.layers(model, 16)
    assert [layer.shape for layer in found] == [(3, 7, 7), (3, 7, 7)]
    assert geometry(rf(model, "0", 16)) == ((3, 3), (2.0, 2.0), (1.0, 1.0))
    assert len(model[0]._forward_hooks) == 1  # the model's own hook stays, ours are gone


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


def test_recurrence_along_a_row() -> None:
    r = rf(nn.Sequential(conv(3, p=1), RowRNN(3, bidirectional=False)), "1", (12, 8))
    assert r.unit_box(5, 0) == (4.0, -1.0, 6.0, 1.0)
    assert r.unit_box(5, 6) == (4.0, -1.0, 6.0, 7.0)


def test_pooling_over_flattened_tokens_within_rows() -> None:
    class SequenceReduction(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            return F.avg_pool1d(x.flatten(2), 4).reshape(b, c, h, w // 4)

    r = rf(nn.Sequential(conv(3, p=1), SequenceReduction()), "1", (8, 16))
    assert geometry(r) == ((3, 6), (1.0, 4.0), (0.0, 1.5))


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


def test_index_reorders_channels_but_not_positions() -> None:
    order = torch.tensor([2, 0, 1])
    r = rf(nn.Sequential(conv(3, p=1), Lambda(lambda x: x[:, order])), "1", 16)
    assert geometry(r) == ((3, 3), (1.0, 1.0), (0.0, 0.0))
    with pytest.warns(GeometryWarning, match=r"aten\.index"):
        found = hc.layers(nn.Sequential(conv(3, p=1), Lambda(lambda x: x[:, :, order])), 16)
    assert found[-1].rf is None


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x,
        lambda x: x.permute(0, 2, 3, 1),  # channels last: dense, not contiguous
        lambda x: x[:, :, ::2],  # gaps: not dense
        lambda x: x[:, :1].expand(2, 3, 4, 5),  # overlap: not dense
        lambda x: x[:, :, :1].transpose(1, 2),  # a size-1 dim with any stride
    ],
)
def test_meta_like_is_empty_like(make: Callable[[torch.Tensor], torch.Tensor]) -> None:
    x = make(torch.empty(2, 3, 4, 5, device="meta"))
    y, ref = _meta._meta_like(x), torch.empty_like(x)
    assert (y.shape, y.stride(), y.dtype, y.device) == (
        ref.shape,
        ref.stride(),
        ref.dtype,
        ref.device,
    )
