"""What a rule is given: an op's bound arguments, the states of its inputs and its output.

A rule takes a :class:`_Call` and returns the output's
:class:`~hypercolumns.rf.trace.state.State` (a list, one per output, for ops with several),
``None`` for an output that does not depend on the input, or raises
:class:`~hypercolumns.rf.trace.state._OpError`. The helpers here are shared by the rules of
every family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from hypercolumns.rf import geometry as g
from hypercolumns.rf.trace.state import (
    Dim,
    Factor,
    State,
    _flat,
    _OpError,
    _plain,
    _States,
    _windowed,
)

_State = State | None
_Rule = Callable[["_Call"], Any]


@dataclass
class _Call:
    func: torch._ops.OpOverload
    args: dict[str, Any]
    out: Any
    states: _States

    def state(self, name: str) -> _State:
        value = self.args.get(name)
        return self.states.get(value) if isinstance(value, torch.Tensor) else None

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


def _ints(value: Any, n: int) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value] * n
    vals = [int(v) for v in value]
    return vals * n if len(vals) == 1 and n > 1 else vals


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _shape_of(st: State) -> tuple[int, ...]:
    return tuple(d.size for d in st.dims)


def _spatial_tail(call: _Call, n: int) -> list[int]:
    rank = len(call.shape("self") if "self" in call.args else call.shape("input"))
    return list(range(rank - n, rank))


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


def _mixing(st: State, dims: Sequence[Dim]) -> State:
    """``st`` after values were mixed along ``dims``: inside blocks or across the image."""
    windows = _windowed(dims)
    if windows is None:
        return replace(st, mixed=True)
    return replace(st, windows=st.windows | windows) if windows else st


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []
