"""Rules for windows: blocks cut by reshapes, sliding windows (``unfold``/``fold``), and
convolutions and attention over them.

A convolution or pooling over windows stacked in the batch pads each window at its own border;
``Tensor.unfold`` and ``F.unfold`` cut sliding windows (an outer and an inner factor of a
:class:`~hypercolumns.rf.trace.state.Split`), ``F.fold`` sums them back; attention to sliding
windows (HaloNet, VOLO) makes each query block read its whole window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypercolumns.rf import geometry as g
from hypercolumns.rf.trace.rules.call import _Call, _ints, _norm_dim
from hypercolumns.rf.trace.state import (
    Dim,
    Factor,
    Split,
    State,
    _flat,
    _join,
    _OpError,
    _plain,
)


def _sliding(f: Factor, size: int, kernel: int, step: int, pad: int = 0) -> tuple[Factor, Factor]:
    """Outer and inner factor of the sliding windows that cut the spatial factor ``f``: blocks
    that tile the axis are a plain split (they may join back), others stay windows."""
    if f.geom is None or f.inner:
        raise _OpError("cuts windows out of positions inside windows")
    blocks = (f.size + 2 * pad - kernel) // step + 1
    if kernel == step and not pad and blocks * kernel == f.size:
        return Split(str(f.axis), f.geom, blocks).factors(size)
    return Split(str(f.axis), f.geom, blocks, kernel, step, pad).factors(size)


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
