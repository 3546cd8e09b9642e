"""Rules for ops that combine values: several inputs (elementwise, broadcasting), along dims
(reductions, softmax, sorting), or across tensors (matrix products, attention).

Combining maps takes the union of their geometries; mixing values along dims that hold
positions makes a map *mixed* (inside blocks when the positions are those inside windows);
summing over the positions of a map leaves *global* context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypercolumns.rf import geometry as g
from hypercolumns.rf.trace.rules.call import _Call, _ints, _mixing, _norm_dim, _Rule
from hypercolumns.rf.trace.rules.windows import _attend
from hypercolumns.rf.trace.state import (
    Dim,
    Factor,
    State,
    _flat,
    _OpError,
    _plain,
    _windowed,
)


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


def _rule_attention(call: _Call) -> State:
    """Fused attention: the output keeps the query's positions, each mixing all of them."""
    query = call.state("query")
    if query is not None and not query.is_global and tuple(call.shape("query")) == call.out_shape:
        key = call.state("key")
        return _mixing(query, [query.dims[-2], *(key.dims[-2:] if key else ())])
    return _flat(call.out_shape, is_global=True)


def _rule_global(call: _Call) -> State:
    return _flat(call.out_shape, is_global=True)
