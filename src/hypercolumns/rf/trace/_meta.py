"""Shortcuts of the meta run: outputs of common ops built directly, and fast forwards of
standard modules.

PyTorch's meta kernels for batch norm, layer norm and in-place activations are Python
decompositions that cost more than the rest of a trace; :func:`_meta_shortcut` builds their
outputs directly. :func:`_fast_forward` replaces the ``forward`` of standard modules (exact types
of ``torch.nn`` and ``timm.layers``) for the meta run, computing only the output's shape and
taking the geometry from the op's own rule. :class:`_Op` is what the tracer looks up once per
op overload.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn

from hypercolumns.rf.trace.rules.call import _Call, _ints, _Rule
from hypercolumns.rf.trace.rules.mixing import _matmul_rule, _rule_attention
from hypercolumns.rf.trace.rules.spatial import _rule_conv
from hypercolumns.rf.trace.rules.table import _ATTENTION, _ELEMENTWISE, _RULES
from hypercolumns.rf.trace.state import State, _States


class _Tracing(Protocol):
    """What the fast forwards use of the tracer
    (:class:`~hypercolumns.rf.trace._tracer._Tracer`)."""

    meta: bool
    states: _States

    def record(
        self, name: str, out: Any, states: Sequence[State | None], derive: Callable[[], Any]
    ) -> None: ...


_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
_BOOLEAN = {
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_and",
    "logical_or",
    "logical_xor",
    "logical_not",
    "isnan",
    "isinf",
    "isfinite",
    "isneginf",
    "isposinf",
    "signbit",
    "isreal",
}
_BATCH_NORMS = {
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "cudnn_batch_norm",
}


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.is_meta else value.to("meta")
    if isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_to_meta(v) for v in value)
    return value


def _meta_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous meta tensor, made without entering the tracer (when it is active)."""
    with torch._C._DisableTorchDispatch():
        return torch.empty(shape, device="meta", dtype=dtype)


