"""List a model's layers with their receptive fields, and select layers by name, index or glob.

The layer grammar (one for the whole package: :func:`select`): a name, an index (negative from
the end of the leaf layers), a glob, ``"all"``, a comma-separated string of these, or
``"NAME:cls"``, the class token of a vision-transformer layer (a global pseudo-layer).

A *layer* is a module of ``model.named_modules()`` that produced a tensor when the model ran.
Layers are listed in the order modules first ran (a container before its children). Leaf
modules are also numbered in that order (``Layer.index``), so ``torchvision:vgg16`` layers
``[3, 8]`` are ``features.3`` and ``features.8``; containers have no index. A module that runs
several times (torchvision's ResNet reuses ``relu``) is described by its first call.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hypercolumns._checks import parse_size
from hypercolumns.errors import LayerNotFoundError, OptionError, closest
from hypercolumns.models import input_channels
from hypercolumns.rf.geometry import ReceptiveField
from hypercolumns.rf.trace import State, joined_axes, trace

__all__ = ["CLS", "Layer", "MapLayout", "class_token", "layers", "select"]

LayerSpec = str | int | Sequence[str | int]

CLS = ":cls"
"""Suffix naming the class token of a token layer: ``"blocks.11:cls"``."""


@dataclass(frozen=True)
class MapLayout:
    """Where a layer's output holds its spatial axes (tensor dims counted with the batch).

    ``y == x`` means one token dim holding ``prefix`` extra tokens then the ``grid`` row-major.
    """

    y: int
    x: int
    grid: tuple[int, int]
    prefix: int = 0

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """The output as a ``(B, C, H, W)`` map (extra tokens dropped, other dims as channels)."""
        h, w = self.grid
        if self.y == self.x:
            t = t.narrow(self.y, self.prefix, h * w).unflatten(self.y, (h, w))  # type: ignore[no-untyped-call]
            y, x = self.y, self.y + 1
        else:
            y, x = self.y, self.x
        rest = [d for d in range(1, t.dim()) if d not in (y, x)]
        t = t.permute(0, *rest, y, x)
        return t.reshape(t.shape[0], -1, h, w)


@dataclass(frozen=True)
class Layer:
    """One layer of a model and its receptive-field geometry.

    Attributes:
        index: Position among leaf modules in the order they first ran; ``None`` for containers.
        name: Module name in ``model.named_modules()``.
        type: Module class name.
        shape: Output shape without the batch dimension, e.g. ``(C, H, W)`` or ``(C,)``.
        rf: Receptive field; ``None`` when it is unknown (see the warnings of the analysis).
        layout: Where the output keeps its spatial axes; ``None`` for global layers and for
            outputs laid out as windows (tokens grouped by window, windows as batch).
    """

    index: int | None
    name: str
    type: str
    shape: tuple[int, ...]
    rf: ReceptiveField | None
    layout: MapLayout | None = field(default=None, repr=False, compare=False)

    @property
    def is_global(self) -> bool:
        return self.rf is not None and self.rf.is_global

    @property
    def channels(self) -> int:
        """Values per position, what the layer adds to a hypercolumn: the product of its
        non-spatial output dims (of all of them for a layer without a map layout)."""
        layout = self.layout
        spatial = set() if layout is None else {layout.y, layout.x}
        return math.prod(s for d, s in enumerate(self.shape, start=1) if d not in spatial)

    def to_dict(self) -> dict[str, Any]:
        """The ``hypercolumns layers --format json`` record of this layer."""
        rf = self.rf
        return {
            "index": self.index,
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape),
            "rf_size": list(rf.size) if rf else None,
            "stride": list(rf.stride) if rf else None,
            "rf_center": list(rf.center) if rf else None,
            "global": rf.is_global if rf else False,
            "aligned": rf.aligned if rf else False,
            "uniform": rf.uniform if rf else False,
        }


def _layout(state: State) -> MapLayout | None:
    spatial = [(d, dim) for d, dim in enumerate(state.dims) if dim.positional]
    if any(d == 0 for d, _ in spatial):  # windows laid out as a batch
        return None
    if len(spatial) == 2:
        (dy, ydim), (dx, xdim) = spatial
        fy, fx = ydim.simple, xdim.simple
        if fy and fx and fy.axis == "y" and fx.axis == "x":
            return MapLayout(dy, dx, (fy.size, fx.size))
    if len(spatial) == 1:
        d, dim = spatial[0]
        axes = [f.axis if f.positional else None for f in dim.factors]
        if axes == ["y", "x"]:
            return MapLayout(d, d, (dim.factors[0].size, dim.factors[1].size), dim.prefix)
    return None


class _Fields:
    """Receptive fields of the states of one analysis, each computed once: many layers share
    their state (a container and its last child, elementwise layers) or their axes' geometry."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        # By id: the states and geometries are those of the trace, alive as long as this is.
        self._by_state: dict[int, tuple[ReceptiveField | None, MapLayout | None]] = {}
        self._by_axes: dict[tuple[int, int, bool], ReceptiveField] = {}

    def __call__(self, state: State | None) -> tuple[ReceptiveField | None, MapLayout | None]:
        found = self._by_state.get(id(state))
        if found is None:
            found = self._by_state[id(state)] = self._compute(state)
        return found

    def _compute(self, state: State | None) -> tuple[ReceptiveField | None, MapLayout | None]:
        if state is None or state.unknown:
            return None, None
        layout = None if state.is_global else _layout(state)
        if layout is None:
            axes = None if state.is_global or state.mixed else joined_axes(state)
            if axes is not None:  # windows laid out as batch and tokens: a map, not as one
                return ReceptiveField.from_axes(*axes), None
            return ReceptiveField.whole(*self.size), None
        dy, dx = state.dims[layout.y], state.dims[layout.x]
        if layout.y == layout.x:
            fy, fx = dy.factors
        else:
            fy, fx = dy.factors[0], dx.factors[0]
        assert fy.geom is not None
        assert fx.geom is not None
        key = (id(fy.geom), id(fx.geom), state.mixed)
        rf = self._by_axes.get(key)
        if rf is None:
            whole = self.size if state.mixed else None
            rf = self._by_axes[key] = ReceptiveField.from_axes(fy.geom, fx.geom, whole=whole)
        return rf, layout


