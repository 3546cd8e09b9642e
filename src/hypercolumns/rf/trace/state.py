"""The tensor-state model: what the tracer knows of each tensor derived from the input.

A :class:`State` lists, per tensor dimension (:class:`Dim`), the factors it is made of
(:class:`Factor`): a flattened ``(H, W)`` token axis is two factors, and a spatial axis cut into
blocks by a reshape is the outer and inner factor of one :class:`Split`. Spatial factors carry
their exact :class:`~hypercolumns.rf.geometry.Axis`. :class:`_States` holds the state of each
tensor of a run; :class:`_OpError` is how a rule says an op's geometry cannot be followed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.utils.weak import WeakIdKeyDictionary

from hypercolumns.rf import geometry as g


class _OpError(Exception):
    """An op whose geometry cannot be followed: its outputs are marked unknown, with a warning
    that ends with the message (``"op aten.NAME ... <message>"``)."""


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
