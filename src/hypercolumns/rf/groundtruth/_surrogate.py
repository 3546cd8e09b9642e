"""The surrogate: a linear, positive float64 copy of a model whose input gradients show
receptive fields.

Nonlinearities and normalisations become identities (as modules, and as functions under
:class:`_Surrogate`), max pooling becomes average pooling over the same windows, weights become
random positive values, and global context is detached (told apart by the spatial tags).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from hypercolumns.rf.groundtruth._tags import _Tagger

_IDENTITY_FUNCTIONS = frozenset(
    {
        "relu",
        "relu6",
        "hardtanh",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "hardsigmoid",
        "sigmoid",
        "tanh",
        "softplus",
        "logsigmoid",
        "prelu",
        "rrelu",
        "threshold",
        "softsign",
        "hardshrink",
        "softshrink",
        "tanhshrink",
        "clamp",
        "clip",
        "clamp_min",
        "clamp_max",
        "expit",
        "batch_norm",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "rms_norm",
        "local_response_norm",
        "normalize",
    }
)
_BINARY_EXTREMA = frozenset({"maximum", "minimum", "fmax", "fmin"})
_NARROWING = frozenset({"float", "half", "bfloat16"})


def _first_tensor(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _pair(value: Any, default: Any) -> tuple[int, int]:
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return (value, value)
    t = tuple(int(e) for e in value)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _pool_windows(
    x: torch.Tensor, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> torch.Tensor:
    """Mean over max-pooling windows (same output size and windows as ``max_pool2d``)."""
    k, s = _pair(kernel, kernel), _pair(stride, kernel)
    p, d = _pair(padding, 0), _pair(dilation, 1)
    if d == (1, 1):
        return F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode, count_include_pad=True)
    sizes, pads = [], []
    for axis in range(2):
        length = x.shape[-2 + axis]
        span = d[axis] * (k[axis] - 1) + 1
        top = length + 2 * p[axis] - span
        n = (-(-top // s[axis]) if ceil_mode else top // s[axis]) + 1
        if ceil_mode and (n - 1) * s[axis] >= length + p[axis]:
            n -= 1
        sizes.append(n)
        pads.append((p[axis], (n - 1) * s[axis] + span - length - p[axis]))
    padded = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    total: torch.Tensor | None = None
    for a in range(k[0]):
        for b in range(k[1]):
            window = padded[
                ...,
                a * d[0] : a * d[0] + (sizes[0] - 1) * s[0] + 1 : s[0],
                b * d[1] : b * d[1] + (sizes[1] - 1) * s[1] + 1 : s[1],
            ]
            total = window if total is None else total + window
    assert total is not None
    return total / (k[0] * k[1])


def _separable_depthwise(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """A depthwise ``conv2d`` whose kernels are rank one, as a column then a row convolution.

    The same function (up to rounding), much faster in float64 on CPU; ``None`` when the call
    is not such a convolution.
    """
    b = _bound_args(
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args, kwargs
    )
    x, w, groups = b["input"], b["weight"], int(b.get("groups", 1))
    padding = b.get("padding", 0)
    if (
        x.dim() != 4
        or w.dim() != 4
        or groups == 1
        or groups != x.shape[1]
        or w.shape[1] != 1
        or min(w.shape[-2:]) < 2
        or isinstance(padding, str)
    ):
        return None
    col = w.sum(-1, keepdim=True)
    row = w.sum(-2, keepdim=True) / w.sum((-2, -1), keepdim=True)
    if not torch.allclose(col * row, w, rtol=1e-9, atol=0.0):
        return None
    s, p, d = _pair(b.get("stride", 1), 1), _pair(padding, 0), _pair(b.get("dilation", 1), 1)
    y = F.conv2d(x, col, None, (s[0], 1), (p[0], 0), (d[0], 1), groups)
    return F.conv2d(y, row, b.get("bias"), (1, s[1]), (0, p[1]), (1, d[1]), w.shape[0])


def _bound_args(
    names: Sequence[str], args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


class _Surrogate(TorchFunctionMode):
    """Identities for nonlinearities and norms, mean for max pooling, global context detached."""

    def __init__(self, tagger: _Tagger) -> None:
        super().__init__()
        self.tagger = tagger

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        base = name.rstrip("_")
        x = _first_tensor(args, kwargs)
        if x is not None and x.is_floating_point():
            if base in _IDENTITY_FUNCTIONS:
                inplace = name.endswith("_") or bool(kwargs.get("inplace"))
                return x if inplace else x.clone()
            if base in _NARROWING:
                return x
            if name == "conv2d":
                fast = _separable_depthwise(args, kwargs)
                if fast is not None:
                    return fast
            if name in ("max_pool2d", "max_pool2d_with_indices"):
                return self._max_pool(func, args, kwargs)
            if name in ("adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
                bound = _bound_args(("input", "output_size", "return_indices"), args, kwargs)
                out = F.adaptive_avg_pool2d(bound["input"], bound["output_size"])
                if name.endswith("indices") or bound.get("return_indices"):
                    return out, func(*args, **kwargs)[1]
                return self._detach_global(out, args, kwargs)
            if base in _BINARY_EXTREMA:
                others = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
                if len(others) == 2:
                    return others[0] + others[1]
            if name == "pad":
                bound = _bound_args(("input", "pad", "mode", "value"), args, kwargs)
                value = bound.get("value")
                if value is not None and not math.isfinite(value):
                    return F.pad(bound["input"], bound["pad"], bound.get("mode", "constant"), 0.0)
            if name == "to":
                args = tuple(
                    torch.float64 if isinstance(a, torch.dtype) and a.is_floating_point else a
                    for a in args
                )
                dtype = kwargs.get("dtype")
                if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                    kwargs = {**kwargs, "dtype": torch.float64}
        out = func(*args, **kwargs)
        if name.endswith("_") or kwargs.get("out") is not None:
            return out
        return self._detach_global(out, args, kwargs)

    def _max_pool(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        names = (
            "input",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "ceil_mode",
            "return_indices",
        )
        b = _bound_args(names, args, kwargs)
        out = _pool_windows(
            b["input"],
            b["kernel_size"],
            b.get("stride"),
            b.get("padding", 0),
            b.get("dilation", 1),
            bool(b.get("ceil_mode", False)),
        )
        if func.__name__.endswith("indices") or b.get("return_indices"):
            with torch.no_grad():
                indices = F.max_pool2d_with_indices(
                    b["input"],
                    b["kernel_size"],
                    b.get("stride"),
                    b.get("padding", 0),
                    b.get("dilation", 1),
                    bool(b.get("ceil_mode", False)),
                )[1]
            return out, indices
        return out

    def _detach_global(self, out: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        tags = self.tagger.tags
        flat, _ = tree_flatten((args, kwargs))
        if not any(any(tags.get(t) or ()) for t in flat):
            return out

        def fix(o: Any) -> Any:
            found = tags.get(o)
            if found is not None and not any(found) and o.requires_grad:
                return o.detach()
            return o

        if isinstance(out, tuple) and not hasattr(out, "_fields"):
            return tuple(fix(o) for o in out)
        if isinstance(out, list):
            return [fix(o) for o in out]
        return fix(out)


class _Identity(nn.Module):
    """Stands in for an activation or normalisation module."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x.clone() if isinstance(x, torch.Tensor) else x