def layers(
    model: nn.Module,
    input_size: int | str | Sequence[int],
    *,
    in_channels: int | None = None,
) -> list[Layer]:
    """Every layer of ``model`` with its output shape and exact receptive field.

    The model runs once on meta tensors (no arithmetic), in eval mode; its ``training`` flags
    are restored afterwards.

    Args:
        model: Any ``nn.Module`` taking a ``(B, C, H, W)`` image batch.
        input_size: ``H`` or ``(H, W)`` of the input image.
        in_channels: Input channels; by default those of the model's first convolution.

    Returns:
        The layers in the order modules first ran (see the module docstring).

    Raises:
        InputSizeError: The input is too small: the message names the layer that collapses.
        ModelError: The model is not an image model, or raised (the message names the module).
    """
    size = parse_size(input_size)
    channels = input_channels(model) if in_channels is None else int(in_channels)
    result = trace(model, size, channels)
    fields = _Fields(size)
    out: list[Layer] = []
    leaf = 0
    for rec in result.records:
        if rec.output is None:
            continue
        rf, layout = fields(rec.state)
        out.append(
            Layer(
                index=leaf if rec.is_leaf else None,
                name=rec.name,
                type=type(rec.module).__name__,
                shape=tuple(rec.output.shape[1:]),
                rf=rf,
                layout=layout,
            )
        )
        leaf += rec.is_leaf
    return out


def spec_items(spec: LayerSpec) -> list[str | int]:
    """The items of a layer spec: ``"3,8"`` and ``[3, "features.8"]`` both give two."""
    given: object = [spec] if isinstance(spec, str | int) else spec
    if isinstance(spec, bool) or not isinstance(given, Sequence):
        raise OptionError(
            f"layers must be a name, an index, a glob, 'all', '3,8' or a list of them, got {spec!r}"
        )
    items: list[str | int] = []
    for item in given:
        if isinstance(item, str):
            items.extend(p.strip() for p in item.split(",") if p.strip())
        elif not isinstance(item, bool) and isinstance(item, numbers.Integral):
            items.append(operator.index(item))
        else:
            raise OptionError(
                f"layers must be names or indices, got {item!r} ({type(item).__name__}) in {spec!r}"
            )
    return items


