"""Diagrams that explain convolution arithmetic and how receptive fields grow along a network.

Convolution arithmetic, after the figures of Dumoulin & Visin ("A guide to convolution
arithmetic for deep learning", 2016): :func:`conv_arithmetic` computes which input cells feed
which output cells of one 2-D convolution (ordinary, strided, dilated or transposed),
:func:`conv_diagram` draws it for one output cell and :func:`conv_animation` slides the kernel
over every output cell. A transposed convolution is drawn as the direct convolution it equals:
``stride - 1`` zeros inserted between input cells, ``dilation * (kernel - 1) - padding``
implicit padding on each side (plus ``output_padding`` at the bottom and right), then a
stride-1 convolution.

Receptive-field growth: :func:`growth` plots the receptive-field size and stride of every leaf
layer from :func:`hypercolumns.rf.layers.layers`, so the effect of stacking, striding, pooling and
dilation shows along the network.

Figures are built without ``pyplot`` (no global state, no GUI backend); :func:`save` writes a
figure as PNG, PDF or SVG and an animation as GIF (Pillow).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import nn

from hypercolumns._atomic import check_writable, staged
from hypercolumns._checks import int_at_least, parse_size
from hypercolumns.errors import HypercolumnsError, InputSizeError
from hypercolumns.rf.layers import Layer
from hypercolumns.viz import plot

__all__ = [
    "MAX_CELLS",
    "MAX_FRAMES",
    "Cell",
    "ConvArithmetic",
    "ConvSpec",
    "check_path",
    "conv_animation",
    "conv_arithmetic",
    "conv_diagram",
    "growth",
    "save",
]

MAX_CELLS = 48
"""Largest grid side drawn: beyond it the cells are too small to read."""
MAX_FRAMES = 400
"""Most output cells (frames) an animation may have."""

_INPUT, _READ = "#c6dbef", "#2171b5"
_PAD, _ZERO, _ZERO_READ = "white", "#ececec", "#a3a3a3"
_OUTPUT, _UNIT = "#c7e9c0", "#238b45"
_EDGE = "#4d4d4d"


class Cell(StrEnum):
    """What a cell of the (equivalent) input grid holds."""

    INPUT = "input"
    PADDING = "padding"
    ZERO = "zero"  # inserted between input cells by a transposed convolution


@dataclass(frozen=True)
class ConvSpec:
    """One 2-D convolution, the same along both axes, as ``torch.nn.Conv2d`` or
    ``torch.nn.ConvTranspose2d`` (``transposed=True``) takes it.

    Raises:
        HypercolumnsError: A value is out of range (the message names it), or
            ``output_padding`` is not smaller than the stride or the dilation (PyTorch's rule),
            or is given for an ordinary convolution.
    """

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    transposed: bool = False
    output_padding: int = 0

    def __post_init__(self) -> None:
        for name, least in (("kernel", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
            int_at_least(getattr(self, name), name, least)
        int_at_least(self.output_padding, "output padding", 0)
        if self.output_padding and not self.transposed:
            raise HypercolumnsError(
                f"output padding {self.output_padding} applies only to a transposed convolution"
            )
        if self.output_padding >= max(self.stride, self.dilation):
            raise HypercolumnsError(
                f"output padding {self.output_padding} must be smaller than the stride "
                f"({self.stride}) or the dilation ({self.dilation}), as in PyTorch"
            )

    @property
    def span(self) -> int:
        """Cells the dilated kernel spans: ``dilation * (kernel - 1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    def describe(self) -> str:
        """E.g. ``"transposed convolution: kernel 3, stride 2, padding 1, output padding 1"``."""
        parts = [f"kernel {self.kernel}", f"stride {self.stride}", f"padding {self.padding}"]
        if self.dilation != 1:
            parts.append(f"dilation {self.dilation}")
        if self.output_padding:
            parts.append(f"output padding {self.output_padding}")
        kind = "transposed convolution" if self.transposed else "convolution"
        return f"{kind}: {', '.join(parts)}"

    def formula(self, input_size: int) -> str:
        """The output-size formula with the numbers filled in."""
        o = self.output_size(input_size)
        n, k, s, p, d = input_size, self.kernel, self.stride, self.padding, self.dilation
        if self.transposed:
            return (
                "output = (n \u2212 1)s \u2212 2p + d(k \u2212 1) + output_padding + 1 = "
                f"{(n - 1) * s} \u2212 {2 * p} + {d * (k - 1)} + {self.output_padding} + 1 = {o}"
            )
        return (
            "output = \u230a(n + 2p \u2212 d(k \u2212 1) \u2212 1) / s\u230b + 1 = "
            f"\u230a{n + 2 * p - d * (k - 1) - 1} / {s}\u230b + 1 = {o}"
        )

    def output_size(self, input_size: int) -> int:
        """Output cells per axis for ``input_size`` input cells, as PyTorch computes them.

        Raises:
            InputSizeError: The input size is not positive, or the output would be empty.
        """
        int_at_least(input_size, "input size", 1)
        n, p = input_size, self.padding
        if self.transposed:
            size = (n - 1) * self.stride - 2 * p + self.span + self.output_padding
            if size < 1:
                raise InputSizeError(
                    f"the output size would be {size}: a transposed convolution of {n} cells "
                    f"gives (n - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding "
                    f"+ 1 = {size}; padding {p} crops too much, use a smaller padding or a "
                    "larger input"
                )
            return size
        size = (n + 2 * p - self.span) // self.stride + 1
        if size < 1:
            raise InputSizeError(
                f"the output size would be {size}: kernel {self.kernel} with dilation "
                f"{self.dilation} spans {self.span} cells, more than the {n + 2 * p} cells of "
                f"the padded input (input {n} + 2 x padding {p}); use a larger input or "
                "padding, or a smaller kernel or dilation"
            )
        return size


@dataclass(frozen=True)
class ConvArithmetic:
    """Which input cells feed which output cells, computed from the convolution's definition.

    Both axes are alike, so everything is stored along one axis. The *grid* is the input of
    the equivalent direct convolution: the padded input, or for a transposed convolution the
    zero-inserted, implicitly padded (or cropped) input. Output cell ``o`` reads the grid
    positions ``starts[o] + t * dilation`` for ``t`` in ``0..kernel-1``.

    Attributes:
        spec: The convolution.
        input_size: Input cells per axis.
        output_size: Output cells per axis (PyTorch's).
        cells: What each grid position holds.
        sources: The input cell at each grid position (``None`` for padding and zeros).
        starts: Per output cell, the grid position of the kernel's first tap.
        pad: Padding of the grid before and after the input: the convolution's padding, or
            the implicit padding of a transposed one (negative: that many cells cropped).
    """

    spec: ConvSpec
    input_size: int
    output_size: int
    cells: tuple[Cell, ...]
    sources: tuple[int | None, ...]
    starts: tuple[int, ...]
    pad: tuple[int, int]

    def taps(self, o: int) -> tuple[int, ...]:
        """Grid positions read by output cell ``o`` along one axis."""
        start = self.starts[o]
        return tuple(start + t * self.spec.dilation for t in range(self.spec.kernel))

    def reads(self, o: int) -> tuple[int, ...]:
        """Input cells read by output cell ``o`` along one axis (padding and zeros left out)."""
        return tuple(s for g in self.taps(o) if (s := self.sources[g]) is not None)

    def footprint(self, i: int, j: int) -> list[tuple[int, int]]:
        """Grid positions ``(gy, gx)`` under the kernel of output cell ``(i, j)``."""
        return [(gy, gx) for gy in self.taps(i) for gx in self.taps(j)]

    def inputs(self, i: int, j: int) -> frozenset[tuple[int, int]]:
        """Input cells ``(y, x)`` that output cell ``(i, j)`` reads."""
        return frozenset((y, x) for y in self.reads(i) for x in self.reads(j))

    def check_unit(self, unit: tuple[int, int]) -> tuple[int, int]:
        """``unit`` if it is an output cell, else an error naming the output's range."""
        o = self.output_size
        if len(unit) != 2 or not all(0 <= int(u) < o for u in unit):
            raise HypercolumnsError(
                f"output cell {tuple(unit)} is outside the {o}x{o} output (0..{o - 1} per axis)"
            )
        return int(unit[0]), int(unit[1])


def conv_arithmetic(spec: ConvSpec, input_size: int) -> ConvArithmetic:
    """Which input cells feed which output cells of ``spec`` on an ``input_size`` square input.

    Raises:
        InputSizeError: The output would be empty (the message gives the size and why).
    """
    out = spec.output_size(input_size)
    n, s = input_size, spec.stride
    if spec.transposed:
        before = spec.dilation * (spec.kernel - 1) - spec.padding
        after = before + spec.output_padding
        length = (n - 1) * s + 1  # zero-inserted input
        first = max(before, 0)  # grid position of input cell 0
        cells: list[Cell] = []
        sources: list[int | None] = []
        for g in range(first + length + max(after, 0)):
            z = g - first
            inside = 0 <= z < length
            cells.append(Cell.PADDING if not inside else Cell.INPUT if z % s == 0 else Cell.ZERO)
            sources.append(z // s if inside and z % s == 0 else None)
        starts = tuple(o + first - before for o in range(out))
        pad = (before, after)
    else:
        p = spec.padding
        cells = [Cell.INPUT if p <= g < p + n else Cell.PADDING for g in range(n + 2 * p)]
        sources = [g - p if p <= g < p + n else None for g in range(n + 2 * p)]
        starts = tuple(o * s for o in range(out))
        pad = (p, p)
    return ConvArithmetic(spec, n, out, tuple(cells), tuple(sources), starts, pad)


# --- the diagram -------------------------------------------------------------------------


def _cells(ax: Axes, side: int, faces: Sequence[str], styles: Sequence[str]) -> PatchCollection:
    boxes = [Rectangle((x - 0.5, y - 0.5), 1, 1) for y in range(side) for x in range(side)]
    coll = PatchCollection(
        boxes, facecolors=list(faces), edgecolors=_EDGE, linewidths=0.8, linestyles=list(styles)
    )
    ax.add_collection(coll)
    ax.set_xlim(-0.6, side - 0.4)
    ax.set_ylim(side - 0.4, -0.6)
    ax.set_aspect("equal")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return coll


def _ticks(ax: Axes, labels: Sequence[int | None]) -> None:
    """Ticks at the cells that have a label, thinned to at most about 12 per axis."""
    marked = [(g, v) for g, v in enumerate(labels) if v is not None]
    step = max(1, -(-len(marked) // 12))
    marked = [(g, v) for g, v in marked if v % step == 0]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks([g for g, _ in marked], [str(v) for _, v in marked])
    ax.tick_params(length=0, labelsize=7)


class _Diagram:
    """The panels of one diagram, repainted for a chosen output cell."""

    def __init__(self, arith: ConvArithmetic) -> None:
        spec, n, out = arith.spec, arith.input_size, arith.output_size
        side = len(arith.cells)
        largest = max(side, out)
        if largest > MAX_CELLS:
            raise HypercolumnsError(
                f"the diagram would have {largest} cells per side (input {n}, output {out}); "
                f"at most {MAX_CELLS} are drawn: use a smaller input size"
            )
        self.arith = arith
        sides = ([n] if spec.transposed else []) + [side, out]
        unit = min(0.32, 13.0 / sum(sides))  # inches per cell
        width = max(unit * sum(sides) + 0.9 * len(sides) + 0.6, 7.0)
        self.fig = Figure(figsize=(width, unit * largest + 2.6), layout="constrained")
        axes = list(self.fig.subplots(1, len(sides), width_ratios=sides))
        if spec.transposed:
            ax = axes.pop(0)
            self.source = _cells(ax, n, [_INPUT] * n * n, ["solid"] * n * n)
            _ticks(ax, list(range(n)))
            ax.set_title(f"input {n}\u00d7{n}", fontsize=9)
        self.grid_ax, self.out_ax = axes
        kinds = [
            Cell.INPUT if arith.cells[gy] is Cell.INPUT and arith.cells[gx] is Cell.INPUT
            else Cell.PADDING if Cell.PADDING in (arith.cells[gy], arith.cells[gx])
            else Cell.ZERO
            for gy in range(side)
            for gx in range(side)
        ]  # fmt: skip
        self.kinds = kinds
        self.faces = [_INPUT if k is Cell.INPUT else _PAD if k is Cell.PADDING else _ZERO
                      for k in kinds]  # fmt: skip
        styles = ["dashed" if k is Cell.PADDING else "solid" for k in kinds]
        self.grid = _cells(self.grid_ax, side, self.faces, styles)
        _ticks(self.grid_ax, arith.sources)
        self.grid_ax.set_title(self._grid_title(), fontsize=9)
        self.output = _cells(self.out_ax, out, [_OUTPUT] * out * out, ["solid"] * out * out)
        _ticks(self.out_ax, list(range(out)))
        self.out_ax.set_title(f"output {out}\u00d7{out}", fontsize=9)
        self.window = Rectangle((0, 0), spec.span, spec.span, fill=False, lw=2.2, ec="#08306b")
        self.grid_ax.add_patch(self.window)
        (self.dots,) = self.grid_ax.plot([], [], "o", color="#08306b", ms=3.2, ls="none")
        self.header = (
            f"{spec.describe()}; input {n}\u00d7{n} \u2192 output {out}\u00d7{out}\n"
            f"{spec.formula(n)}"
        )
        self.title = self.fig.suptitle(self.header, fontsize=10)
        self.fig.legend(
            handles=self._legend(), loc="outside lower center", ncols=3, fontsize=8, frameon=False
        )

    def _grid_title(self) -> str:
        spec, (before, after) = self.arith.spec, self.arith.pad
        if not spec.transposed:
            return f"input, padding {spec.padding} (dashed)" if spec.padding else "input"
        zeros = spec.stride - 1
        pad = f"padding {before}" if before >= 0 else f"cropped by {-before}"
        if after != before:
            pad += f" ({after} at bottom/right)" if after >= 0 else f" ({-after} cropped)"
        inserted = f"{zeros} zero{'s' * (zeros != 1)} between cells, " if zeros else ""
        return f"equivalent input: {inserted}{pad};\nconvolved with stride 1, kernel flipped"

    def _legend(self) -> list[Patch]:
        handles = [
            Patch(fc=_INPUT, ec=_EDGE, label="input cell"),
            Patch(fc=_READ, ec=_EDGE, label="read by the output cell"),
        ]
        if Cell.PADDING in self.arith.cells:
            handles.append(Patch(fc=_PAD, ec=_EDGE, ls="dashed", label="padding (zero)"))
        if Cell.ZERO in self.arith.cells:
            handles.append(Patch(fc=_ZERO, ec=_EDGE, label="inserted zero"))
        if Cell.INPUT in self.arith.cells and set(self.arith.cells) != {Cell.INPUT}:
            handles.append(Patch(fc=_ZERO_READ, ec=_EDGE, label="kernel tap on a zero"))
        handles.append(Patch(fc=_UNIT, ec=_EDGE, label="output cell"))
        return handles

    def paint(self, unit: tuple[int, int]) -> list[Artist]:
        """Highlight output cell ``unit`` and its kernel footprint; the artists changed."""
        arith = self.arith
        i, j = arith.check_unit(unit)
        side, out = len(arith.cells), arith.output_size
        faces = list(self.faces)
        taps = arith.footprint(i, j)
        for gy, gx in taps:
            faces[gy * side + gx] = (
                _READ if self.kinds[gy * side + gx] is Cell.INPUT else _ZERO_READ
            )
        self.grid.set_facecolor(faces)
        out_faces = [_OUTPUT] * out * out
        out_faces[i * out + j] = _UNIT
        self.output.set_facecolor(out_faces)
        y0, x0 = arith.starts[i], arith.starts[j]
        self.window.set_xy((x0 - 0.5, y0 - 0.5))
        self.dots.set_data([gx for _, gx in taps], [gy for gy, _ in taps])
        read = arith.inputs(i, j)
        changed: list[Artist] = [self.grid, self.output, self.window, self.dots, self.title]
        if arith.spec.transposed:
            n = arith.input_size
            src = [_INPUT] * n * n
            for y, x in read:
                src[y * n + x] = _READ
            self.source.set_facecolor(src)
            changed.append(self.source)
        k2 = arith.spec.kernel**2
        zeros = f"; {k2 - len(read)} of {k2} kernel taps on zeros" if len(read) < k2 else ""
        self.title.set_text(
            f"{self.header}\noutput cell ({i}, {j}) reads {len(read)} input "
            f"cell{'s' * (len(read) != 1)}{zeros}"
        )
        return changed


def conv_diagram(
    spec: ConvSpec, input_size: int = 5, *, unit: tuple[int, int] | None = None
) -> Figure:
    """The convolution-arithmetic diagram of ``spec`` on an ``input_size`` square input.

    Panels, left to right: for a transposed convolution the input itself; the (padded,
    zero-inserted) input grid of the equivalent direct convolution with the kernel footprint
    of one output cell (dots: the kernel taps; frame: the dilated kernel's extent); the
    output with that cell. The title gives the output-size formula with the numbers.

    Args:
        spec: The convolution.
        input_size: Input cells per axis.
        unit: The output cell ``(i, j)`` to highlight; by default the middle one.

    Raises:
        InputSizeError: The output would be empty.
        HypercolumnsError: ``unit`` is outside the output, or a grid would be larger than
            :data:`MAX_CELLS` per side.
    """
    arith = conv_arithmetic(spec, input_size)
    diagram = _Diagram(arith)
    mid = (arith.output_size - 1) // 2
    diagram.paint(unit if unit is not None else (mid, mid))
    return diagram.fig


def conv_animation(spec: ConvSpec, input_size: int = 5) -> FuncAnimation:
    """:func:`conv_diagram` as an animation: one frame per output cell, row by row.

    Write it with :func:`save` to a ``.gif``; in a notebook, ``animation.to_jshtml()``.

    Raises:
        InputSizeError: The output would be empty.
        HypercolumnsError: More than :data:`MAX_FRAMES` output cells, or a grid larger than
            :data:`MAX_CELLS` per side.
    """
    arith = conv_arithmetic(spec, input_size)
    out = arith.output_size
    if out * out > MAX_FRAMES:
        raise HypercolumnsError(
            f"the animation would have {out * out} frames ({out}x{out} output cells); at most "
            f"{MAX_FRAMES}: use a smaller input size"
        )
    diagram = _Diagram(arith)
    units = [(i, j) for i in range(out) for j in range(out)]
    diagram.paint(units[0])
    diagram.fig.draw_without_rendering()  # lay out once; frames then only repaint cells
    diagram.fig.set_layout_engine("none")
    return FuncAnimation(
        diagram.fig,
        lambda k: diagram.paint(units[k]),
        frames=len(units),
        init_func=lambda: diagram.paint(units[0]),
        interval=500,
        repeat=True,
    )


# --- receptive-field growth --------------------------------------------------------------


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[(first, last), ...]`` of sorted integers."""
    runs: list[tuple[int, int]] = []
    for k in indices:
        if runs and k == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


def _listing(indices: Sequence[int]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}\u2013{b}" for a, b in _runs(indices))


def _dilation(module: nn.Module | None) -> int:
    value = getattr(module, "dilation", 1)
    values = value if isinstance(value, tuple | list) else (value,)
    return max((int(v) for v in values if isinstance(v, int)), default=1)


def growth(
    layers: Sequence[Layer],
    input_size: int | str | Sequence[int] | None = None,
    *,
    model: nn.Module | None = None,
    title: str = "",
) -> Figure:
    """Receptive-field size and stride of every leaf layer along the network (log scale).

    Stacking grows the receptive field by ``(kernel - 1) * stride`` per layer, a stride or
    pooling multiplies the stride (and so the growth of every later layer), dilation widens
    one layer's kernel. Markers show where the stride changes and, given ``model``, which
    convolutions are dilated. When any layer is not square both axes are drawn (y solid, x
    dashed); otherwise one line per quantity. Global layers (whole input) and layers with an
    unknown receptive field are shaded and listed in the legend, not plotted.

    Args:
        layers: Layers of a model, from :func:`hypercolumns.rf.layers.layers`; leaf layers
            (those with an index) are drawn.
        input_size: The input size the layers were computed for, drawn as a reference line.
        model: The model, to mark dilated convolutions.
        title: Figure title.

    Raises:
        HypercolumnsError: No leaf layer has a spatial receptive field.
    """
    leaves = [layer for layer in layers if layer.index is not None]
    spatial = [layer for layer in leaves if layer.rf is not None and not layer.rf.is_global]
    if not leaves:
        raise HypercolumnsError("the model has no layers (sub-modules that ran) to plot")
    if not spatial:
        n_global = sum(layer.is_global for layer in leaves)
        raise HypercolumnsError(
            f"no layer has a spatial receptive field to plot: of {len(leaves)} leaf layers "
            f"{n_global} are global and {len(leaves) - n_global} unknown (see `hypercolumns "
            "layers`)"
        )
    modules: Mapping[str, nn.Module] = dict(model.named_modules()) if model is not None else {}
    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    ax = fig.subplots()
    points = [(layer.index, layer.rf, layer.name) for layer in spatial
              if layer.index is not None and layer.rf is not None]  # fmt: skip
    idx = [index for index, _, _ in points]
    square = all(rf.size[0] == rf.size[1] and rf.stride[0] == rf.stride[1] for _, rf, _ in points)
    for axis, style in ((0, "-"),) if square else ((0, "-"), (1, "--")):
        suffix = "" if square else (" (y)", " (x)")[axis]
        sizes = [rf.size[axis] for _, rf, _ in points]
        strides = [rf.stride[axis] for _, rf, _ in points]
        for values, color, label in ((sizes, "C0", "receptive field"), (strides, "C1", "stride")):
            ax.plot(idx, values, style, color=color, marker=".", label=label + suffix)
            ax.annotate(f"{values[-1]:g}", (idx[-1], values[-1]), xytext=(5, 0), fontsize=8,
                        textcoords="offset points", va="center", color=color)  # fmt: skip

    def mark(where: list[tuple[int, float]], label: str, **style: Any) -> None:
        if where:
            x, y = zip(*where, strict=True)
            ax.plot(x, y, ls="none", label=label, **style)

    down: list[tuple[int, float]] = []
    up: list[tuple[int, float]] = []
    dilated: list[tuple[int, float]] = []
    uneven: list[tuple[int, float]] = []
    misaligned: list[tuple[int, float]] = []
    previous = 1.0
    for index, rf, name in points:
        stride, size = max(rf.stride), float(max(rf.size))
        if stride != previous:
            (down if stride > previous else up).append((index, stride))
        previous = stride
        if _dilation(modules.get(name)) > 1:
            dilated.append((index, size))
        if not rf.uniform:
            uneven.append((index, size))
        if not rf.aligned:
            misaligned.append((index, size))
    mark(down, "stride grows (strided conv or pooling)", marker="v", color="C3", ms=8)
    mark(up, "stride shrinks (upsampling)", marker="^", color="C2", ms=8)
    mark(dilated, "dilated convolution", marker="D", mfc="none", mec="C4", ms=9, mew=1.5)
    mark(uneven, "units differ in extent (largest shown)", marker="o", mfc="none", mec="k", ms=10)
    mark(misaligned, "misaligned paths (union shown)", marker="x", color="k", ms=9)
    if input_size is not None:
        h, w = parse_size(input_size)
        if h == w:
            ax.axhline(h, color="0.5", ls=":", label=f"input size {h}")
        else:
            ax.axhline(h, color="0.5", ls=":", label=f"input height {h} (y)")
            ax.axhline(w, color="0.5", ls="-.", label=f"input width {w} (x)")
    for kind, chosen, color, hatch in (
        ("global, whole input", [la for la in leaves if la.is_global], "0.85", None),
        ("unknown receptive field", [la for la in leaves if la.rf is None], "#fcbba1", "//"),
    ):
        numbers = [la.index for la in chosen if la.index is not None]
        for k, (a, b) in enumerate(_runs(numbers)):
            ax.axvspan(a - 0.5, b + 0.5, color=color, hatch=hatch, alpha=0.6, lw=0,
                       label=f"{kind}: layers {_listing(numbers)}" if k == 0 else None)  # fmt: skip
    ax.set_yscale("log", base=2)
    ax.set_xlabel("layer index (order modules run)")
    ax.set_ylabel("input pixels")
    ax.grid(True, which="major", alpha=0.3)
    numbered = [la.index for la in leaves if la.index is not None]
    if len(numbered) <= 40:
        labels = [f"{la.index} {la.type}" for la in leaves]
        ax.set_xticks(numbered, labels, rotation=90, fontsize=7)
    ax.set_xlim(numbered[0] - 0.7, numbered[-1] + 0.7)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title(title or f"receptive-field growth over {len(leaves)} layers", fontsize=11)
    return fig


# --- saving ------------------------------------------------------------------------------


def check_path(path: str | Path, *, animated: bool) -> Path:
    """``path`` as a :class:`~pathlib.Path` if its extension fits: ``.gif`` for an animation,
    one of :data:`hypercolumns.viz.plot.FORMATS` for a figure; else an error saying what does."""
    path = Path(path)
    suffix = path.suffix.lower()
    if animated and suffix != ".gif":
        raise HypercolumnsError(
            f"an animation is written as a GIF: use a .gif file, not {str(path)!r}"
        )
    if not animated and suffix == ".gif":
        raise HypercolumnsError(
            f"{str(path)!r} is a GIF, which holds an animation (conv_animation, --animate); "
            f"write a figure as {', '.join(plot.FORMATS)}"
        )
    if not animated and suffix not in plot.FORMATS:
        raise HypercolumnsError(
            f"cannot write a figure to {str(path)!r}: use a {', '.join(plot.FORMATS)} file name"
        )
    check_writable(path)
    return path


def save(
    figure: Figure | FuncAnimation,
    path: str | Path,
    *,
    dpi: int = 120,
    fps: int = 2,
    progress: Callable[[int, int], object] | None = None,
) -> Path:
    """Write a figure (PNG, PDF or SVG) or an animation (GIF) by the extension of ``path``.

    Written atomically: nothing is left at ``path`` if writing fails.

    Args:
        figure: A figure, or an animation from :func:`conv_animation`.
        path: The file to write.
        dpi: Resolution.
        fps: Frames per second of a GIF.
        progress: Called as ``progress(frame, frames)`` after each frame of a GIF.

    Raises:
        HypercolumnsError: The extension does not fit: a ``.gif`` takes an animation, the
            others a figure.
    """
    path = check_path(path, animated=not isinstance(figure, Figure))
    if isinstance(figure, Figure):
        return plot.save(figure, path, dpi=dpi)
    int_at_least(fps, "frames per second", 1)
    with staged(path, suffix=".gif") as (tmp,):  # Pillow picks the format by the suffix
        figure.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi, progress_callback=progress)
    return path
