"""Ground-truth receptive fields measured from input gradients, to check the analysis against.

:func:`hypercolumns.rf.layers.layers` derives receptive fields from shapes and op arguments on
meta tensors. This module measures them independently, the way one would by hand: make the
network linear and positive, back-propagate from one output unit, and read which input pixels
received a non-zero gradient. Those pixels are exactly the unit's theoretical receptive field.

The network is turned into a *surrogate* (a deep copy; the caller's model is never modified):

* float64, eval mode; every weight of a convolution or linear layer (any parameter named
  ``*weight`` with two or more dims) is set to a random positive value near ``1 / fan_in``,
  every ``*bias`` to 0 and every other parameter (layer scale, gains, embeddings) to 1, so all
  activations stay positive and no two paths cancel;
* nonlinearities (ReLU, GELU, SiLU, sigmoid, hard-swish, ...) and normalisations (batch, layer,
  group, RMS, evo and filter-response norms, and timm's norm + activation modules) become
  identities, both as modules and when called as functions;
* max pooling becomes average pooling over the same windows (same kernel, stride, padding,
  dilation and ``ceil_mode``); padding with ``-inf`` becomes padding with 0;
* *global context* is detached: a tensor computed from the image that keeps no spatial
  dimension (a squeeze-and-excitation gate, ``x.mean((2, 3))``, ``adaptive_avg_pool2d(x, 1)``,
  attention pooling) is a per-image constant, the convention of the analysis.

Which tensor dimensions are spatial is followed by a small tagger at the ATen level (the input's
last two dims are spatial; reshapes, permutes, reductions and matrix products move the tags);
it knows nothing of receptive fields, so the measured geometry owes nothing to the analysis.

The analysis is used only to choose where to measure (input size and units, so that no unit's
receptive field is clipped by the image border); a clipped measurement is detected and
repeated on a larger input.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hypercolumns._checks import parse_size
from hypercolumns._forward import StopForward, first_tensor
from hypercolumns.errors import GeometryWarning, HypercolumnsError, LayerNotFoundError, closest
from hypercolumns.rf.geometry import Axis
from hypercolumns.rf.layers import Layer, MapLayout, layers

__all__ = [
    "GradientRF",
    "MeasurementError",
    "gradient_boxes",
    "gradient_rf",
    "rf_mismatches",
]

Box = tuple[int, int, int, int]

_MAX_SIDE = 8192  # longest input side tried
_MAX_AREA = 1536 * 1536  # largest input area tried


class MeasurementError(HypercolumnsError):
    """A gradient measurement cannot be made (clipped receptive field, unit off the map, ...)."""


@dataclass(frozen=True)
class GradientRF:
    """Receptive field of a layer measured from input gradients, per axis as ``(y, x)`` pairs.

    Attributes:
        size: Largest extent, in input pixels, of the measured units' gradient support.
        stride: Input pixels between the centres of the measured units, per unit.
        center: Input coordinate of the centre of unit 0 (the measured centres moved back by
            ``index * stride``; averaged over the units of one period).
        measured_at: Input ``(H, W)`` used to measure the y axis, and the one for the x axis.
        units: The unit indices measured along y, and along x.
        extents: For each measured unit, its first and last input pixel along y, and along x.
    """

    size: tuple[int, int]
    stride: tuple[float, float]
    center: tuple[float, float]
    measured_at: tuple[tuple[int, int], tuple[int, int]]
    units: tuple[tuple[int, ...], tuple[int, ...]]
    extents: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = ((), ())


# ---------------------------------------------------------------------------------------------
# Spatial tags: which dims of each image-derived tensor hold positions (ATen level).

Tags = tuple[bool, ...]

_REDUCTIONS = frozenset(
    {
        "mean",
        "sum",
        "amax",
        "amin",
        "max",
        "min",
        "std",
        "var",
        "var_mean",
        "std_mean",
        "logsumexp",
        "norm",
        "linalg_vector_norm",
        "prod",
        "argmax",
        "argmin",
        "median",
        "nanmedian",
        "nansum",
        "nanmean",
        "mode",
        "any",
        "all",
        "count_nonzero",
        "aminmax",
    }
)
_VIEWS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "_reshape_alias",
        "squeeze",
        "unsqueeze",
        "flatten",
        "unflatten",
        "alias",
        "view_as",
        "reshape_as",
        "expand_as",
    }
)


def _bind(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _dims(value: Any, rank: int) -> list[int]:
    if value is None:
        return list(range(rank))
    items = [value] if isinstance(value, int) else list(value)
    if not items:
        return list(range(rank))
    return [int(d) % rank if rank else 0 for d in items]


def _regroup(tags: Tags, shape_in: Sequence[int], shape_out: Sequence[int]) -> Tags:
    """Tags after a reshape: an output dim is spatial when its digits overlap a spatial dim's.

    In row-major order a dim of size ``n`` whose elements are ``s`` apart covers the "digits"
    ``[s, s*n)`` of the flat index; two dims share elements' positions when these overlap.
    """

    def spans(shape: Sequence[int]) -> list[tuple[int, int]]:
        out, stride = [], 1
        for size in reversed(shape):
            out.append((stride, stride * int(size)))
            stride *= int(size)
        return out[::-1]

    source = [(a, b) for t, (a, b) in zip(tags, spans(shape_in), strict=True) if t and b > a]
    return tuple(d > c and any(a < d and c < b for a, b in source) for c, d in spans(shape_out))


class _TagStore:
    """Tags of live tensors, by identity (a tensor's id can be reused once it is freed)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref[torch.Tensor], Tags]] = {}

    def get(self, value: object) -> Tags | None:
        if not isinstance(value, torch.Tensor):
            return None
        item = self._items.get(id(value))
        if item is None or item[0]() is not value:
            return None
        return item[1]

    def set(self, tensor: torch.Tensor, tags: Tags) -> None:
        key = id(tensor)

        def forget(_: object) -> None:
            self._items.pop(key, None)

        self._items[key] = (weakref.ref(tensor, forget), tags)


def _merge(inputs: Sequence[tuple[Tags, Sequence[int]]], shape: Sequence[int]) -> Tags:
    """Right-aligned union of tags (broadcasting); a dim an input broadcasts from size 1 to a
    larger size does not take that input's tag."""
    rank = len(shape)
    merged = [False] * rank
    for tags, shape_in in inputs:
        lead = rank - len(tags)
        for d, t in enumerate(tags):
            if t and d + lead >= 0 and not (shape_in[d] == 1 and shape[d + lead] != 1):
                merged[d + lead] = True
    return tuple(merged)


_MATMUL_ARGS = {
    "mm": ("self", "mat2"),
    "addmm": ("mat1", "mat2"),
    "bmm": ("self", "mat2"),
    "baddbmm": ("batch1", "batch2"),
    "matmul": ("self", "other"),
    "mv": ("self", "vec"),
}
_ADAPTIVE = {
    "_adaptive_avg_pool2d": 2,
    "adaptive_max_pool2d": 2,
    "_adaptive_avg_pool3d": 3,
    "adaptive_max_pool3d": 3,
    "adaptive_max_pool1d": 1,
}


class _Tagger(TorchDispatchMode):
    """Follows which dims of image-derived tensors are spatial, op by op."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.tags = _TagStore()
        self.guessed: dict[str, None] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        inputs = [(t, tags) for t in flat if (tags := self.tags.get(t)) is not None]
        if not inputs:
            return out
        outs = [
            o
            for o in (out if isinstance(out, tuple | list) else (out,))
            if isinstance(o, torch.Tensor)
        ]
        name = func.overloadpacket.__name__.rstrip("_")
        for o in outs:
            self.tags.set(o, self._rule(func, name, args, kwargs, inputs, o))
        return out

    def _rule(
        self,
        func: Any,
        name: str,
        args: Any,
        kwargs: dict[str, Any],
        inputs: list[tuple[torch.Tensor, Tags]],
        out: torch.Tensor,
    ) -> Tags:
        first, tags = inputs[0]
        rank, shape = out.dim(), tuple(out.shape)
        if name in _REDUCTIONS:
            bound = _bind(func, args, kwargs)
            reduced = set(_dims(bound.get("dim"), first.dim()))
            if bound.get("keepdim"):
                return tuple(t and d not in reduced for d, t in enumerate(tags))
            kept = tuple(t for d, t in enumerate(tags) if d not in reduced)
            return kept if len(kept) == rank else (False,) * rank
        if name in _ADAPTIVE:
            n = _ADAPTIVE[name]
            if all(s == 1 for s in shape[-n:]) and any(s != 1 for s in first.shape[-n:]):
                return tags[:-n] + (False,) * n
            return tags
        if name in ("permute", "transpose", "t"):
            bound = _bind(func, args, kwargs)
            order = list(range(rank))
            if name == "permute":
                order = _dims(bound["dims"], rank)
            elif rank >= 2:
                a, b = int(bound.get("dim0", 0)) % rank, int(bound.get("dim1", 1)) % rank
                order[a], order[b] = order[b], order[a]
            return tuple(tags[d] for d in order)
        if name in _VIEWS:
            return _regroup(tags, tuple(first.shape), shape)
        if name == "convolution" and len(tags) == rank:  # channels are summed over
            return (tags[0], False, *tags[2:])
        if name in ("expand", "repeat"):
            return (False,) * (rank - len(tags)) + tags
        if name in ("select", "unbind"):
            d = int(_bind(func, args, kwargs).get("dim", 0)) % first.dim()
            return tags[:d] + tags[d + 1 :]
        if name == "stack":
            d = int(_bind(func, args, kwargs).get("dim", 0)) % rank
            merged = _merge(
                [(t, tuple(x.shape)) for x, t in inputs if len(t) == rank - 1],
                shape[:d] + shape[d + 1 :],
            )
            return (*merged[:d], False, *merged[d:])
        if name in _MATMUL_ARGS:
            bound = _bind(func, args, kwargs)
            ta, tb = (self.tags.get(bound.get(n)) for n in _MATMUL_ARGS[name])
            rows = ta[:-1] if ta is not None else (False,) * (rank - 1)
            if name == "mv":
                return rows
            cols = tb[-1:] if tb is not None else (False,)
            lead = tb[:-2] if tb is not None and len(tb) == rank else ()
            if lead and len(rows) == len(lead) + 1:
                rows = tuple(x or y for x, y in zip(rows[:-1], lead, strict=True)) + rows[-1:]
            result = (rows + cols)[-rank:]
            bias = self.tags.get(bound.get("self")) if name in ("addmm", "baddbmm") else None
            if bias is not None:
                result = tuple(
                    x or y
                    for x, y in zip(
                        result, _merge([(bias, tuple(bound["self"].shape))], shape), strict=True
                    )
                )
            return result
        same = [(t, tuple(x.shape)) for x, t in inputs if len(t) == rank]
        if not same:
            self.guessed[name] = None
            same = [(t, tuple(x.shape)) for x, t in inputs]
        return _merge(same, shape)


# ---------------------------------------------------------------------------------------------
# The surrogate network.

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

    See the module docstring for what changes; run it under :func:`_surrogate_modes` so that
    functional nonlinearities and global context are handled too.

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


# ---------------------------------------------------------------------------------------------
# Measuring.


_Chooser = Callable[[int, int], list[tuple[int, int]]]


class _Probe:
    """Runs the surrogate up to one layer and back-propagates from chosen units."""

    def __init__(
        self, model: nn.Module, name: str, in_channels: int, unused: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.in_channels = in_channels
        self.net = _surrogate(model, keep=name, unused=unused)
        try:
            self.module = self.net.get_submodule(name)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules()]
            near = closest(name, names)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise LayerNotFoundError(
                f"no layer named {name!r}{hint}; hc.layers(model, size) lists them all"
            ) from err
        self.guessed: dict[str, None] = {}

    def boxes(
        self, size: tuple[int, int], count: int, choose: _Chooser, layout: MapLayout | None
    ) -> tuple[list[tuple[int, int]], list[Box | None]]:
        """Gradient support ``(y0, x0, y1, x1)`` of the ``count`` units that
        ``choose(map_height, map_width)`` picks (None for a unit no input pixel reaches)."""
        x = torch.ones(count, self.in_channels, *size, dtype=torch.float64, requires_grad=True)
        captured: list[torch.Tensor] = []

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if t is not None:
                captured.append(t)
                raise StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            with torch.enable_grad(), _surrogate_modes() as tagger:
                tagger.tags.set(x, (False, False, True, True))
                with suppress(StopForward):
                    self.net(x)
            self.guessed.update(tagger.guessed)
        finally:
            handle.remove()
        if not captured:
            raise MeasurementError(f"layer {self.name!r} did not run (or returned no tensor)")
        maps = layout.to_map(captured[0]) if layout is not None else captured[0]
        if maps.dim() != 4:
            raise MeasurementError(
                f"layer {self.name!r} has output shape {tuple(captured[0].shape)}: expected a "
                "(B, C, H, W) map; pass a layer with spatial output"
            )
        height, width = maps.shape[-2:]
        units = choose(height, width)
        if len(units) != count:
            raise ValueError(f"expected {count} units, got {len(units)}")
        for i, j in units:
            if not (0 <= i < height and 0 <= j < width):
                raise MeasurementError(
                    f"unit ({i}, {j}) is off the {height}x{width} map of layer {self.name!r} "
                    f"for input {size[0]}x{size[1]}"
                )
        generator = torch.Generator().manual_seed(1)
        weights = 0.5 + torch.rand(maps.shape[1], generator=generator, dtype=torch.float64)
        rows_, cols_ = torch.tensor([u[0] for u in units]), torch.tensor([u[1] for u in units])
        picked = maps[torch.arange(count), :, rows_, cols_]  # (count, C)
        target = (picked * weights).sum()
        if not target.requires_grad:
            return units, [None] * count
        grads: tuple[torch.Tensor | None, ...] = torch.autograd.grad(target, x, allow_unused=True)
        grad = grads[0]
        if grad is None:
            return units, [None] * count
        if not torch.isfinite(grad).all():
            raise MeasurementError(f"non-finite input gradient for layer {self.name!r}")
        support = grad.ne(0).any(dim=1)
        result: list[Box | None] = []
        for b in range(len(units)):
            rows = support[b].any(dim=1).nonzero()
            cols = support[b].any(dim=0).nonzero()
            if len(rows) == 0:
                result.append(None)
                continue
            result.append((int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())))
        return units, result


def _analyse(
    model: nn.Module, size: tuple[int, int], name: str, in_channels: int
) -> tuple[Layer, list[str]]:
    """The analysis of layer ``name`` and the names of the layers that first run after it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        found = layers(model, size, in_channels=in_channels)
    for k, layer in enumerate(found):
        if layer.name == name:
            inside = name + "."
            return layer, [
                later.name for later in found[k + 1 :] if not later.name.startswith(inside)
            ]
    near = closest(name, [la.name for la in found])
    hint = f"; closest: {', '.join(near)}" if near else ""
    raise LayerNotFoundError(f"no layer named {name!r}{hint}; hc.layers(model, size) lists them")


def gradient_boxes(
    model: nn.Module,
    layer: str | Layer,
    input_size: int | str | Sequence[int],
    units: Sequence[tuple[int, int]],
    *,
    in_channels: int = 3,
) -> list[Box | None]:
    """Measured receptive field of each unit: its input-gradient support on one input size.

    Args:
        model: The model (left unchanged).
        layer: A layer name of ``model.named_modules()`` (or a :class:`Layer`).
        input_size: ``H`` or ``(H, W)``: the boxes are exact for this input, image borders
            included (a box that reaches past the border is cut at it).
        units: Unit indices ``(i, j)`` of the layer's output map.
        in_channels: Input channels.

    Returns:
        Per unit, the first and last input row and column with a non-zero gradient,
        ``(y0, x0, y1, x1)``; ``None`` when no input pixel reaches the unit.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    size = parse_size(input_size)
    target, unused = _analyse(model, size, name, in_channels)
    probe = _Probe(model, name, in_channels, unused)
    chosen = list(units)
    layout = _nonstandard(target.layout)
    return probe.boxes(size, len(chosen), lambda h, w: chosen, layout)[1]


def _nonstandard(layout: MapLayout | None) -> MapLayout | None:
    """``layout`` unless it is plain NCHW (which needs no rearranging)."""
    if layout is not None and (layout.y, layout.x, layout.prefix) == (2, 3, 0):
        return None
    return layout


def _thin(nominal: int, step: int, minimum: int) -> int:
    """The smallest ``nominal - k*step`` that is at least ``minimum`` (else ``nominal``)."""
    if nominal <= minimum:
        return nominal
    return nominal - ((nominal - minimum) // step) * step


def _summarise(
    boxes: Sequence[Box], first: int, period: int, axis: int
) -> tuple[int, Fraction, Fraction]:
    """Size, stride and centre of unit 0 along ``axis`` from the boxes of units
    ``first .. first + period``."""
    lo, hi = (0, 2) if axis == 0 else (1, 3)
    size = max(b[hi] - b[lo] + 1 for b in boxes)
    mids = [Fraction(b[lo] + b[hi], 2) for b in boxes]
    stride = (mids[period] - mids[0]) / period
    center = sum((mids[k] - (first + k) * stride for k in range(period)), Fraction(0)) / period
    return size, stride, center


def _clipped(boxes: Sequence[Box], size: tuple[int, int], axis: int) -> bool:
    lo, hi = (0, 2) if axis == 0 else (1, 3)
    return any(b[lo] <= 0 or b[hi] >= size[axis] - 1 for b in boxes)


def _geometry(layer: Layer) -> tuple[Axis | None, Axis | None]:
    rf = layer.rf
    if rf is None or rf.is_global or rf.axes is None:
        return (None, None)
    return rf.axes


def _grid(layer: Layer) -> tuple[int, int]:
    if layer.layout is not None:
        return layer.layout.grid
    return (int(layer.shape[-2]), int(layer.shape[-1]))


class _Session:
    """One layer of one model: the analysis on each input size (cached) and the probe."""

    def __init__(
        self, model: nn.Module, name: str, nominal: tuple[int, int], in_channels: int
    ) -> None:
        self.model, self.name, self.in_channels = model, name, in_channels
        self.input_size = nominal
        self.nominal, unused = _analyse(model, nominal, name, in_channels)
        self.probe = _Probe(model, name, in_channels, unused)
        self._analyses: dict[tuple[int, int], Layer | Exception] = {nominal: self.nominal}

    def analysis(self, size: tuple[int, int]) -> Layer:
        """The analysed layer on a ``size`` input (raises what the analysis raised)."""
        if size not in self._analyses:
            try:
                self._analyses[size] = _analyse(self.model, size, self.name, self.in_channels)[0]
            except Exception as err:
                self._analyses[size] = err
        found = self._analyses[size]
        if isinstance(found, Exception):
            raise found
        return found

    def boxes(self, size: tuple[int, int], units: Sequence[tuple[int, int]]) -> list[Box]:
        layout = _nonstandard(self.analysis(size).layout)
        chosen = list(units)
        _, found = self.probe.boxes(size, len(chosen), lambda h, w: chosen, layout)
        boxes = [b for b in found if b is not None]
        if len(boxes) != len(found):
            raise MeasurementError(f"no input pixel reaches units {chosen} of layer {self.name!r}")
        return boxes


def _pick(layer: Layer, size: tuple[int, int], axis: int, margin: int) -> tuple[int, int] | None:
    """The first unit and the period to measure along ``axis``: units nearest the middle whose
    analytic boxes keep ``margin`` pixels from the border (None when none do)."""
    n = _grid(layer)[axis]
    geometry = _geometry(layer)[axis]
    if geometry is None:  # no analysis to go by: the middle unit, and check the result
        return ((n - 1) // 2, 1) if n >= 2 else None
    period, length = geometry.period, size[axis]
    guess = math.floor(
        (Fraction(length - 1, 2) - geometry.center) / geometry.stride - Fraction(period, 2)
    )
    for first in sorted(range(max(0, n - period)), key=lambda i: abs(i - guess)):
        edges = [geometry.edges(first + k) for k in range(period + 1)]
        if min(e[0] for e in edges) >= margin and max(e[1] for e in edges) <= length - 1 - margin:
            return first, period
    return None


def _measure_axis(
    session: _Session, axis: int, step: int, margin: int, kinds: list[int]
) -> tuple[tuple[int, int], list[int], list[Box], int]:
    """Measure units along ``axis`` on inputs that grow until their boxes are not clipped.

    Returns the input size, the units measured, their boxes and the period. ``kinds[0]`` is
    the kind of input shape to start from (0: thin across the axis, 1: nominal across, 2:
    square); it is advanced when the model refuses a kind, for the next axis too.
    """
    base, other = session.input_size, 1 - axis
    geometry = _geometry(session.nominal)
    g_other, g = geometry[other], geometry[axis]
    stride_other = float(g_other.stride) if g_other is not None else 32.0
    across = (_thin(base[other], step, max(64, 2 * math.ceil(stride_other))), base[other])
    m = 0
    if g is not None:  # skip the sizes that the nominal geometry rules out
        span = g.size + (g.period + 2) * float(g.stride) + 2 * margin
        m = max(0, math.ceil((span - base[axis]) / step))
    while True:
        length = base[axis] + m * step
        if length > _MAX_SIDE:
            raise MeasurementError(
                f"cannot measure layer {session.name!r} along {'yx'[axis]}: its receptive "
                f"field is cut by the border of every input up to {_MAX_SIDE} pixels long"
            )
        error: Exception | None = None
        for kind in range(kinds[0], 3):
            size = (length, across[kind]) if kind < 2 else (length, length)
            size = size if axis == 0 else (size[1], size[0])
            if size[0] * size[1] > _MAX_AREA:
                continue
            try:
                layer = session.analysis(size)
                picked = _pick(layer, size, axis, margin)
                if picked is None:  # too small for this layer: a longer input
                    m += 1
                    break
                first, period = picked
                middle = _grid(layer)[other] // 2
                units = [
                    (first + k, middle) if axis == 0 else (middle, first + k)
                    for k in range(period + 1)
                ]
                boxes = session.boxes(size, units)
            except Exception as err:  # the model does not take this shape: try the next kind
                error = err
                continue
            kinds[0] = kind
            if _clipped(boxes, size, axis):  # the analysis was wrong; a larger input will tell
                m = max(m + 1, math.ceil((1.5 * length - base[axis]) / step))
                break
            return size, [u[axis] for u in units], boxes, period
        else:
            raise MeasurementError(
                f"cannot measure layer {session.name!r} along {'yx'[axis]}: the model fails on "
                f"every input shape tried with side {length}"
                + (f" (the last error: {type(error).__name__}: {error})" if error else "")
            ) from error


def gradient_rf(
    model: nn.Module,
    layer: str | Layer,
    input_size: int | str | Sequence[int],
    *,
    in_channels: int = 3,
    unit: tuple[int, int] | None = None,
) -> GradientRF:
    """Receptive-field size, stride and centre of a layer, measured from input gradients.

    Along each axis, the gradient support of a few neighbouring units (one period of the
    layer's pattern, plus one) gives the size (largest extent), the stride (distance between
    the first and last measured centres over their index difference) and the centre of unit 0.

    By default the units are chosen in the middle of an input whose side grows from
    ``input_size`` in steps of a multiple of the layer's stride (so "same" padding keeps its
    offsets) until no measured unit touches the image border; the y axis is measured on a
    tall, narrow input and the x axis on a wide, short one when the model accepts them (a
    square input otherwise). Layers whose geometry depends on the input size (adaptive
    pooling to a fixed size, resizing to a fixed size) are measured on those sizes:
    ``measured_at`` says which. With ``unit``, units ``unit`` .. ``unit + period`` are
    measured on ``input_size`` itself.

    Args:
        model: The model (left unchanged).
        layer: A layer name of ``model.named_modules()`` (or a :class:`Layer`).
        input_size: ``H`` or ``(H, W)``: the nominal input size.
        in_channels: Input channels.
        unit: First unit ``(i, j)`` to measure, on ``input_size`` exactly.

    Returns:
        The measured geometry.

    Raises:
        LayerNotFoundError: No module of that name.
        MeasurementError: A unit's receptive field is cut by the border (with ``unit``, or on
            every input tried), or no input pixel reaches the unit.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    nominal = parse_size(input_size)
    session = _Session(model, name, nominal, in_channels)
    if unit is not None:
        periods = [g.period if g is not None else 1 for g in _geometry(session.nominal)]
        span = max(periods)
        units = [(unit[0] + k, unit[1] + k) for k in range(span + 1)]
        boxes = session.boxes(nominal, units)
        if _clipped(boxes, nominal, 0) or _clipped(boxes, nominal, 1):
            raise MeasurementError(
                f"the receptive field of unit {unit} of layer {name!r} is cut by the border "
                f"of a {nominal[0]}x{nominal[1]} input: use a larger input or a unit nearer "
                "the middle"
            )
        ys = _summarise(boxes[: periods[0] + 1], unit[0], periods[0], 0)
        xs = _summarise(boxes[: periods[1] + 1], unit[1], periods[1], 1)
        return GradientRF(
            (ys[0], xs[0]),
            (float(ys[1]), float(xs[1])),
            (float(ys[2]), float(xs[2])),
            (nominal, nominal),
            (
                tuple(u[0] for u in units[: periods[0] + 1]),
                tuple(u[1] for u in units[: periods[1] + 1]),
            ),
            (
                tuple((b[0], b[2]) for b in boxes[: periods[0] + 1]),
                tuple((b[1], b[3]) for b in boxes[: periods[1] + 1]),
            ),
        )
    strides = [float(g.stride) for g in _geometry(session.nominal) if g is not None] or [32.0]
    step = max(64, 2 ** math.ceil(math.log2(max(2.0, 2 * max(strides)))))
    margin = max(2, math.ceil(max(strides)))
    kinds = [0]
    results, sizes, measured, extents = [], [], [], []
    for axis in (0, 1):
        size, units_along, boxes, period = _measure_axis(session, axis, step, margin, kinds)
        results.append(_summarise(boxes, units_along[0], period, axis))
        sizes.append(size)
        measured.append(tuple(units_along))
        extents.append(tuple((b[axis], b[axis + 2]) for b in boxes))
    (ry, sy, cy), (rx, sx, cx) = results
    return GradientRF(
        (ry, rx),
        (float(sy), float(sx)),
        (float(cy), float(cx)),
        (sizes[0], sizes[1]),
        (measured[0], measured[1]),
        (extents[0], extents[1]),
    )


