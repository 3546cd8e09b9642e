"""Max pooling on a CPU, equal to PyTorch's and several times faster: :class:`FastMaxPool`.

PyTorch's CPU kernel for contiguous ``(N, C, H, W)`` tensors walks each window element by
element and records where each maximum came from even when nobody asks (``max_pool2d`` runs
``max_pool2d_with_indices``): on one thread, vgg16's first pooling of a 320x240 image took
32 ms, a tenth of the forward pass up to ``features.8``, and resnet18's stem pooling took 18 %
of its forward up to ``layer2``. The maximum over a window is the maximum over its columns of
the maximum over its rows, and each of the two passes is an element-wise maximum of ``k``
strided slices, which PyTorch vectorises: 5-10x faster on one image (``benchmarks/pooling.py``,
``docs/benchmarks.md``).

The result equals PyTorch's (``torch.equal``): a maximum involves no rounding, padding is
``-inf`` as PyTorch's is, and a NaN in a window makes its output NaN in both. Only the sign of
a zero may differ when a window holds both ``0.0`` and ``-0.0``, which compare equal.

:class:`FastMaxPool` is a ``TorchFunctionMode``: while it is active in a thread, calls of
``F.max_pool2d`` and ``torch.max_pool2d`` on contiguous floating-point CPU tensors that need no
gradient and no indices take this route; every other call (GPU, channels-last, indices,
gradients, integer or tensor-subclass inputs) and every other op goes to PyTorch unchanged. The
feature extractor runs its forward passes on the plain layout under it (not those it runs
channels-last, where PyTorch's kernel is vectorised); the model itself is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["FastMaxPool", "max_pool2d"]

_POOLS = (F.max_pool2d, torch.max_pool2d)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _pair(value: Any) -> tuple[int, int] | None:
    """``value`` as a ``(y, x)`` pair of ints, or ``None`` when it is not one."""
    values = list(value) if isinstance(value, Sequence) else [value]
    if len(values) in (1, 2) and all(type(v) is int for v in values):
        return values[0], values[-1]
    return None


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output size (``pooling_output_shape``)."""
    span = d * (k - 1) + 1
    n = (size + 2 * p - span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (n - 1) * s >= size + p:
        n -= 1
    return n


def _max_of_slices(x: torch.Tensor, dim: int, k: int, s: int, d: int, n: int) -> torch.Tensor:
    """Along ``dim`` (-2 or -1) of ``x``: out[i] = max over j < k of x[i * s + j * d], for i < n."""

    def taken(j: int) -> torch.Tensor:
        part = x.narrow(dim, j * d, (n - 1) * s + 1)
        return part[..., ::s, :] if dim == -2 else part[..., ::s]

    out = taken(0).clone() if k == 1 else torch.maximum(taken(0), taken(1))
    for j in range(2, k):
        torch.maximum(out, taken(j), out=out)
    return out


def max_pool2d(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool = False,
) -> torch.Tensor | None:
    """``F.max_pool2d`` of a contiguous ``(N, C, H, W)`` or ``(C, H, W)`` tensor as two passes
    of element-wise maxima; ``None`` where PyTorch's own kernel should run (arguments it would
    refuse, an empty output)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or ph > kh // 2 or pw > kw // 2:
        return None  # PyTorch raises its own error
    h, w = x.shape[-2:]
    oh, ow = _out_size(h, kh, sh, ph, dh, ceil_mode), _out_size(w, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1 or x.numel() == 0:
        return None
    # -inf around the image, as far as the last window reaches (further right with ceil_mode)
    bottom = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - h - ph)
    right = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - w - pw)
    if ph or pw or bottom or right:
        x = F.pad(x, (pw, right, ph, bottom), value=float("-inf"))
    rows = _max_of_slices(x, -2, kh, sh, dh, oh)
    return _max_of_slices(rows, -1, kw, sw, dw, ow)


def _pool_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of an ``F.max_pool2d`` or ``torch.max_pool2d`` call by name."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
             "return_indices")  # fmt: skip
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    return bound if "input" in bound and "kernel_size" in bound else None


def _fast(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The pooled tensor of a pooling call this module takes, else ``None``."""
    bound = _pool_arguments(args, kwargs)
    if bound is None or bound.get("return_indices", False):
        return None
    x = bound["input"]
    if (
        type(x) is not torch.Tensor
        or x.device.type != "cpu"
        or x.dtype not in _FLOATS
        or x.dim() not in (3, 4)
        or not x.is_contiguous()
        or (x.requires_grad and torch.is_grad_enabled())
    ):
        return None
    kernel, stride = _pair(bound["kernel_size"]), bound.get("stride")
    if stride is None or (isinstance(stride, Sequence) and not stride):  # torch's default: []
        stride = kernel
    stride, padding = _pair(stride), _pair(bound.get("padding", 0))
    dilation, ceil_mode = _pair(bound.get("dilation", 1)), bound.get("ceil_mode", False)
    if None in (kernel, stride, padding, dilation) or not isinstance(ceil_mode, bool):
        return None
    return max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)  # type: ignore[arg-type]


class FastMaxPool(TorchFunctionMode):
    """While active in a thread, 2-D max pooling on a CPU takes :func:`max_pool2d` (see the
    module's docstring for when); everything else runs as it would without it."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _POOLS:
            out = _fast(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
