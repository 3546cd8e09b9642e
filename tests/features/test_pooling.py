"""Max pooling on a CPU: the two-pass route equals PyTorch's kernel, takes only what it can, and
the feature extractor's passes use it without touching the model."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hypercolumns as hc
from hypercolumns.features import _pooling
from hypercolumns.features._pooling import FastMaxPool, max_pool2d


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN, same shape, dtype and layout."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.is_contiguous() == b.is_contiguous()
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    )


def _awkward(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Values with NaN, both infinities, ties and zeros of both signs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).round(decimals=1)
    x[x > 1.8] = float("nan")
    x[x < -1.9] = float("-inf")
    x[(x > 1.5) & (x <= 1.8)] = float("inf")
    x[x.abs() < 0.05] = -0.0
    return x.to(dtype)


# (kernel, stride, padding, dilation, ceil_mode): the models' poolings and the corner cases
CASES = [
    (2, 2, 0, 1, False),  # VGG
    (3, 2, 1, 1, False),  # ResNet stem
    (3, 2, 0, 1, True),  # GoogLeNet
    (5, 1, 2, 1, False),  # YOLO SPPF
    (3, 1, 1, 1, False),
    (1, 1, 0, 1, False),
    (1, 2, 0, 1, True),
    ((3, 2), (2, 1), (1, 0), 1, False),
    (3, 2, 1, 2, False),
    ((2, 3), (3, 2), (1, 1), (2, 1), True),
    (4, 3, 2, 1, True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 13, 17), (3, 8, 9), (1, 1, 5, 4)])
def test_the_two_passes_equal_pytorchs_kernel(case: Any, dtype: torch.dtype, shape: Any) -> None:
    kernel, stride, padding, dilation, ceil = case
    x = _awkward(shape, dtype, seed=len(shape))
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil)

    def pair(v: Any) -> tuple[int, int]:
        return v if isinstance(v, tuple) else (v, v)

    ours = max_pool2d(x, pair(kernel), pair(stride), pair(padding), pair(dilation), ceil)
    assert ours is not None  # this route was taken, not PyTorch's
    assert _same(ours, expected)
    with FastMaxPool():
        assert _same(F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil), expected)
        assert _same(torch.max_pool2d(x, kernel, stride, padding, dilation, ceil), expected)
        assert _same(nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)(x), expected)


def test_every_output_size_pytorch_gives_is_reproduced() -> None:
    """Input sizes 1-12 against kernels, strides, paddings and dilations up to 4, both
    rounding modes: the same output sizes (and values), or the call left to PyTorch."""
    taken = 0
    for size, k, s, d, ceil in itertools.product(range(1, 13), range(1, 5), range(1, 5),
                                                 range(1, 4), (False, True)):  # fmt: skip
        for p in range(k // 2 + 1):
            x = torch.arange(float(size * 7)).reshape(1, 7, size)[:, :, None, :].expand(
                1, 7, 2, size).contiguous()  # fmt: skip
            try:
                expected = F.max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode=ceil)
            except RuntimeError:
                expected = None
            ours = max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil)
            if ours is None:  # PyTorch's own kernel runs: only where it refuses or gives nothing
                assert expected is None or expected.numel() == 0
                continue
            taken += 1
            assert expected is not None, (size, k, s, p, d, ceil)
            assert _same(ours, expected), (size, k, s, p, d, ceil)
    assert taken > 1000


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the inputs :func:`max_pool2d` pools from now on (not those it leaves)."""
    seen: list[tuple[int, ...]] = []
    original = _pooling.max_pool2d

    def spy(x: torch.Tensor, *args: Any) -> torch.Tensor | None:
        out = original(x, *args)
        if out is not None:
            seen.append(tuple(x.shape))
        return out

    monkeypatch.setattr(_pooling, "max_pool2d", spy)
    return seen


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: x.contiguous(memory_format=torch.channels_last), id="channels-last"),
        pytest.param(lambda x: x.requires_grad_(), id="needs-gradient"),
        pytest.param(lambda x: (x * 10).to(torch.int64), id="integers"),
        pytest.param(lambda x: x[:, :, :, ::2], id="strided"),
        pytest.param(lambda x: nn.Parameter(x), id="tensor-subclass"),
        pytest.param(lambda x: x.to("meta"), id="meta"),
    ],
)
def test_what_the_route_does_not_take_runs_as_pytorch_runs_it(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy(monkeypatch)
    x = make(torch.randn(2, 3, 8, 8))
    try:
        expected = F.max_pool2d(x, 3, 2, 1)
    except RuntimeError as err:  # integers: PyTorch has no kernel, and says so the same way
        with FastMaxPool(), pytest.raises(RuntimeError, match=str(err)[:30]):
            F.max_pool2d(x, 3, 2, 1)
    else:
        with FastMaxPool():
            out = F.max_pool2d(x, 3, 2, 1)
        assert out.shape == expected.shape
        assert out.stride() == expected.stride()
        if not x.is_meta:
            assert torch.equal(out, expected)
    assert seen == []


def test_indices_and_bad_arguments_go_to_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch)
    x = torch.randn(1, 2, 8, 8)
    expected = F.max_pool2d(x, 2)
    with FastMaxPool():
        out, indices = F.max_pool2d(x, 2, return_indices=True)
        assert torch.equal(out, expected)
        assert indices.dtype == torch.int64
        with pytest.raises(RuntimeError, match="pad should be at most half"):
            F.max_pool2d(x, 2, padding=2)
        with pytest.raises(RuntimeError, match="stride should not be zero"):
            F.max_pool2d(x, 2, stride=0)
        with pytest.raises(RuntimeError, match="too small"):
            F.max_pool2d(x, 9)
    assert seen == []