def _meta_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` on the meta device, at a fraction of its cost (PyTorch's meta
    ``empty_like`` is a Python decomposition): the strides of a dense ``x`` are kept, as
    ``empty_like`` keeps them."""
    with torch._C._DisableTorchDispatch():
        if x.is_contiguous() or _dense(x.shape, x.stride()):
            return torch.empty_strided(x.shape, x.stride(), device="meta", dtype=x.dtype)
        return torch.empty_like(x)


def _dense(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Some permutation of the dims is contiguous (no gaps, no overlap)."""
    expected = 1
    for step, size in sorted((st, n) for n, st in zip(shape, stride, strict=True) if n != 1):
        if step != expected:
            return False
        expected *= size
    return expected > 0


def _broadcast_shape(shapes: Sequence[torch.Size]) -> tuple[int, ...] | None:
    """The shape ``shapes`` broadcast to, or ``None`` when they do not broadcast."""
    first = shapes[0]
    if all(s == first for s in shapes):
        return tuple(first)
    out = [1] * max(len(s) for s in shapes)
    for s in shapes:
        for i, n in enumerate(s, len(out) - len(s)):
            if n != 1:
                if out[i] not in (1, n):
                    return None
                out[i] = n
    return tuple(out)


def _meta_shortcut(op: _Op, args: tuple[Any, ...]) -> Any:
    """Outputs of shape-preserving ops built directly: PyTorch's meta kernels for batch norm and
    in-place activations are Python decompositions that cost more than the rest of a trace."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not x.is_meta:
        return None
    name = op.name
    if name in _BATCH_NORMS:
        stats = _meta_empty((0,), x.dtype)
        return (_meta_like(x), stats, _meta_empty((0,), x.dtype))
    if name == "native_layer_norm":
        n = len(args[1])
        rows = (*x.shape[: x.dim() - n], *([1] * n))
        return (_meta_like(x), _meta_empty(rows, x.dtype), _meta_empty(rows, x.dtype))
    if not op.pointwise_float or not x.dtype.is_floating_point:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if any(t.dtype != x.dtype for t in tensors):
        return None  # type promotion: leave it to PyTorch
    if name.endswith("_"):
        return x
    out = _broadcast_shape([t.shape for t in tensors])
    if out is None:
        return None  # PyTorch raises the error
    like = next((t for t in tensors if t.shape == out and t.is_meta), None)
    if like is not None:
        return _meta_like(like)
    return _meta_empty(out, x.dtype)


@dataclass(frozen=True)
class _Op:
    """What the tracer needs to know of one ATen op overload, looked up once per trace."""

    name: str
    rule: _Rule | None  # the op's geometry rule, if it has one
    decompose: bool  # composite, without a rule of its own: follow its decomposition
    elementwise: bool  # tagged pointwise, or known to be elementwise
    pointwise_float: bool  # tagged pointwise and not a comparison: the meta shortcut applies

    @classmethod
    def of(cls, func: Any) -> _Op:
        name = func.overloadpacket.__name__
        rule = _RULES.get(name) or _RULES.get(name.rstrip("_"))
        if rule is None and any(k in name for k in _ATTENTION):
            rule = _rule_attention
        pointwise = torch.Tag.pointwise in func.tags
        return cls(
            name=name,
            rule=rule,
            decompose=name not in _RULES and func.has_kernel_for_dispatch_key(_COMPOSITE),
            elementwise=pointwise or name.rstrip("_") in _ELEMENTWISE,
            pointwise_float=pointwise and name not in _BOOLEAN,
        )


def _window_count(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """Output size of a convolution or pooling window along one axis (PyTorch's formula)."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


# What standard modules do in eval mode, for :func:`_fast_forward`: return their input
# (``"keep"``), return a new tensor with the input's geometry (``"same"``: elementwise, or per
# channel), or that followed by their children ``drop`` and ``act`` (``"norm_act"``).
_SAME_SHAPE: dict[type[nn.Module], str] = {
    nn.BatchNorm2d: "same",
    nn.ReLU: "same",
    nn.ReLU6: "same",
    nn.SiLU: "same",
    nn.GELU: "same",
    nn.Hardswish: "same",
    nn.Hardsigmoid: "same",
    nn.Sigmoid: "same",
    nn.Tanh: "same",
    nn.LeakyReLU: "same",
    nn.ELU: "same",
    nn.Mish: "same",
    nn.Identity: "keep",
    nn.Dropout: "keep",
    nn.Dropout2d: "keep",
    nn.LayerNorm: "same",
    nn.GroupNorm: "same",
}
# The same for classes of ``timm.layers`` (whose forwards were read for this: layer and group
# norms, whose rule keeps the geometry whatever dims they normalise; activations; drop path).
_TIMM_SAME_SHAPE = {
    "LayerNorm": "same",
    "LayerNorm2d": "same",
    "GroupNorm": "same",
    "GroupNorm1": "same",
    "GELU": "same",
    "GELUTanh": "same",
    "QuickGELU": "same",
    "Swish": "same",
    "Mish": "same",
    "Sigmoid": "same",
    "Tanh": "same",
    "HardSwish": "same",
    "HardSigmoid": "same",
    "HardMish": "same",
    "PReLU": "same",
    "DropPath": "keep",
    "BatchNormAct2d": "norm_act",
    "GroupNormAct": "norm_act",
    "GroupNorm1Act": "norm_act",
    "LayerNormAct": "norm_act",
    "LayerNormAct2d": "norm_act",
}


@functools.cache
def _same_shape(timm_layers: ModuleType | None) -> dict[type[nn.Module], str]:
    """:data:`_SAME_SHAPE`, with the classes of ``timm.layers`` once timm is imported."""
    kinds = dict(_SAME_SHAPE)
    for name, how in _TIMM_SAME_SHAPE.items() if timm_layers is not None else ():
        cls = getattr(timm_layers, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            kinds[cls] = how
    return kinds


_CONVOLUTION = torch.ops.aten.convolution.default
_LINEAR_RULE = _matmul_rule(("self", "mat2"), False)
_MM = torch.ops.aten.mm.default
_MAX_POOL = torch.ops.aten.max_pool2d.default
_AVG_POOL = torch.ops.aten.avg_pool2d.default


def _fast_forward(module: nn.Module, tracer: _Tracing) -> Callable[[torch.Tensor], Any] | None:
    """A ``forward`` for standard modules (exact types of ``torch.nn`` and ``timm.layers``) that
    skips op dispatch on meta tensors.

    Only the output shape is computed here; the geometry comes from the op's own rule, so the
    result is the one dispatch would give, at a fraction of the cost (tested against it).
    """
    kind = type(module)
    original: Callable[..., Any] = module.forward
    how = _same_shape(sys.modules.get("timm.layers")).get(kind)
    if how is not None:
        then = (
            [module.get_submodule("drop"), module.get_submodule("act")] if how == "norm_act" else []
        )

        def same(x: torch.Tensor, *rest: Any, **options: Any) -> Any:
            if rest or options or not isinstance(x, torch.Tensor) or not x.is_meta:
                return original(x, *rest, **options)
            if how == "keep" or getattr(module, "inplace", False):
                return x
            out = _meta_like(x)
            st = tracer.states.get(x)
            if st is not None:
                tracer.states[out] = st
            for child in then:
                out = child(out)
            return out

        return same
    if kind is nn.Linear:

        def linear(x: torch.Tensor) -> Any:
            st = tracer.states.get(x)
            if not x.is_meta or st is None or x.dim() < 2:
                return original(x)
            width = int(vars(module)["out_features"])
            out = _meta_empty((*x.shape[:-1], width), x.dtype)
            args = {"self": x, "mat2": module.weight}
            tracer.record(
                "mm", out, [st], lambda: _LINEAR_RULE(_Call(_MM, args, out, tracer.states))
            )
            return out

        return linear
    if kind not in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
        return None
    settings: dict[str, Any] = vars(module)
    if kind is nn.Conv2d and settings["padding_mode"] == "zeros":
        func, ceil, channels = _CONVOLUTION, False, int(settings["out_channels"])
    elif kind in (nn.MaxPool2d, nn.AvgPool2d) and not settings.get("return_indices"):
        func = _MAX_POOL if kind is nn.MaxPool2d else _AVG_POOL
        ceil, channels = bool(settings["ceil_mode"]), 0
    else:
        return None
    if isinstance(settings["padding"], str):
        return None  # "same"/"valid": left to dispatch
    k = _ints(settings["kernel_size"], 2)
    s = _ints(settings["stride"], 2) or k
    p = _ints(settings["padding"], 2)
    d = _ints(settings.get("dilation", 1), 2)

    def windowed(x: torch.Tensor) -> Any:
        st = tracer.states.get(x)
        if not x.is_meta or x.dim() != 4 or st is None:
            return original(x)
        size = [_window_count(int(x.shape[2 + i]), k[i], s[i], p[i], d[i], ceil) for i in (0, 1)]
        if min(size) < 1:
            return original(x)  # the real op raises the size error
        out = _meta_empty((x.shape[0], channels or x.shape[1], *size), x.dtype)
        if func is _CONVOLUTION:
            args = {
                "input": x,
                "weight": module.weight,
                "stride": s,
                "padding": p,
                "dilation": d,
                "transposed": False,
            }
            rule: _Rule = _rule_conv
        else:
            args = {"self": x, "kernel_size": k, "stride": s, "padding": p, "dilation": d}
            rule = _RULES[func.overloadpacket.__name__]
        tracer.record(
            func.overloadpacket.__name__,
            out,
            [st],
            lambda: rule(_Call(func, args, out, tracer.states)),
        )
        return out

    return windowed


@contextmanager
def _shortcuts(modules: Sequence[tuple[str, nn.Module]], tracer: _Tracing) -> Iterator[None]:
    """Install :func:`_fast_forward` on every module that has one, for the meta run only."""
    patched = []
    try:
        for _, module in modules if tracer.meta else ():
            if "forward" not in module.__dict__:
                fast = _fast_forward(module, tracer)
                if fast is not None:
                    # Straight into the instance dict: what ``module.forward = fast`` does,
                    # without ``nn.Module.__setattr__``'s checks.
                    module.__dict__["forward"] = fast
                    patched.append(module)
        yield
    finally:
        for module in patched:
            del module.__dict__["forward"]
