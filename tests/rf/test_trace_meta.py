"""Shortcuts of the meta run: fast forwards of standard modules give what op dispatch gives,
and the meta tensors they build are those PyTorch would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from torch import nn

import hypercolumns as hc
from hypercolumns.rf.trace import _meta
from tests.rf.graphs import Lambda, TinyViT


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
