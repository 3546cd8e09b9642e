"""Rules for ops on the axes of a map: convolution, pooling, resampling, padding, shifts and
recurrences along an axis.

Each maps the geometry of every spatial axis it acts on through the matching function of
:mod:`hypercolumns.rf.geometry` (``conv``, ``adaptive_pool``, ``interpolate``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction

from hypercolumns.rf import geometry as g
from hypercolumns.rf.trace.rules.call import (
    _Call,
    _ints,
    _mapped,
    _mixing,
    _norm_dim,
    _Rule,
    _shape_of,
    _spatial_tail,
    _tensors,
)
from hypercolumns.rf.trace.rules.windows import _windows
from hypercolumns.rf.trace.state import Dim, Factor, State, _flat, _OpError, _plain, _windowed


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


def _rule_roll(call: _Call) -> State:
    st = call.source
    rank = len(st.dims)
    shifts = _ints(call.args["shifts"], 1)
    dims = [_norm_dim(x, rank) for x in _ints(call.args.get("dims"), 1)]
    if not dims:
        raise _OpError("rolls a flattened tensor")
    return _mapped(st, call.out_shape, dims, lambda i, a, _: g.shift(a, -shifts[i]))


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
