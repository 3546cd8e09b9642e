"""Run a model once and follow the receptive-field geometry of every tensor, op by op.

The model runs eagerly (Python control flow in ``forward`` just works) on *meta* tensors, so no
arithmetic is done: a ``TorchDispatchMode`` sees every ATen op, moves its tensor arguments to
the meta device, runs it for the output shape, and derives the output's geometry from its
inputs'. Forward hooks read the geometry of each module's output.

Each tensor derived from the input carries a :class:`State`: per tensor dimension, the factors
it is made of (a flattened ``(H, W)`` token axis is two factors), and for spatial factors their
exact :class:`~hypercolumns.rf.geometry.Axis`. Tensors that do not depend on the input (weights,
constants) carry none.

Conventions beyond ``DESIGN.md``:

* *Global context*, a tensor pooled over the image that keeps no positions (a squeeze-and-
  excitation gate, a pooled ASPP branch, normalisation statistics), is a per-image constant
  when it meets a map: it does not widen the map's receptive field.
* A *mixed* map keeps its positions but each unit depends on the whole image (after
  self-attention, or a softmax over positions); its receptive field is the whole input.
* An op whose geometry is unknown and that changes spatial size makes its output *unknown*
  and raises a :class:`~hypercolumns.errors.GeometryWarning`.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from hypercolumns._forward import evaluating, first_tensor
from hypercolumns.errors import GeometryWarning, HypercolumnsError, InputSizeError, ModelError
from hypercolumns.rf import geometry as g

__all__ = ["Dim", "Factor", "ModuleRecord", "State", "Trace", "trace"]


@dataclass(frozen=True)
class Factor:
    """One factor of a tensor dimension: ``size`` elements, spatial when ``axis`` is set.

    A spatial factor cut into blocks by a reshape is two factors of one :class:`Split`: the
    *outer* one (which block) keeps a geometry, the *inner* one (where in the block) has none.
    """

    size: int
    axis: str | None = None  # "y" or "x"
    geom: g.Axis | None = None
    split: Split | None = None
    inner: bool = False

    @property
    def positional(self) -> bool:
        """Spatial, and not the inner factor of a split (whose position depends on the block)."""
        return self.axis is not None and not self.inner


@dataclass(frozen=True)
class Split:
    """A spatial axis with geometry ``origin`` cut into ``blocks`` blocks by a reshape.

    Windowed attention (Swin, MaxViT, ...) and space-to-depth cut each spatial axis into an
    outer factor (which block: the geometry of a pooling over the block) and an inner one
    (where in the block), whose ``geom`` is that of the whole axis, unit ``block * o + j``.
    Ops on windows stacked in the batch (a convolution inside each window) change the inner
    factor only. Joined again in order, outer then inner, they are a plain axis; when
    positions inside blocks were mixed (attention within windows), every unit of the joined
    axis reads its whole block.

    *Sliding* windows (``F.unfold``, ``Tensor.unfold``; VOLO, HaloNet) may overlap: window
    ``o`` holds units ``o * step - pad + j`` of ``origin``, ``j < kernel``. The outer factor's
    geometry is that of a convolution with this kernel, the inner one's is ``origin`` (unit
    ``o * step - pad + j``). They never join back into an axis: ``F.fold`` sums them.
    """

    axis: str
    origin: g.Axis
    blocks: int
    kernel: int = 0  # sliding windows only: their size, step and padding
    step: int = 0
    pad: int = 0

    @property
    def sliding(self) -> bool:
        return self.kernel > 0

    def factors(self, size: int) -> tuple[Factor, Factor]:
        """The outer and inner factor of a ``size``-unit axis with geometry ``origin``."""
        if self.sliding:
            outer = Factor(self.blocks, self.axis, self.extent(), self)
            return outer, Factor(self.kernel, self.axis, self.origin, self, inner=True)
        block = size // self.blocks
        outer = Factor(self.blocks, self.axis, g.conv(self.origin, block, block), self)
        return outer, Factor(block, self.axis, self.origin, self, inner=True)

    def extent(self) -> g.Axis:
        """Geometry of sliding window ``o``: every unit it holds."""
        return g.conv(self.origin, self.kernel, self.step, self.pad)


def _sliding(f: Factor, size: int, kernel: int, step: int, pad: int = 0) -> tuple[Factor, Factor]:
    """Outer and inner factor of the sliding windows that cut the spatial factor ``f``: blocks
    that tile the axis are a plain split (they may join back), others stay windows."""
    if f.geom is None or f.inner:
        raise _OpError("cuts windows out of positions inside windows")
    blocks = (f.size + 2 * pad - kernel) // step + 1
    if kernel == step and not pad and blocks * kernel == f.size:
        return Split(str(f.axis), f.geom, blocks).factors(size)
    return Split(str(f.axis), f.geom, blocks, kernel, step, pad).factors(size)


def _join(inner: Factor, mixed: bool) -> Factor:
    """The whole axis of ``inner``'s split; with ``mixed``, each unit reading its whole block."""
    assert inner.split is not None
    if inner.split.sliding:
        raise _OpError("joins sliding windows back into an axis")
    assert inner.geom is not None
    size, geom = inner.size * inner.split.blocks, inner.geom
    if mixed:
        blocks = g.conv(geom, inner.size, inner.size)
        geom = g.interpolate(blocks, "nearest", Fraction(1, inner.size), units=size)
    return Factor(size, inner.axis, geom)


@dataclass(frozen=True)
class Dim:
    """A tensor dimension: ``prefix`` leading extra tokens, then the product of ``factors``."""

    factors: tuple[Factor, ...]
    prefix: int = 0

    @property
    def size(self) -> int:
        return self.prefix + math.prod(f.size for f in self.factors)

    @property
    def spatial(self) -> bool:
        return any(f.axis is not None for f in self.factors)

    @property
    def positional(self) -> bool:
        """Holds positions of the map (not only positions inside blocks)."""
        return any(f.positional for f in self.factors)

    @property
    def simple(self) -> Factor | None:
        """The dimension's one spatial factor, when it is exactly one spatial axis."""
        if self.prefix == 0 and len(self.factors) == 1 and self.factors[0].positional:
            return self.factors[0]
        return None


def _plain(size: int) -> Dim:
    return Dim((Factor(size),))


@dataclass(frozen=True)
class State:
    """Geometry of a tensor derived from the input."""

    dims: tuple[Dim, ...]
    is_global: bool = False
    unknown: bool = False
    mixed: bool = False
    windows: frozenset[Split] = frozenset()  # splits whose blocks were mixed inside


def _flat(shape: Sequence[int], *, is_global: bool = False, unknown: bool = False) -> State:
    return State(tuple(_plain(int(s)) for s in shape), is_global, unknown)


def _windowed(dims: Sequence[Dim]) -> frozenset[Split] | None:
    """The splits whose inner factors are the spatial factors of ``dims``, or ``None`` when one
    of them is positional: mixing values along ``dims`` then mixes positions only inside
    blocks (``None``: across the image)."""
    splits: set[Split] = set()
    for dim in dims:
        for f in dim.factors:
            if f.positional or (f.inner and dim.prefix):
                return None
            if f.split is not None:
                splits.add(f.split)
    return frozenset(splits)


def _fuse(factors: Sequence[Factor], windows: frozenset[Split]) -> tuple[Factor, ...]:
    """``factors`` with each outer factor followed by its inner one joined into their parent."""
    out: list[Factor] = []
    for f in factors:
        prev = out[-1] if out else None
        if f.inner and prev is not None and not prev.inner and prev.split == f.split:
            assert f.split is not None
            if f.split.sliding:  # overlapping windows stay two factors
                out.append(f)
            else:
                out[-1] = _join(f, f.split in windows)
        else:
            out.append(f)
    return tuple(out)