def test_gradients_flow_as_through_pytorchs_kernel() -> None:
    """With gradients wanted, PyTorch's kernel runs: its gradient goes to one element of a
    tied window, where the two-pass route would split it."""
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    with FastMaxPool():
        F.max_pool2d(x, 2).sum().backward()
    assert x.grad is not None
    assert x.grad.sum() == 4
    assert x.grad.max() == 1


def test_the_mode_acts_in_its_own_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch)
    inside, go_on = threading.Event(), threading.Event()

    def in_mode() -> None:
        with FastMaxPool():
            F.max_pool2d(torch.randn(1, 1, 4, 4), 2)
            inside.set()
            go_on.wait(10)

    thread = threading.Thread(target=in_mode)
    thread.start()
    assert inside.wait(10)
    F.max_pool2d(torch.randn(1, 1, 6, 6), 2)  # this thread is not in the mode
    go_on.set()
    thread.join()
    assert seen == [(1, 1, 4, 4)]


def _pooling_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(8, 4, 1),
    ).eval()


def test_feature_maps_take_the_route_and_equal_a_plain_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = _pooling_net()
    x = torch.randn(2, 3, 31, 29)
    with torch.no_grad():
        plain = {"2": net[:3](x), "6": net(x)}
    seen = _spy(monkeypatch)
    maps = hc.feature_maps(net, x, [2, 6])
    assert [shape[1:] for shape in seen] == [(8, 31, 29), (8, 16, 15)]
    assert torch.equal(maps["2"], plain["2"])
    assert torch.equal(maps["6"], plain["6"])
    dense = hc.hypercolumns(net, x, [2, 6])
    sparse = hc.hypercolumns(net, x, [2, 6], points=50, seed=1)
    # dense ran its forward pass on the route too; sparse runs channels-last, where PyTorch's
    # own pooling is fast
    assert len(seen) == 4
    y, xx = sparse.points[..., 0].long(), sparse.points[..., 1].long()
    for b in range(2):
        assert torch.allclose(sparse.features[b], dense.features[b][:, y[b], xx[b]].T, atol=1e-6)


def test_the_model_and_the_caller_are_left_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _pooling_net()
    forwards = [m.forward for m in net]
    hc.feature_maps(net, torch.randn(1, 3, 16, 16), [2])
    assert [m.forward for m in net] == forwards
    assert all("forward" not in vars(m) for m in net)
    seen = _spy(monkeypatch)
    F.max_pool2d(torch.randn(1, 1, 4, 4), 2)  # after the extraction, outside any mode
    assert seen == []