class _WindowMean(nn.Module):
    """Stands in for ``nn.MaxPool2d``: the mean over the same windows."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool_windows(x, *self.args)


def _classes_in(module_name: str) -> list[type[nn.Module]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [
        c
        for c in vars(module).values()
        if inspect.isclass(c)
        and issubclass(c, nn.Module)
        and c.__module__ == module.__name__
        and not c.__name__.startswith("_")
    ]


def _identity_classes() -> tuple[type[nn.Module], ...]:
    keep = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention, nn.GLU)
    found: list[type[nn.Module]] = [
        c for c in _classes_in("torch.nn.modules.activation") if not issubclass(c, keep)
    ]
    found += [
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        nn.CrossMapLRN2d,
        nn.RMSNorm,
    ]
    for name in (
        "activations",
        "activations_me",
        "norm",
        "norm_act",
        "evo_norm",
        "filter_response_norm",
        "inplace_abn",
    ):
        found += _classes_in(f"timm.layers.{name}")
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    else:
        found.append(FrozenBatchNorm2d)
    return tuple(dict.fromkeys(found))


def _rescale(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: bring a module's output back to magnitude 1 by a positive constant.

    Identities in place of sigmoids turn gates into products (``x * x``) that would overflow
    within a few blocks; a detached positive factor changes no gradient's support.
    """
    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.requires_grad:
        peak = output.detach().abs().amax() if output.numel() else None
        if peak is not None and torch.isfinite(peak) and peak > 0 and not 1e-3 < peak < 1e3:
            return output / peak
    return None