def joined_axes(state: State) -> tuple[g.Axis, g.Axis] | None:
    """Geometry of the ``y`` and ``x`` axes of a tensor whose spatial axes may be cut into
    blocks (windows laid out as batch and token dims): each axis is one positional factor, or
    the outer and inner factor of one split, anywhere in the tensor. Units of sliding windows
    are the windows."""
    found: dict[str, list[Factor]] = {"y": [], "x": []}
    for dim in state.dims:
        for f in dim.factors:
            if f.axis is not None:
                found[f.axis].append(f)
    if not any(len(fs) == 2 for fs in found.values()):
        return None  # not windows: a flattened map is fully connected's input (global)
    axes: list[g.Axis | None] = []
    for fs in found.values():
        if len(fs) == 1 and fs[0].positional and fs[0].split is None:
            axes.append(fs[0].geom)
        elif len(fs) == 2 and (split := fs[0].split) is not None and split == fs[1].split:
            inner = [f for f in fs if f.inner]
            if len(inner) != 1:
                return None
            if split.sliding:
                axes.append(next(f for f in fs if not f.inner).geom)
                continue
            axes.append(_join(inner[0], inner[0].split in state.windows).geom)
        else:
            return None
    y, x = axes
    return (y, x) if y is not None and x is not None else None


@dataclass
class ModuleRecord:
    """What one module did the first time it ran."""

    name: str
    module: nn.Module
    order: int
    is_leaf: bool
    output: torch.Tensor | None = None
    state: State | None = None


@dataclass
class Trace:
    """The result of one traced run."""

    input_size: tuple[int, int]
    records: list[ModuleRecord]
    warnings: list[str] = field(default_factory=list)
    meta: bool = True


class _OpError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Op rules. Each takes the bound arguments, the input states and the output, returns states.

_State = State | None
_Rule = Callable[["_Call"], Any]


@dataclass
class _Call:
    func: torch._ops.OpOverload
    args: dict[str, Any]
    out: Any
    tracer: _Tracer

    def state(self, name: str) -> _State:
        value = self.args.get(name)
        return self.tracer.states.get(value) if isinstance(value, torch.Tensor) else None

    @property
    def source(self) -> State:
        """State of the op's main tensor argument (``self`` or ``input``): rules for ops whose
        output derives from that tensor only run when it has one."""
        st = self.state("self" if "self" in self.args else "input")
        if st is None:
            raise _OpError("has a constant main input but image-derived other inputs")
        return st

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.args[name].shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        out = self.out[0] if isinstance(self.out, tuple | list) else self.out
        return tuple(out.shape)


def _bind(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


def _ints(value: Any, n: int) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value] * n
    vals = [int(v) for v in value]
    return vals * n if len(vals) == 1 and n > 1 else vals


def _mapped(
    state: State,
    out_shape: Sequence[int],
    axes: Sequence[int],
    fn: Callable[[int, g.Axis, int], g.Axis],
) -> State:
    """Apply ``fn(i, geometry, new_size)`` to the i-th of the tensor dims ``axes``."""
    if state.is_global:
        return _flat(out_shape, is_global=True)
    dims = list(state.dims)
    for i, d in enumerate(axes):
        dim, size = dims[d], int(out_shape[d])
        if not dim.spatial:
            dims[d] = _plain(size)
            continue
        factor = dim.simple
        if factor is None or factor.geom is None:
            raise _OpError("works on a flattened or token axis")
        dims[d] = Dim((Factor(size, factor.axis, fn(i, factor.geom, size)),))
    for d in range(len(dims)):
        if d not in axes and dims[d].size != out_shape[d]:
            if dims[d].spatial:
                raise _OpError("changes the size of a spatial axis it is not known to act on")
            dims[d] = _plain(int(out_shape[d]))
    return State(tuple(dims))


def _shape_of(st: State) -> tuple[int, ...]:
    return tuple(d.size for d in st.dims)


def _spatial_tail(call: _Call, n: int) -> list[int]:
    rank = len(call.shape("self") if "self" in call.args else call.shape("input"))
    return list(range(rank - n, rank))


def _rule_conv(call: _Call) -> State:
    st = call.source
    inner = _windowed(st.dims[1:2])  # channels may hold positions inside blocks
    if call.state("weight") is not None or inner is None:
        return _flat(call.out_shape, is_global=True)
    if inner:
        st = State((st.dims[0], _plain(call.out_shape[1]), *st.dims[2:]), windows=inner)
    n = len(call.shape("input")) - 2
    k = list(call.shape("weight")[2:])
    s, p = _ints(call.args["stride"], n), _ints(call.args["padding"], n)
    d = _ints(call.args["dilation"], n)
    axes = list(range(2, 2 + n))
    if all(x == 1 for x in (*k, *s)) and not any(p) and call.out_shape[2:] == _shape_of(st)[2:]:
        # A 1x1 convolution mixes channels only, whatever the other dims hold (tokens).
        return State((st.dims[0], _plain(call.out_shape[1]), *st.dims[2:]), windows=st.windows)
    if call.args["transposed"]:
        return _mapped(
            st, call.out_shape, axes, lambda i, a, _: g.transposed_conv(a, k[i], s[i], p[i], d[i])
        )
    return _windows(st, call.out_shape, axes, k, s, p, d) or _mapped(
        st, call.out_shape, axes, lambda i, a, _: g.conv(a, k[i], s[i], p[i], d[i])
    )


def _pool_rule(n: int) -> _Rule:
    def rule(call: _Call) -> State:
        st = call.source
        k = _ints(call.args["kernel_size"], n)
        s = _ints(call.args.get("stride"), n) or k
        p = _ints(call.args.get("padding", 0), n)
        d = _ints(call.args.get("dilation", 1), n)
        axes = _spatial_tail(call, n)
        if not any(p) and all(x == 1 for x in d):
            flat = _pool_flat_tokens(st, call.out_shape, axes, k, s)
            if flat is not None:
                return flat
        return _windows(st, call.out_shape, axes, k, s, p, d) or _mapped(
            st, call.out_shape, axes, lambda i, a, _: g.conv(a, k[i], s[i], p[i], d[i])
        )

    return rule


