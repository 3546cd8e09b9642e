"""The traced run: the model is left as found, inference mode, the fallback to real tensors,
forward hooks of the model's own, and errors that name the layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import InputSizeError, ModelError
from tests.rf.graphs import TinyViT, TwoStage, conv, geometry, rf
from tests.tiny_models import outlook_and_halo


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


def test_a_forward_hook_that_replaces_an_output_is_followed() -> None:
    model = nn.Sequential(conv(3), nn.ReLU())
    model[0].register_forward_hook(lambda module, args, out: out[..., ::2, ::2])
    found = hc.layers(model, 16)
    assert [layer.shape for layer in found] == [(3, 7, 7), (3, 7, 7)]
    assert geometry(rf(model, "0", 16)) == ((3, 3), (2.0, 2.0), (1.0, 1.0))
    assert len(model[0]._forward_hooks) == 1  # the model's own hook stays, ours are gone


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
