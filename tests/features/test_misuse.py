"""Issue 14 (LB2, LB3): library misuse gets the library's errors, not PyTorch's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import hypercolumns as hc
from hypercolumns.errors import InputSizeError, OptionError
from tests.tiny_models import tiny

CALLS: list[Callable[..., Any]] = [hc.hypercolumns, hc.feature_maps]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(1, 4, 32, 32), "the images have 4 channel(s) but Sequential takes 3"),
        (torch.rand(2, 1, 32, 32), "the images have 1 channel(s)"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "floating-point tensor, got torch.int64"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point tensor, got torch.uint8"),
        (torch.rand(0, 3, 32, 32), "the batch holds no images"),
    ],
)
def test_bad_batches_are_input_size_errors(
    call: Callable[..., Any], x: torch.Tensor, match: str
) -> None:
    model = tiny()
    with pytest.raises(InputSizeError, match=match.replace("(", r"\(").replace(")", r"\)")):
        call(model, x, "1")
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("layers", [None, 1.5, [1, None], True])
def test_malformed_layer_specs_are_option_errors(call: Callable[..., Any], layers: Any) -> None:
    with pytest.raises(OptionError, match="layers must be"):
        call(tiny(), torch.rand(1, 3, 32, 32), layers)


def test_numpy_integers_still_name_layers() -> None:
    import numpy as np

    out = hc.feature_maps(tiny(), torch.rand(1, 3, 32, 32), [np.int64(1)])
    assert list(out) == ["1"]


@pytest.mark.parametrize(
    ("spec", "layer"),
    [
        ("timm:mobilevit_xxs", "stages.3.1.transformer.0.norm1"),  # patches as a batch, a map
        ("timm:levit_128s", "stages.1.blocks.2.attn.qkv.bn"),  # tokens as a batch, "global"
    ],
)
def test_a_layer_whose_rows_are_not_images_is_refused_in_one_line(spec: str, layer: str) -> None:
    """The analysis takes these outputs for a map or a global vector; their first dimension
    holds patches or tokens, not images (it was a bare shape mismatch of PyTorch's)."""
    torch.manual_seed(0)
    model = hc.load_model(spec)
    x = torch.randn(1, 3, 224, 224)
    for points in (None, 16):
        with pytest.raises(OptionError, match=f"layer '{layer}' holds .* rows for a batch of 1"):
            hc.hypercolumns(model, x, [layer], points=points)