def _pool_flat_tokens(
    st: State,
    out_shape: Sequence[int],
    axes: Sequence[int],
    k: Sequence[int],
    s: Sequence[int],
) -> State | None:
    """Pooling along a flattened ``(H, W)`` token axis in runs of ``k`` tokens (Next-ViT's
    sequence reduction, a 1-D pooling with kernel = stride): runs inside rows pool the last
    factor; runs that cross rows keep no map and are *mixed* (like attention, conservative).
    ``None`` when the op is not that."""
    flat = [a for a in axes if len(st.dims[a].factors) > 1 and st.dims[a].positional]
    if len(flat) != 1 or st.is_global:
        return None
    (a,) = flat
    i = list(axes).index(a)
    dim, last = st.dims[a], st.dims[a].factors[-1]
    others_identity = all(
        (k[j], s[j]) == (1, 1) and out_shape[b] == st.dims[b].size
        for j, b in enumerate(axes)
        if b != a
    )
    if dim.prefix or not last.positional or last.geom is None or k[i] != s[i]:
        return None
    if not others_identity:
        return None
    dims = list(st.dims)
    if last.size % k[i]:  # runs that cross rows: no map, each run reads parts of two rows
        dims[a] = _plain(int(out_shape[a]))
        return State(tuple(dims), mixed=True)
    pooled = Factor(last.size // k[i], last.axis, g.conv(last.geom, k[i], k[i]))
    dims[a] = Dim((*dim.factors[:-1], pooled))
    return replace(st, dims=tuple(dims))


def _windows(
    st: State,
    out_shape: Sequence[int],
    axes: Sequence[int],
    k: Sequence[int],
    s: Sequence[int],
    p: Sequence[int],
    d: Sequence[int],
) -> State | None:
    """A convolution or pooling over windows stacked in the batch (each padded at its own
    border), or ``None`` when ``axes`` are not positions inside windows."""
    if st.is_global or not any(st.dims[a].spatial and not st.dims[a].positional for a in axes):
        return None
    dims = list(st.dims)
    for i, a in enumerate(axes):
        f = dims[a].factors[0]
        if len(dims[a].factors) != 1 or dims[a].prefix or not f.inner or f.geom is None:
            raise _OpError("convolves windows laid out in a way that cannot be followed")
        size = int(out_shape[a])
        whole = _join(f, f.split in st.windows).geom
        assert whole is not None
        geom = g.windowed_conv(whole, f.size, size, k[i], s[i], p[i], d[i])
        dims[a] = Dim((Factor(size, f.axis, geom, f.split, inner=True),))
    for a, dim in enumerate(dims):
        if a not in axes and dim.size != out_shape[a]:
            if dim.spatial:
                raise _OpError("changes the size of a spatial axis it is not known to act on")
            dims[a] = _plain(int(out_shape[a]))
    return State(tuple(dims))


def _adaptive_rule(n: int) -> _Rule:
    def rule(call: _Call) -> State:
        st = call.source
        axes = _spatial_tail(call, n)
        shape_in = call.shape("self")
        if all(call.out_shape[d] == 1 for d in axes) and any(st.dims[d].spatial for d in axes):
            return _flat(call.out_shape, is_global=True)
        return _mapped(
            st, call.out_shape, axes, lambda i, a, size: g.adaptive_pool(a, shape_in[axes[i]], size)
        )

    return rule


def _upsample_rule(mode: str, n: int) -> _Rule:
    def rule(call: _Call) -> State:
        st = call.source
        name = "input" if "input" in call.args else "self"
        axes = _spatial_tail(call, n)
        shape_in = call.shape(name)
        align = bool(call.args.get("align_corners") or False)
        factors = call.args.get("scale_factors")
        named = [
            call.args.get(k)
            for k in ("scales_d", "scales_h", "scales_w", "scales")
            if k in call.args
        ]

        def scale(i: int, size_in: int, size_out: int) -> Fraction:
            if align:
                return Fraction(size_in - 1, size_out - 1) if size_out > 1 else Fraction(size_in)
            given = factors[i] if factors else (named[i] if i < len(named) else None)
            if given is not None and given > 0:
                return 1 / g.as_fraction(given)
            return Fraction(size_in, size_out)

        return _mapped(
            st,
            call.out_shape,
            axes,
            lambda i, a, size: g.interpolate(
                a, mode, scale(i, shape_in[axes[i]], size), align_corners=align, units=size
            ),
        )

    return rule


def _rule_pixel_shuffle(inverse: bool) -> _Rule:
    def rule(call: _Call) -> State:
        st = call.source
        r = int(call.args["downscale_factor" if inverse else "upscale_factor"])
        axes = _spatial_tail(call, 2)
        st = replace(st, dims=(*st.dims[:-3], _plain(call.out_shape[-3]), *st.dims[-2:]))
        return _mapped(
            st, call.out_shape, axes, lambda i, a, _: g.pixel_shuffle(a, r, inverse=inverse)
        )

    return rule


def _rule_pad(call: _Call) -> State:
    st = call.source
    pad = _ints(call.args.get("pad", call.args.get("padding")), 1)
    n = len(pad) // 2
    rank = len(call.shape("self"))
    left = {rank - 1 - i: pad[2 * i] for i in range(n)}
    dims = list(st.dims)
    scrambled = []
    for a in list(left):
        dim = dims[a]
        if (
            dim.positional
            and dim.simple is None
            and left[a] >= 0
            and dim.size + left[a] == (call.out_shape[a])
        ):  # a token axis padded in front only: extra (zero) tokens, like CoaT's
            dims[a] = Dim(dim.factors, dim.prefix + left.pop(a))
        elif dim.spatial and any(f.axis is None for f in dim.factors):
            # Positions flattened together with other values (the skew that turns relative
            # position logits into absolute ones, HaloNet's): where each value goes next is not
            # followed, so the positions mix (inside their blocks, or across the map).
            scrambled.append(dim)
            dims[a] = _plain(int(call.out_shape[a]))
            del left[a]
    axes = list(left)
    out = _mapped(
        replace(st, dims=tuple(dims)),
        call.out_shape,
        axes,
        lambda i, a, _: g.shift(a, -left[axes[i]]),
    )
    return _mixing(out, scrambled)


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _rule_slice(call: _Call) -> State | None:
    st = call.source
    shape = call.shape("self")
    d = _norm_dim(int(call.args["dim"]), len(shape))
    size = shape[d]
    start = call.args.get("start") or 0
    start = max(0, min(size, start + size if start < 0 else start))
    step = int(call.args.get("step") or 1)
    dim = st.dims[d]
    if call.out_shape[d] == 0:  # an empty slice (no extra tokens to take): nothing is read
        return None
    if start == 0 and step == 1 and call.out_shape[d] == size:
        return st
    if not dim.spatial:
        return _mapped(st, call.out_shape, [d], lambda i, a, _: a)
    if dim.prefix:
        n_out = call.out_shape[d]
        if start == dim.prefix and step == 1 and n_out == size - dim.prefix:
            return replace(st, dims=(*st.dims[:d], Dim(dim.factors), *st.dims[d + 1 :]))
        if start + n_out * step <= dim.prefix:  # only the extra tokens (class, register)
            return _flat(call.out_shape, is_global=True) if st.mixed else None
        raise _OpError("slices a token axis")
    return _mapped(st, call.out_shape, [d], lambda i, a, _: g.take(a, start, step))


def _rule_select(call: _Call) -> State | None:
    st = call.source
    shape = call.shape("self")
    d = _norm_dim(int(call.args["dim"]), len(shape))
    dim = st.dims[d]
    rest = st.dims[:d] + st.dims[d + 1 :]
    if st.is_global or not dim.spatial:
        return replace(st, dims=rest)
    index = _norm_dim(int(call.args["index"]), shape[d])
    if dim.prefix and index < dim.prefix:
        return _flat(call.out_shape, is_global=True) if st.mixed else None
    raise _OpError("selects one position of a spatial axis")


def _merge_dims(dims: Sequence[Dim], size: int) -> Dim:
    """The dimension of a result fed by several inputs' dimensions of equal size (add, cat)."""
    spatial = [d for d in dims if d.spatial]
    if not spatial:
        return _plain(size)
    first = spatial[0]
    if len(spatial) == 1 or all(d == first for d in spatial[1:]):
        return first
    shape = [(f.size, f.axis) for f in first.factors]
    if any(
        [(f.size, f.axis) for f in d.factors] != shape or d.prefix != first.prefix for d in spatial
    ):
        raise _OpError("combines spatial axes laid out differently")
    factors = []
    for i, f in enumerate(first.factors):
        geoms = [d.factors[i].geom for d in spatial]
        same_split = all(
            (d.factors[i].split, d.factors[i].inner) == (f.split, f.inner) for d in spatial
        )
        if f.inner and not same_split:
            raise _OpError("combines windows cut differently")
        if f.axis is None or any(x is None for x in geoms) or all(x == f.geom for x in geoms):
            factors.append(f)
        else:
            units = f.size * f.split.blocks if f.inner and f.split else f.size
            union = g.union([x for x in geoms if x], units)
            factors.append(
                Factor(f.size, f.axis, union, f.split, f.inner)
                if same_split
                else Factor(f.size, f.axis, union)
            )
    return Dim(tuple(factors), first.prefix)


def _broadcast(inputs: Sequence[tuple[State, tuple[int, ...]]], out_shape: Sequence[int]) -> State:
    live = [(s, shp) for s, shp in inputs if not s.is_global]
    if not live:
        return _flat(out_shape, is_global=True)
    rank = len(out_shape)
    dims = []
    for d in range(rank):
        feeding = []
        for s, shp in live:
            k = d - (rank - len(shp))
            if k >= 0 and shp[k] == out_shape[d]:
                feeding.append(s.dims[k])
        dims.append(_merge_dims(feeding, int(out_shape[d])))
    return State(tuple(dims))


def _rule_cat(call: _Call, stack: bool = False) -> State:
    tensors = [t for t in call.args["tensors"] if stack or t.dim() > 1 or t.numel() > 0]
    rank = tensors[0].dim() + (1 if stack else 0)
    d = _norm_dim(int(call.args.get("dim") or 0), rank)
    states = [(call.tracer.states.get(t), t) for t in tensors]
    live = [(s, t) for s, t in states if s is not None and not s.is_global]
    if not live:
        return _flat(call.out_shape, is_global=True)
    out = call.out_shape
    if stack:
        live_dims = [(*s.dims[:d], _plain(1), *s.dims[d:]) for s, _ in live]
    else:
        live_dims = [s.dims for s, _ in live]
    dims = []
    for k in range(rank):
        if k != d:
            dims.append(_merge_dims([ld[k] for ld in live_dims], out[k]))
            continue
        if not any(ld[k].spatial for ld in live_dims):
            dims.append(_plain(out[k]))
            continue
        # Extra tokens (class, register) in front of one token grid: ViT-style prefixes.
        grid = [i for i, (s, _) in enumerate(states) if s is not None and s.dims[d].spatial]
        if len(grid) != 1 or grid[0] != len(states) - 1:
            raise _OpError("concatenates along a spatial axis")
        last = states[-1][0]
        assert last is not None
        dim = last.dims[d]
        before = sum(t.shape[d] for _, t in states[:-1])
        dims.append(Dim(dim.factors, dim.prefix + before))
    return State(tuple(dims))


def _reduce(
    st: State, shape: Sequence[int], dims_arg: Any, keepdim: bool, out_shape: Sequence[int]
) -> State:
    rank = len(shape)
    if dims_arg is None or (isinstance(dims_arg, list | tuple) and len(dims_arg) == 0):
        reduced = set(range(rank))
    else:
        reduced = {_norm_dim(int(x), rank) for x in _ints(dims_arg, 1)}
    windows = _windowed([st.dims[d] for d in reduced])
    if st.is_global or windows is None:
        return _flat(out_shape, is_global=True)
    kept = [
        (_plain(1) if d in reduced else st.dims[d])
        for d in range(rank)
        if keepdim or d not in reduced
    ]
    if len(kept) != len(out_shape) or not any(d.spatial for d in kept):
        return _flat(out_shape, is_global=True)
    return State(tuple(kept), windows=windows)


def _rule_reduce(call: _Call) -> State:
    st = call.source
    dims_arg = call.args.get("dim")
    return _reduce(st, call.shape("self"), dims_arg, bool(call.args.get("keepdim")), call.out_shape)


def _rule_along(call: _Call) -> State:
    """Shape-preserving ops that mix values along ``dim`` (softmax, cumsum, sort)."""
    st = call.source
    d = _norm_dim(int(call.args["dim"]), len(call.shape("self")))
    return _mixing(st, [st.dims[d]])


def _mixing(st: State, dims: Sequence[Dim]) -> State:
    """``st`` after values were mixed along ``dims``: inside blocks or across the image."""
    windows = _windowed(dims)
    if windows is None:
        return replace(st, mixed=True)
    return replace(st, windows=st.windows | windows) if windows else st


def _attend(st: State, keys: State, dims: Sequence[Dim]) -> State:
    """Queries ``st`` after a product with ``keys`` over (or keeping) the positions ``dims``
    that are inside sliding windows (HaloNet's halo attention, VOLO's outlook attention).

    The query of block ``o`` (a batch dim, matched with the dim of ``keys`` that holds window
    ``o``) reads the whole window: its block takes the window's position and extent, and the
    positions inside a query block (the inner factor of its split) add the window's extent to
    their own. A score that keeps the window's positions as columns (``q @ k^T``) is counted as
    reading the whole window: exact once a softmax has mixed them, as attention does.
    """
    splits = {f.split for dim in dims for f in dim.factors if f.split and f.split.sliding}
    out = list(st.dims)
    lead = len(st.dims) - len(keys.dims)
    for split in splits:
        matches = [
            (d + lead, j)
            for d, dim in enumerate(keys.dims[:-2])
            for j, f in enumerate(dim.factors)
            if f.split == split and not f.inner
        ]
        if len(matches) != 1 or matches[0][0] < 0:
            raise _OpError("attends to sliding windows it cannot match with its queries")
        d, j = matches[0]
        query = out[d].factors[j] if j < len(out[d].factors) else None
        window = split.extent()
        replaced: dict[Factor, Factor] = {}
        try:
            if split.blocks == 1 and (query is None or query.axis is None):
                # One window for the whole map: every query position reads it.
                for dim in out:
                    for f in dim.factors:
                        if f.axis == split.axis and f.positional and f.geom:
                            replaced[f] = replace(f, geom=g.cover(f.geom, window, f.size))
            else:
                if query is None or query.axis != split.axis or query.size != split.blocks:
                    raise _OpError("attends to sliding windows it cannot match with its queries")
                block = query.split
                if query.geom is None or query.inner or (block is not None and block.sliding):
                    raise _OpError("attends to sliding windows from windows")
                replaced[query] = replace(query, geom=g.cover(window, query.geom))
                for dim in out:
                    for f in dim.factors:
                        if block is not None and f.inner and f.split == block and f.geom:
                            replaced[f] = replace(f, geom=g.cover(f.geom, window, f.size))
        except ValueError as err:
            raise _OpError("attends to sliding windows on another grid") from err
        out = [replace(dim, factors=tuple(replaced.get(f, f) for f in dim.factors)) for dim in out]
    return replace(st, dims=tuple(out))


def _matmul_rule(names: tuple[str, str], batched: bool) -> _Rule:
    def rule(call: _Call) -> State:
        a, b = (call.state(n) for n in names)
        width = _plain(call.out_shape[-1])
        # Global context (linear attention's ``k^T @ v``, summed over every token) is a per-image
        # constant by the convention of docs/geometry.md: the product keeps the other's geometry.
        if a is not None and b is not None and a.is_global != b.is_global:
            a, b = (None, b) if a.is_global else (a, None)
        if a is not None and b is not None:  # both from the image: attention, positions mix
            if a.is_global:
                return _flat(call.out_shape, is_global=True)
            if b.dims[-1].spatial and len(b.dims) > 1:  # positions are b's columns
                width = b.dims[-1]
            st = State((*a.dims[:-1], width))
            if not any(d.spatial for d in st.dims):
                return _flat(call.out_shape, is_global=True)
            st = _mixing(st, [a.dims[-1], b.dims[-2]])
            return _attend(st, b, [a.dims[-1], *b.dims[-2:]])
        if (a and a.is_global) or (b and b.is_global):
            return _flat(call.out_shape, is_global=True)
        # A product over a dim that holds positions: fully connected (global), unless the
        # positions are those inside blocks (space-to-depth, patch merging).
        inner = _windowed([a.dims[-1]] if a is not None else [b.dims[-2]] if b else [])
        if inner is None:
            return _flat(call.out_shape, is_global=True)
        if a is not None:
            return State((*a.dims[:-1], width), windows=inner)
        assert b is not None
        lead = b.dims[:-2] if batched else ()
        return State((*lead, _plain(call.out_shape[-2]), b.dims[-1]), windows=inner)

    return rule


def _rule_permute(call: _Call) -> State:
    st = call.source
    order = [_norm_dim(int(x), len(st.dims)) for x in call.args["dims"]]
    return replace(st, dims=tuple(st.dims[i] for i in order))


def _rule_transpose(call: _Call) -> State:
    st = call.source
    rank = len(st.dims)
    if rank < 2:
        return st
    a = _norm_dim(int(call.args.get("dim0", 0)), rank)
    b = _norm_dim(int(call.args.get("dim1", 1)), rank)
    dims = list(st.dims)
    dims[a], dims[b] = dims[b], dims[a]
    return replace(st, dims=tuple(dims))


def _rule_unsqueeze(call: _Call) -> State:
    st = call.source
    d = _norm_dim(int(call.args["dim"]), len(st.dims) + 1)
    return replace(st, dims=(*st.dims[:d], _plain(1), *st.dims[d:]))


def _rule_expand(call: _Call) -> State:
    st = call.source
    out = call.out_shape
    lead = len(out) - len(st.dims)
    dims = [_plain(int(s)) for s in out[:lead]]
    for k, dim in enumerate(st.dims):
        size = int(out[lead + k])
        dims.append(dim if dim.size == size else _plain(size))
    return State(tuple(dims), st.is_global)


def _rule_view(call: _Call) -> State:
    """Reshape: regroup the factors of the input dimensions into the output dimensions."""
    st = call.source
    out = [int(s) for s in call.out_shape]
    if st.is_global:
        return _flat(out, is_global=True)
    if tuple(d.size for d in st.dims) == tuple(out):
        return st
    pieces: list[Dim] = []  # atoms: one factor each, or a whole prefixed token dim
    for dim in st.dims:
        if dim.prefix:
            pieces.append(dim)
        else:
            pieces.extend(Dim((f,)) for f in dim.factors if f.size != 1 or f.axis)
    dims: list[Dim] = []
    i = 0
    for k, size in enumerate(out):
        if size == 1 and not (i < len(pieces) and pieces[i].size == 1):
            dims.append(_plain(1))
            continue
        taken: list[Dim] = []
        total = 1
        while total < size or (size == 1 and not taken):
            if i >= len(pieces):
                raise _OpError("reshapes in a way that cannot be followed")
            piece = pieces[i]
            if total * piece.size > size:  # split this piece
                need = size // total
                if size % total or piece.size % need:
                    raise _OpError("reshapes in a way that cannot be followed")
                if piece.spatial:  # into blocks: outer and inner factors
                    f = piece.factors[0]
                    if piece.prefix or f.geom is None:
                        raise _OpError("splits a token axis or a window")
                    outer, inner = Split(str(f.axis), f.geom, need).factors(f.size)
                    taken.append(Dim((outer,)))
                    pieces[i] = Dim((inner,))
                else:
                    taken.append(_plain(need))
                    pieces[i] = _plain(piece.size // need)
                total *= need
                break
            taken.append(piece)
            total *= piece.size
            i += 1
        # A size-1 spatial factor (a map one pixel wide) stays with the dims before it, so that
        # a linear layer over the channels that follow does not read it as mixing positions.
        next_size = out[k + 1] if k + 1 < len(out) else None
        while i < len(pieces) and pieces[i].size == 1 and pieces[i].spatial and next_size != 1:
            taken.append(pieces[i])
            i += 1
        if len(taken) == 1:
            dims.append(taken[0])
        elif any(p.prefix for p in taken):
            raise _OpError("merges a token axis with another")
        else:
            factors = _fuse([f for p in taken for f in p.factors], st.windows)
            dims.append(Dim(factors) if any(f.axis for f in factors) else _plain(size))
    if any(p.spatial for p in pieces[i:]):
        raise _OpError("reshapes in a way that cannot be followed")
    return State(tuple(dims))


def _rule_split(call: _Call) -> list[State]:
    st = call.source
    shape = call.shape("self")
    d = _norm_dim(int(call.args.get("dim") or 0), len(shape))
    outs: list[torch.Tensor] = list(call.out)
    if st.is_global or not st.dims[d].spatial:
        return [
            _mapped(st, tuple(o.shape), [d], lambda i, a, _: a)
            if not st.is_global
            else _flat(o.shape, is_global=True)
            for o in outs
        ]
    result, start = [], 0
    for o in outs:
        result.append(_mapped(st, tuple(o.shape), [d], _shifter(start)))
        start += o.shape[d]
    return result


def _shifter(first: int) -> Callable[[int, g.Axis, int], g.Axis]:
    return lambda i, a, size: g.shift(a, first)


def _rule_unbind(call: _Call) -> list[State]:
    st = call.source
    d = _norm_dim(int(call.args.get("dim") or 0), len(st.dims))
    if st.dims[d].spatial and not st.is_global:
        raise _OpError("unbinds a spatial axis")
    return [State(st.dims[:d] + st.dims[d + 1 :], st.is_global) for _ in call.out]


def _rule_roll(call: _Call) -> State:
    st = call.source
    rank = len(st.dims)
    shifts = _ints(call.args["shifts"], 1)
    dims = [_norm_dim(x, rank) for x in _ints(call.args.get("dims"), 1)]
    if not dims:
        raise _OpError("rolls a flattened tensor")
    return _mapped(st, call.out_shape, dims, lambda i, a, _: g.shift(a, -shifts[i]))


def _rule_first(call: _Call) -> State | None:
    """Output 0 has the geometry of the first tensor argument (norms, copies, dropout)."""
    for value in call.args.values():
        if isinstance(value, torch.Tensor):
            st = call.tracer.states.get(value)
            if st is not None and tuple(value.shape) == call.out_shape:
                return st
            return _flat(call.out_shape, is_global=True) if st is not None else None
    return None


def _rule_copy(call: _Call) -> State | None:
    src = call.state("src")
    if src is None:
        return None
    return _broadcast([(src, call.shape("src"))], call.out_shape)


def _rule_global(call: _Call) -> State:
    return _flat(call.out_shape, is_global=True)


def _rule_attention(call: _Call) -> State:
    """Fused attention: the output keeps the query's positions, each mixing all of them."""
    query = call.state("query")
    if query is not None and not query.is_global and tuple(call.shape("query")) == call.out_shape:
        key = call.state("key")
        return _mixing(query, [query.dims[-2], *(key.dims[-2:] if key else ())])
    return _flat(call.out_shape, is_global=True)


def _rule_rnn(call: _Call) -> list[State]:
    """A recurrent layer over positions: each output step reads the steps before it (or after
    it, or all of them when bidirectional); the final hidden states read the whole sequence."""
    st = call.source
    if "reverse" in call.args:  # one direction of one layer, always sequence-first
        seq, direction = 0, "reverse" if call.args["reverse"] else "forward"
    else:
        seq = 1 if call.args.get("batch_first") else 0
        direction = "both" if call.args.get("bidirectional") else "forward"
    dim = st.dims[seq]
    if st.is_global or not dim.spatial:
        out = State((*st.dims[:-1], _plain(call.out_shape[-1])), st.is_global)
    elif (f := dim.simple) is not None and f.geom is not None:
        dims = [*st.dims[:-1], _plain(call.out_shape[-1])]
        dims[seq] = Dim((Factor(f.size, f.axis, g.scan(f.geom, f.size, direction)),))
        out = State(tuple(dims))
    else:
        raise _OpError("runs a recurrence over a flattened or token axis")
    rest = [_flat(o.shape, is_global=True) for o in _tensors(call.out)[1:]]
    return [out, *rest]


def _rule_unfold(call: _Call) -> State:
    """``Tensor.unfold(dim, size, step)``: sliding windows along one axis (HaloNet's halo
    windows): which window stays in place, the position inside it becomes the last dim."""
    st = call.source
    d = _norm_dim(int(call.args["dimension"]), len(st.dims))
    size, step = int(call.args["size"]), int(call.args["step"])
    n = int(call.out_shape[d])
    if st.is_global:
        return _flat(call.out_shape, is_global=True)
    dim = st.dims[d]
    if not dim.spatial:
        return State((*st.dims[:d], _plain(n), *st.dims[d + 1 :], _plain(size)), windows=st.windows)
    if dim.simple is None:
        raise _OpError("cuts windows out of a token axis")
    outer, inner = _sliding(dim.simple, n * size, size, step)
    return State(
        (*st.dims[:d], Dim((outer,)), *st.dims[d + 1 :], Dim((inner,))), windows=st.windows
    )


def _rule_im2col(call: _Call) -> State:
    """``F.unfold``: sliding windows of both axes (TNT's patches, VOLO's outlook windows); the
    positions inside a window join the channels, the windows are the last dim."""
    st = call.source
    k, s = _ints(call.args["kernel_size"], 2), _ints(call.args["stride"], 2)
    p, d = _ints(call.args["padding"], 2), _ints(call.args["dilation"], 2)
    fy, fx = st.dims[-2].simple, st.dims[-1].simple
    if st.is_global:
        return _flat(call.out_shape, is_global=True)
    if d != [1, 1] or fy is None or fx is None or st.dims[-3].spatial:
        raise _OpError("unfolds dilated windows, or windows of a token axis")
    outer, inner = [], []
    for f, i in ((fy, 0), (fx, 1)):
        o, j = _sliding(f, f.size, k[i], s[i], p[i])
        outer.append(o)
        inner.append(j)
    channels = Dim((*st.dims[-3].factors, *inner))
    return State((*st.dims[:-3], channels, Dim(tuple(outer))), windows=st.windows)


def _rule_col2im(call: _Call) -> State:
    """``F.fold``: each window's values summed back into place. The patches of an unfold
    (non-overlapping) join back; otherwise a fold is a transposed convolution over the windows,
    exact when the values of a window do not depend on where in it they go (the positions
    inside windows were mixed, or never held)."""
    st = call.source
    k, s = _ints(call.args["kernel_size"], 2), _ints(call.args["stride"], 2)
    p, d = _ints(call.args["padding"], 2), _ints(call.args["dilation"], 2)
    channels, patches = st.dims[-2], st.dims[-1]
    inner, outer = channels.factors[-2:], patches.factors
    pairs = list(zip(inner, outer, strict=False)) if len(inner) == len(outer) == 2 else []
    joins = (
        k == s
        and not any(p)
        and bool(pairs)
        and all(i.inner and o.split == i.split and not o.inner for i, o in pairs)
        and [o.size * i.size for i, o in pairs] == list(call.out_shape[-2:])
    )
    if joins:
        rest = Dim(channels.factors[:-2]) if channels.factors[:-2] else _plain(call.out_shape[-3])
        y, x = (Dim((_join(i, i.split in st.windows),)) for i in inner)
        return State((*st.dims[:-2], rest, y, x))
    held = [f for f in channels.factors if f.axis is not None]
    if any(f.split is None or f.split not in st.windows for f in held):
        raise _OpError("folds windows whose values depend on where in the window they go")
    if [f.axis if f.positional else None for f in outer] != ["y", "x"]:
        raise _OpError("folds windows that are not laid out as a map")
    axes = []
    for i, f in enumerate(outer):
        assert f.geom is not None
        geom = g.transposed_conv(f.geom, k[i], s[i], p[i], d[i])
        axes.append(Dim((Factor(int(call.out_shape[-2 + i]), f.axis, geom),)))
    y, x = axes
    return State((*st.dims[:-2], _plain(call.out_shape[-3]), y, x), windows=st.windows)


def _rule_index(call: _Call) -> State:
    """``x[:, :, perm]``: one integer index tensor on a dim that holds no positions (CSATv2's
    zigzag order of DCT coefficients) reorders values, not positions; anything else may move
    values between positions."""
    st = call.source
    used = [(d, t) for d, t in enumerate(call.args["indices"]) if t is not None]
    if st.is_global:
        return _flat(call.out_shape, is_global=True)
    if len(used) == 1:
        d, index = used[0]
        if (
            not st.dims[d].spatial
            and not index.dtype.is_floating_point
            and index.dtype != torch.bool
            and call.tracer.states.get(index) is None
        ):
            dims = (*st.dims[:d], *(_plain(int(n)) for n in index.shape), *st.dims[d + 1 :])
            if _shape_of(State(dims)) == call.out_shape:
                return State(dims)
    raise _OpError("moves values between positions")


def _rule_constant(call: _Call) -> None:
    return None


def _rule_moves(call: _Call) -> State:
    """Ops that may move values between positions (flip, gather, repeat, grid sampling).

    Along non-spatial dims (a channel shuffle, repeating channels) positions are untouched;
    along a spatial dim the geometry is unknown.
    """
    name = "self" if "self" in call.args else "input"
    st = call.state(name)
    if st is not None and not st.is_global:
        rank = len(st.dims)
        if "repeats" in call.args:
            reps = _ints(call.args["repeats"], 1)
            dims = [d for d in range(rank) if reps[len(reps) - rank + d] != 1]
        else:
            dims = (
                [
                    _norm_dim(int(d), rank)
                    for d in _ints(call.args.get("dim", call.args.get("dims")), 1)
                ]
                if ("dim" in call.args or "dims" in call.args)
                else list(range(rank))
            )
        if not any(st.dims[d].spatial for d in dims):
            return _mapped(st, call.out_shape, [], lambda i, a, _: a)
    raise _OpError("moves values between positions")


_RULES: dict[str, _Rule] = {
    "convolution": _rule_conv,
    "_adaptive_avg_pool2d": _adaptive_rule(2),
    "adaptive_max_pool2d": _adaptive_rule(2),
    "_adaptive_avg_pool3d": _adaptive_rule(3),
    "adaptive_max_pool3d": _adaptive_rule(3),
    "adaptive_max_pool1d": _adaptive_rule(1),
    "pixel_shuffle": _rule_pixel_shuffle(False),
    "pixel_unshuffle": _rule_pixel_shuffle(True),
    "constant_pad_nd": _rule_pad,
    "slice": _rule_slice,
    "select": _rule_select,
    "cat": _rule_cat,
    "stack": lambda call: _rule_cat(call, stack=True),
    "permute": _rule_permute,
    "transpose": _rule_transpose,
    "t": _rule_transpose,
    "unsqueeze": _rule_unsqueeze,
    "expand": _rule_expand,
    "view": _rule_view,
    "_unsafe_view": _rule_view,
    "reshape": _rule_view,
    "_reshape_alias": _rule_view,
    "squeeze": _rule_view,
    "flatten": _rule_view,
    "unflatten": _rule_view,
    "split": _rule_split,
    "split_with_sizes": _rule_split,
    "unsafe_split": _rule_split,
    "unbind": _rule_unbind,
    "roll": _rule_roll,
    "copy_": _rule_copy,
    "copy": _rule_copy,
    "mm": _matmul_rule(("self", "mat2"), False),
    "addmm": _matmul_rule(("mat1", "mat2"), False),
    "bmm": _matmul_rule(("self", "mat2"), True),
    "baddbmm": _matmul_rule(("batch1", "batch2"), True),
    "matmul": _matmul_rule(("self", "other"), True),
    "mv": _matmul_rule(("self", "vec"), False),
    "embedding": _rule_global,
    "im2col": _rule_im2col,
    "unfold": _rule_unfold,
    "index": _rule_index,
    "col2im": _rule_col2im,
    "mkldnn_rnn_layer": _rule_rnn,
    "lstm": _rule_rnn,
    "gru": _rule_rnn,
    "rnn_tanh": _rule_rnn,
    "rnn_relu": _rule_rnn,
    "zero_": _rule_constant,
    "fill_": _rule_constant,
    "normal_": _rule_constant,
    "uniform_": _rule_constant,
    "empty_like": _rule_constant,
    "zeros_like": _rule_constant,
    "ones_like": _rule_constant,
    "full_like": _rule_constant,
    "rand_like": _rule_constant,
    "randn_like": _rule_constant,
}
for _n in (1, 2, 3):
    for _op in (f"max_pool{_n}d", f"max_pool{_n}d_with_indices", f"avg_pool{_n}d"):
        _RULES[_op] = _pool_rule(_n)
    for _op in (f"reflection_pad{_n}d", f"replication_pad{_n}d", "_pad_circular"):
        _RULES[_op] = _rule_pad
for _n, _modes in {1: ("linear",), 2: ("bilinear", "bicubic"), 3: ("trilinear",)}.items():
    _RULES[f"upsample_nearest{_n}d"] = _upsample_rule("nearest", _n)
    _RULES[f"_upsample_nearest_exact{_n}d"] = _upsample_rule("nearest-exact", _n)
    for _m in _modes:
        _RULES[f"upsample_{_m}{_n}d"] = _upsample_rule("cubic" if _m == "bicubic" else "linear", _n)
for _op in (
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "logsumexp",
    "norm",
    "linalg_vector_norm",
    "prod",
    "argmax",
    "argmin",
    "any",
    "all",
    "nansum",
    "nanmean",
    "median",
    "nanmedian",
    "mode",
    "count_nonzero",
    "aminmax",
):
    _RULES[_op] = _rule_reduce
for _op in (
    "_softmax",
    "_log_softmax",
    "softmax",
    "log_softmax",
    "_safe_softmax",
    "cumsum",
    "cumprod",
    "logcumsumexp",
    "cummax",
    "cummin",
    "sort",
    "argsort",
    "topk",
):
    _RULES[_op] = _rule_along
for _op in (
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "native_layer_norm",
    "native_group_norm",
    "_fused_rms_norm",
    "rms_norm",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "clone",
    "alias",
    "detach",
    "_to_copy",
    "lift_fresh",
    "contiguous",
    "native_dropout",
    "dropout",
    "feature_dropout",
    "alpha_dropout",
    "as_strided_",
    "_conj",
    "conj",
    "resolve_conj",
    "resolve_neg",
    "to",
    "type_as",
):
    _RULES[_op] = _rule_first
for _op in (
    "flip",
    "rot90",
    "index_select",
    "gather",
    "scatter",
    "scatter_add",
    "scatter_reduce",
    "index_put",
    "index_add",
    "take",
    "take_along_dim",
    "masked_scatter",
    "grid_sampler_2d",
    "grid_sampler_3d",
    "grid_sampler",
    "_upsample_bilinear2d_aa",
    "_upsample_bicubic2d_aa",
    "repeat",
    "as_strided",
    "nonzero",
    "masked_select",
    "diagonal",
    "tril",
    "triu",
):
    _RULES[_op] = _rule_moves
_ATTENTION = (
    "scaled_dot_product",
    "flash_attention",
    "efficient_attention",
    "multi_head_attention",
    "_cudnn_attention",
)


# ---------------------------------------------------------------------------------------------


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.is_meta else value.to("meta")
    if isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_to_meta(v) for v in value)
    return value


_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
# Elementwise ops that PyTorch does not tag ``pointwise``.
_ELEMENTWISE = {"hardswish", "log_sigmoid_forward", "_prelu_kernel", "rrelu_with_noise"}
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


class _States:
    """Tensor -> State. Meta tensors hold no memory, so the meta run keeps every tensor it gives
    a state alive (their ids stay unique: a plain dict by id is enough); the real-tensor
    fallback run holds them weakly, so that activations are freed."""

    def __init__(self, meta: bool) -> None:
        self._ids: dict[int, tuple[torch.Tensor, State]] | None = {} if meta else None
        self._weak = WeakIdKeyDictionary()

    def get(self, t: torch.Tensor) -> State | None:
        if self._ids is not None:
            entry = self._ids.get(id(t))
            return entry[1] if entry is not None else None
        st: State | None = self._weak.get(t)  # type: ignore[no-untyped-call]
        return st

    def __setitem__(self, t: torch.Tensor, st: State) -> None:
        if self._ids is not None:
            self._ids[id(t)] = (t, st)
        else:
            self._weak[t] = st

    def pop(self, t: torch.Tensor) -> None:
        if self._ids is not None:
            self._ids.pop(id(t), None)
        else:
            self._weak.pop(t, None)  # type: ignore[no-untyped-call]


class _Tracer(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, meta: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.meta = meta
        self.states = _States(meta)
        self.stack: list[str] = []
        self.warnings: dict[str, None] = {}
        self.ops: dict[Any, _Op] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = self.ops.get(func)
        if op is None:
            op = self.ops[func] = _Op.of(func)
        kwargs = kwargs or {}
        if op.decompose:
            # Composite ops reach the mode undecomposed in inference mode or with inference
            # tensors: follow their decomposition instead of guessing.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        if self.meta and any(t.is_meta for t in tensors):
            out = _meta_shortcut(op, args)
            if out is None:
                args = tuple(_to_meta(a) for a in args)
                kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        states = [self.states.get(t) for t in tensors]
        if any(s is not None for s in states):  # else: weights, constants
            self.record(
                op.name,
                out,
                states,
                lambda: self._apply(func, op, args, kwargs, out, tensors, states),
            )
        return out

    def record(
        self, name: str, out: Any, states: Sequence[State | None], derive: Callable[[], Any]
    ) -> None:
        """Give the outputs of op ``name`` their states; ``derive`` applies the op's rule."""
        if all(s is None for s in states):
            return
        outs = [
            o
            for o in (out if isinstance(out, tuple | list) else (out,))
            if isinstance(o, torch.Tensor)
        ]
        if not outs:
            return
        if any(s is not None and s.unknown for s in states):
            for o in outs:
                self.states[o] = _flat(o.shape, unknown=True)
            return
        try:
            result = derive()
        except _OpError as err:
            self._unknown(name, str(err), outs)
            return
        results = result if isinstance(result, list) else [result] + [None] * (len(outs) - 1)
        mixed = any(s is not None and s.mixed for s in states)
        windows = frozenset().union(*(s.windows for s in states if s is not None and s.windows))
        for o, st in zip(outs, results, strict=False):
            if st is None:
                self.states.pop(o)
            else:
                if not st.is_global and (
                    (mixed and not st.mixed) or not windows.issubset(st.windows)
                ):
                    st = replace(st, mixed=st.mixed or mixed, windows=st.windows | windows)
                self.states[o] = st
                self._check_size(o, st)

    def _apply(
        self,
        func: Any,
        op: _Op,
        args: Any,
        kwargs: Any,
        out: Any,
        tensors: list[torch.Tensor],
        states: list[State | None],
    ) -> Any:
        out0 = out[0] if isinstance(out, tuple | list) else out
        if op.rule is not None:
            return op.rule(_Call(func, _bind(func, args, kwargs), out, self))
        live = [(s, tuple(t.shape)) for s, t in zip(states, tensors, strict=True) if s is not None]
        if op.elementwise:
            try:
                return _broadcast(live, tuple(out0.shape))
            except _OpError:
                raise
            except Exception as err:  # shapes that do not broadcast: not elementwise after all
                raise _OpError("is not elementwise") from err
        if all(shp == tuple(out0.shape) for _, shp in live):
            raise _OpError("is not a known op (it keeps the shape but may mix positions)")
        raise _OpError("changes the shape of a spatial tensor in a way that is not known")

    def _unknown(self, name: str, why: str, outs: list[torch.Tensor]) -> None:
        where = f" in module {self.stack[-1]!r}" if self.stack else " in the model's forward"
        message = (
            f"receptive field unknown: op aten.{name}{where} {why}; layers after it are "
            "marked unknown"
        )
        if message not in self.warnings:
            self.warnings[message] = None
            warnings.warn(message, GeometryWarning, stacklevel=2)
        for o in outs:
            self.states[o] = _flat(o.shape, unknown=True)

    def _check_size(self, out: torch.Tensor, st: State) -> None:
        for dim in st.dims:
            for f in dim.factors:
                if f.axis and f.size == 0:
                    where = self.stack[-1] if self.stack else "(top level)"
                    raise InputSizeError(
                        f"the input is too small for this model: layer {where!r} "
                        f"collapses the {'height' if f.axis == 'y' else 'width'} to zero "
                        f"(output shape {tuple(out.shape)}); use a larger --input-size"
                    )


@contextmanager
def _hooks(
    modules: Sequence[tuple[str, nn.Module]], tracer: _Tracer, records: list[ModuleRecord]
) -> Iterator[None]:
    """Record each named module the first time it runs, keeping ``tracer.stack`` current.

    One global pair of module hooks serves every module (registering a pair per module costs
    more than the rest of a trace of a small model). Global hooks run before a module's own
    forward hooks, so a module that has forward hooks of its own (which may replace its output)
    gets a hook of its own, registered after them, as a plain ``register_forward_hook`` would.
    """
    names = {id(m): name for name, m in modules if name}
    seen: dict[int, ModuleRecord] = {}

    def pre(mod: nn.Module, args: Any) -> None:
        name = names.get(id(mod))
        if name is None:
            return
        tracer.stack.append(name)
        if id(mod) not in seen:
            is_leaf = next(mod.children(), None) is None
            rec = ModuleRecord(name, mod, len(records), is_leaf)
            seen[id(mod)] = rec
            records.append(rec)

    def post(mod: nn.Module, args: Any, output: Any) -> None:
        if tracer.stack:
            tracer.stack.pop()
        rec = seen[id(mod)]
        if rec.output is None:
            t = first_tensor(output)
            if t is not None:
                rec.output = t
                rec.state = tracer.states.get(t)

    own = {id(m) for name, m in modules if name and m._forward_hooks}

    def post_global(mod: nn.Module, args: Any, output: Any) -> None:
        if id(mod) in names and id(mod) not in own:
            post(mod, args, output)

    handles = [
        register_module_forward_pre_hook(pre),
        register_module_forward_hook(post_global),
    ]
    try:
        handles.extend(m.register_forward_hook(post) for name, m in modules if id(m) in own)
        yield
    finally:
        for h in handles:
            h.remove()


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


def _fast_forward(module: nn.Module, tracer: _Tracer) -> Callable[[torch.Tensor], Any] | None:
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
            tracer.record("mm", out, [st], lambda: _LINEAR_RULE(_Call(_MM, args, out, tracer)))
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
            func.overloadpacket.__name__, out, [st], lambda: rule(_Call(func, args, out, tracer))
        )
        return out

    return windowed


@contextmanager
def _shortcuts(modules: Sequence[tuple[str, nn.Module]], tracer: _Tracer) -> Iterator[None]:
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


def _input_state(shape: Sequence[int]) -> State:
    b, c, h, w = shape
    return State(
        (
            _plain(b),
            _plain(c),
            Dim((Factor(h, "y", g.IDENTITY),)),
            Dim((Factor(w, "x", g.IDENTITY),)),
        )
    )


def trace(model: nn.Module, input_size: tuple[int, int], in_channels: int) -> Trace:
    """Run ``model`` once on a ``(1, in_channels, H, W)`` input and follow the geometry.

    Runs on meta tensors (no arithmetic); when the model needs real values (data-dependent
    control flow, ops without meta kernels) it runs again on a real zero image.

    Raises:
        InputSizeError: A layer's output would have zero height or width.
        ModelError: The model raised for another reason (the message names the module).
    """
    shape = (1, in_channels, *input_size)
    try:
        return _run(model, shape, meta=True)
    except HypercolumnsError:
        raise
    except Exception:
        pass
    return _run(model, shape, meta=False)


def _run(model: nn.Module, shape: tuple[int, ...], meta: bool) -> Trace:
    records: list[ModuleRecord] = []
    modules = list(model.named_modules())
    tracer = _Tracer(meta)
    x = torch.empty(shape, device="meta") if meta else torch.zeros(shape)
    tracer.states[x] = _input_state(shape)
    try:
        # Outside inference mode: there, composite ops (aten.conv2d) are not decomposed.
        with (
            evaluating(model, modules=[m for _, m in modules]),
            torch.inference_mode(False),
            torch.no_grad(),
            _hooks(modules, tracer, records),
            _shortcuts(modules, tracer),
            tracer,
        ):
            model(x)
    except HypercolumnsError:
        raise
    except Exception as err:
        if meta:
            raise
        where = tracer.stack[-1] if tracer.stack else None
        culprit = ""
        if where:
            module = model.get_submodule(where)
            culprit = f" in module {where!r} ({type(module).__name__})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "too small" in first or "size per channel" in first or "Output size" in first:
            raise InputSizeError(
                f"the input {shape[2]}x{shape[3]} is too small for this model: it fails"
                f"{culprit}: {first}"
            ) from err
        raise ModelError(
            f"the model raised{culprit} on a {tuple(shape)} input: {type(err).__name__}: {first}"
        ) from err
    return Trace((shape[2], shape[3]), records, list(tracer.warnings), meta)