def rf_mismatches(
    model: nn.Module, layer: str | Layer, measured: GradientRF, *, in_channels: int = 3
) -> list[str]:
    """How the analysis differs from a gradient measurement (empty when they agree exactly).

    Each axis is compared with :func:`hypercolumns.rf.layers.layers` run on the input size that
    axis was measured on (``measured.measured_at``): the size, the stride, the exact extent of
    every measured unit, and the centre of unit 0 where the analysis says units are centred
    in their extent (``uniform``). Elsewhere (units that differ, paths that meet misaligned)
    the analysis places a unit at its sampling position, which need not be the middle of its
    extent; the extents pin the geometry down instead.
    """
    name = layer.name if isinstance(layer, Layer) else layer
    out = []
    for k, axis in enumerate("yx"):
        found = _analyse(model, measured.measured_at[k], name, in_channels)[0]
        where = "x".join(str(s) for s in measured.measured_at[k])
        geometry = _geometry(found)[k]
        if found.rf is None or geometry is None:
            out.append(f"{axis}: the analysis gives no local receptive field on a {where} input")
            continue
        checks = ["size", "stride", "center"] if geometry.uniform else ["size", "stride"]
        for what in checks:
            a, m = getattr(found.rf, what)[k], getattr(measured, what)[k]
            if float(a) != float(m):
                out.append(f"{what}[{axis}] on {where}: analysis {a:g}, gradient {m:g}")
        for i, (first, last) in zip(measured.units[k], measured.extents[k], strict=False):
            lo, hi = geometry.edges(i)
            if (lo, hi) != (Fraction(first), Fraction(last)):
                out.append(
                    f"unit {i} along {axis} on {where}: analysis {float(lo):g}..{float(hi):g}, "
                    f"gradient {first}..{last}"
                )
    return out