def class_token(base: Layer, input_size: tuple[int, int]) -> Layer:
    """The class token of the token layer ``base`` as a layer of its own, ``"NAME:cls"``: the
    first token of ``base``'s output, global (it sees the whole ``input_size`` input) with the
    ``base.channels`` values of one token.

    Raises:
        LayerNotFoundError: ``base`` has no class token in front of its tokens.
    """
    layout = base.layout
    if layout is None or layout.y != layout.x or layout.prefix < 1:
        raise LayerNotFoundError(
            f"layer {base.name!r} has no class token: {CLS!r} needs a token output "
            f"(B, 1 + N, C) with a class token in front, as vision-transformer blocks have; "
            f"{base.name!r} has output shape {base.shape}"
        )
    return Layer(
        index=None,
        name=base.name + CLS,
        type=base.type,
        shape=(base.channels,),
        rf=ReceptiveField.whole(*input_size),
        layout=None,
    )


def select(
    available: Sequence[Layer],
    spec: LayerSpec,
    *,
    input_size: int | str | Sequence[int] | None = None,
) -> list[Layer]:
    """The layers named by ``spec``, in the order given.

    Args:
        available: Layers of a model, as :func:`layers` returns them.
        spec: A name, an index (negative counts from the end of the leaf layers), a glob pattern
            (``"features.*"``), ``"all"`` (every spatial leaf layer), ``"NAME:cls"`` (the class
            token of the token layers ``NAME`` names, see :func:`class_token`), a
            comma-separated string of these (``"3,8"``), or a sequence of them.
        input_size: ``H`` or ``(H, W)`` the layers were listed at; only ``"NAME:cls"`` needs
            it, and by default it is read from the layers that see the whole input (a
            classifier head, attention blocks).

    Raises:
        LayerNotFoundError: A name, index or pattern matches nothing; the message lists the
            closest names. A layer given twice, or ``":cls"`` of a layer without a class token,
            is also an error.
    """
    items = spec_items(spec)
    if not items:
        raise LayerNotFoundError("no layers given: name at least one (see `hypercolumns layers`)")
    by_name = {layer.name: layer for layer in available}
    leaves = [layer for layer in available if layer.index is not None]
    chosen: list[Layer] = []
    for item in items:
        if isinstance(item, str) and item.endswith(CLS) and item not in by_name:
            size = _whole_input(available, input_size)
            bases = _match(item[: -len(CLS)], by_name, leaves)
            found = [class_token(base, size) for base in bases]
        else:
            found = _match(item, by_name, leaves)
        for layer in found:
            if any(c.name == layer.name for c in chosen):
                raise LayerNotFoundError(f"layer {layer.name!r} is given twice")
            chosen.append(layer)
    return chosen


def _whole_input(
    available: Sequence[Layer], input_size: int | str | Sequence[int] | None
) -> tuple[int, int]:
    """``input_size`` as ``(H, W)``, or the extent of a layer that sees the whole input (a
    global layer, or tokens after attention: their receptive field is the input itself)."""
    if input_size is not None:
        return parse_size(input_size)
    for layer in available:
        if layer.rf is not None and layer.rf.axes is None:
            return layer.rf.size
    raise LayerNotFoundError(
        "':cls' layers are global, so their receptive field is the whole input, whose size "
        "these layers do not show: pass input_size=(H, W)"
    )


def _match(item: str | int, by_name: dict[str, Layer], leaves: list[Layer]) -> list[Layer]:
    hint = "run `hypercolumns layers MODEL --input-size H` (or hc.layers) to list them all"
    if isinstance(item, str) and item.lstrip("-").isdigit():
        item = int(item)
    if isinstance(item, int):
        if not -len(leaves) <= item < len(leaves):
            raise LayerNotFoundError(
                f"layer index {item} is out of range: this model has {len(leaves)} leaf layers "
                f"(indices 0..{len(leaves) - 1}, or -{len(leaves)}..-1); {hint}"
            )
        return [leaves[item]]
    if item == "all":
        return [layer for layer in leaves if layer.layout is not None and not layer.is_global]
    if item in by_name:
        return [by_name[item]]
    if any(ch in item for ch in "*?["):
        found = [layer for name, layer in by_name.items() if fnmatch.fnmatchcase(name, item)]
        if found:
            return found
        raise LayerNotFoundError(f"pattern {item!r} matches no layer; {hint}")
    near = closest(item, by_name)
    suggestion = f"; closest: {', '.join(near)}" if near else ""
    raise LayerNotFoundError(f"no layer named {item!r}{suggestion}; {hint}")
