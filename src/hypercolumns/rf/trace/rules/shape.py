"""Rules for ops that move dims or values without computing: reshapes, permutes, slices,
concatenation, splits, indexing, copies and constants.

A reshape regroups the factors of the input's dims (cutting a spatial axis into blocks, or
joining blocks back); extra tokens concatenated in front of a token grid become a ``prefix``;
an op that may move values between positions (flip, gather) is unknown along spatial dims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from hypercolumns.rf import geometry as g
from hypercolumns.rf.trace.rules.call import _Call, _ints, _mapped, _norm_dim, _shape_of
from hypercolumns.rf.trace.rules.mixing import _broadcast, _merge_dims
from hypercolumns.rf.trace.state import (
    Dim,
    Split,
    State,
    _flat,
    _fuse,
    _OpError,
    _plain,
)


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
            and call.states.get(index) is None
        ):
            dims = (*st.dims[:d], *(_plain(int(n)) for n in index.shape), *st.dims[d + 1 :])
            if _shape_of(State(dims)) == call.out_shape:
                return State(dims)
    raise _OpError("moves values between positions")


def _rule_cat(call: _Call, stack: bool = False) -> State:
    tensors = [t for t in call.args["tensors"] if stack or t.dim() > 1 or t.numel() > 0]
    rank = tensors[0].dim() + (1 if stack else 0)
    d = _norm_dim(int(call.args.get("dim") or 0), rank)
    states = [(call.states.get(t), t) for t in tensors]
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


def _rule_first(call: _Call) -> State | None:
    """Output 0 has the geometry of the first tensor argument (norms, copies, dropout)."""
    for value in call.args.values():
        if isinstance(value, torch.Tensor):
            st = call.states.get(value)
            if st is not None and tuple(value.shape) == call.out_shape:
                return st
            return _flat(call.out_shape, is_global=True) if st is not None else None
    return None


def _rule_copy(call: _Call) -> State | None:
    src = call.state("src")
    if src is None:
        return None
    return _broadcast([(src, call.shape("src"))], call.out_shape)


def _rule_constant(call: _Call) -> None:
    return None