def _surrogate(
    model: nn.Module, *, keep: str = "", unused: Sequence[str] = (), seed: int = 0
) -> nn.Module:
    """A linear, positive float64 copy of ``model`` whose input gradients show receptive fields.

    See :mod:`hypercolumns.rf.groundtruth` for what changes; run it under
    :func:`_surrogate_modes` so that functional nonlinearities and global context are handled
    too.

    Args:
        model: Any ``nn.Module``; it is deep-copied and left as it was.
        keep: Name of a module that must keep its name (a measured layer): its ancestors are
            not replaced, so it stays reachable by ``get_submodule``.
        unused: Names of modules that will not run (they first run after the measured layer):
            their parameters are not copied (meta tensors stand in).
        seed: Seed of the random positive weights.

    Returns:
        The surrogate, in eval mode.
    """
    memo: dict[int, Any] = {}
    skip = set(unused)
    used = {
        id(p)
        for name, m in model.named_modules()
        if name not in skip
        for p in m.parameters(recurse=False)
    }
    for name in skip:
        for param in model.get_submodule(name).parameters(recurse=False):
            if id(param) not in used:
                memo[id(param)] = nn.Parameter(
                    torch.empty(param.shape, device="meta"), requires_grad=param.requires_grad
                )
    net = copy.deepcopy(model, memo).double().eval()
    generator = torch.Generator().manual_seed(seed)

    def positive(*shape: int) -> torch.Tensor:
        return 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        for name, param in net.named_parameters():
            if param.is_meta:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("weight") and param.dim() >= 2:
                fan_in = max(1, param[0].numel())
                if param.dim() == 4 and param.shape[1] == 1:  # depthwise: rank-one kernels
                    c, _, kh, kw = param.shape
                    value = positive(c, 1, kh, 1) * positive(c, 1, 1, kw) / 2.25
                else:
                    value = positive(*param.shape)
                param.copy_(value / fan_in)
            elif leaf.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    identities = _identity_classes()
    ancestors = {""} | {keep.rsplit(".", n)[0] for n in range(1, keep.count(".") + 1)}
    for name, module in list(net.named_modules()):
        if name in ancestors:
            continue
        replacement: nn.Module | None = None
        if type(module) is nn.MaxPool2d:
            replacement = _WindowMean(module)
        elif isinstance(module, identities):
            replacement = _Identity()
        if replacement is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = net.get_submodule(parent_name)
        except AttributeError:
            continue  # already inside a replaced module
        if getattr(parent, attr, None) is module:
            setattr(parent, attr, replacement)
    for module in net.modules():
        module.register_forward_hook(_rescale)
    return net


@contextmanager
def _surrogate_modes() -> Iterator[_Tagger]:
    tagger = _Tagger()
    with _Surrogate(tagger), tagger:
        yield tagger
