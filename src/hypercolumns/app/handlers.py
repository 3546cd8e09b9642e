"""What a click shows, as plain functions of the app state and a pixel ``(y, x)``.

Each view has a function that computes it (data a script or a test can check) and one that
draws it for the page (``*_image``, an ``(H, W, 3)`` uint8 array). The page
(:mod:`hypercolumns.app.page`) wires them to clicks and exposes each as an API endpoint.

The unit of a layer under pixel ``p`` is the one whose centre is nearest: ``round((p - c0) /
S)`` per axis, clamped to the grid (for a global layer, its only unit, the whole image).

The views of the probes are functions of the same form: the cosine similarity of the clicked
pixel's hypercolumn to every pixel (:func:`similarity`, from the kept maps: no forward pass)
and its best match in a second image (:func:`correspondence`); the PCA image and k-means
clusters of the image (:func:`pca_image`, :func:`kmeans`); a linear probe fitted on painted
scribbles (:func:`scribble_labels`, :func:`scribble`, :func:`segmentation`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypercolumns.app.render import (
    Array,
    boxes_on_image,
    colour,
    figure_array,
    heat_on_image,
    image_array,
    labels_on_image,
)
from hypercolumns.app.render import profile as profile_figure
from hypercolumns.app.state import State
from hypercolumns.errors import HypercolumnsError, LayerNotFoundError, OptionError
from hypercolumns.features.linear import LinearMap
from hypercolumns.features.maps import feature_maps
from hypercolumns.probes.kmeans import fit_kmeans
from hypercolumns.probes.pca_image import fit_pca_image
from hypercolumns.probes.probe import Probe, fit_probe
from hypercolumns.probes.similarity import similarity_of_maps
from hypercolumns.rf.erf import ERF, erf
from hypercolumns.rf.layers import Layer, select
from hypercolumns.viz import plot

__all__ = [
    "CLUSTER_COLOURS",
    "LAYER_COLUMNS",
    "SCRIBBLE_CLASSES",
    "Hypercolumn",
    "Match",
    "UnitBox",
    "channel_grid_image",
    "channel_image",
    "check_pixel",
    "click",
    "correspondence",
    "effective_rf",
    "erf_image",
    "erf_layer",
    "feature_map",
    "hypercolumn",
    "image_array_of",
    "kmeans",
    "kmeans_image",
    "layer_rows",
    "legend_html",
    "mean_activation",
    "mean_activation_image",
    "pca_image",
    "pca_rgb",
    "profile_image",
    "receptive_fields",
    "rf_image",
    "save_probe",
    "scribble",
    "scribble_labels",
    "segmentation",
    "segmentation_image",
    "similarity",
    "similarity_image",
    "status",
    "target_image",
    "unit_at",
]

LAYER_COLUMNS = (
    "chosen",
    "index",
    "name",
    "type",
    "shape",
    "rf size",
    "stride",
    "rf centre",
    "flags",
)
"""Columns of the layer table (:func:`layer_rows`)."""


@dataclass(frozen=True)
class UnitBox:
    """The unit of one layer under a pixel, and its theoretical receptive field.

    Attributes:
        layer: The layer.
        unit: ``(i, j)`` in the layer's grid (``(0, 0)`` for a global layer).
        center: Input coordinate ``(y, x)`` of the unit's centre.
        box: First and last input pixel ``(y0, x0, y1, x1)`` the unit reads, exact and not
            clipped (it may reach past the image, into the padding).
        colour: The layer's colour in the views.
    """

    layer: Layer
    unit: tuple[int, int]
    center: tuple[float, float]
    box: tuple[float, float, float, float]
    colour: str


@dataclass(frozen=True)
class Hypercolumn:
    """The hypercolumn at one pixel.

    Attributes:
        pixel: ``(y, x)``.
        values: ``(C,)`` as :func:`hypercolumns.hypercolumns` gives it at that pixel.
        slices: Layer name to its channels.
    """

    pixel: tuple[int, int]
    values: torch.Tensor
    slices: dict[str, slice]


def check_pixel(state: State, y: float, x: float) -> tuple[int, int]:
    """``(y, x)`` as integers, if it is a pixel of the image.

    Raises:
        OptionError: The pixel is outside the image (or not a number).
    """
    h, w = state.size
    try:
        yi, xi = int(y), int(x)
    except (TypeError, ValueError) as err:
        raise OptionError(f"a pixel is two integers (y, x), got ({y!r}, {x!r})") from err
    if yi != y or xi != x or not (0 <= yi < h and 0 <= xi < w):
        raise OptionError(
            f"pixel (y={y}, x={x}) is outside the {h}x{w} image (y in 0..{h - 1}, x in 0..{w - 1})"
        )
    return yi, xi


def unit_at(layer: Layer, y: int, x: int) -> tuple[int, int]:
    """The unit of ``layer`` whose centre is nearest to pixel ``(y, x)`` (clamped to the grid)."""
    rf = layer.rf
    if rf is None:
        raise LayerNotFoundError(f"the geometry of layer {layer.name!r} is unknown")
    if rf.is_global or layer.layout is None:
        return (0, 0)
    gh, gw = layer.layout.grid
    uy, ux = rf.to_units(y, x)
    return (min(max(round(uy), 0), gh - 1), min(max(round(ux), 0), gw - 1))


def receptive_fields(state: State, y: int, x: int) -> list[UnitBox]:
    """Per chosen layer, the unit under pixel ``(y, x)`` and its theoretical box."""
    y, x = check_pixel(state, y, x)
    out = []
    for k, layer in enumerate(state.layers):
        rf = layer.rf
        assert rf is not None  # Explorer.choose refuses layers of unknown geometry
        unit = unit_at(layer, y, x)
        box = rf.unit_box(*unit)
        if rf.is_global or layer.layout is None:
            h, w = state.size
            box = (0.0, 0.0, h - 1.0, w - 1.0)
            center = ((h - 1) / 2, (w - 1) / 2)
        else:
            center = rf.unit_center(*unit)
        out.append(UnitBox(layer, unit, center, box, colour(k)))
    return out


def rf_image(state: State, y: int, x: int) -> Array:
    """The boxes of :func:`receptive_fields`, nested on the image, the pixel marked."""
    found = receptive_fields(state, y, x)
    return boxes_on_image(
        state.pixels, [b.box for b in found], [b.colour for b in found], point=(int(y), int(x))
    )


def _fmt(v: float) -> str:
    return f"{v:g}"


def legend_html(boxes: Sequence[UnitBox]) -> str:
    """A colour key of the boxes: layer, unit, rf size and stride."""
    items = []
    for b in boxes:
        rf = b.layer.rf
        assert rf is not None
        stride = "global" if rf.is_global else "stride " + ",".join(_fmt(s) for s in rf.stride)
        items.append(
            f'<span style="white-space:nowrap;margin-right:1em">'
            f'<span style="display:inline-block;width:0.9em;height:0.9em;border:3px solid '
            f'{b.colour};vertical-align:middle"></span> {b.layer.name} unit {b.unit}: rf '
            f"{rf.size[0]}x{rf.size[1]}, {stride}</span>"
        )
    return '<div class="hc-legend">' + " ".join(items) + "</div>"


def status(state: State, y: int, x: int) -> str:
    """The status line of a click: the pixel, then per layer the unit and its box."""
    y, x = check_pixel(state, y, x)
    h, w = state.size
    parts = [f"pixel (y={y}, x={x}) of the {h}x{w} image"]
    for b in receptive_fields(state, y, x):
        y0, x0, y1, x1 = b.box
        parts.append(
            f"{b.layer.name} unit ({b.unit[0]},{b.unit[1]}) box y {_fmt(y0)}..{_fmt(y1)}, "
            f"x {_fmt(x0)}..{_fmt(x1)}"
        )
    return "; ".join(parts)


def click(state: State, y: int, x: int) -> tuple[str, Array, str, Array]:
    """What one click shows at once: the status line, the receptive-field view, its colour
    key (HTML) and the hypercolumn profile."""
    y, x = check_pixel(state, y, x)
    boxes = receptive_fields(state, y, x)
    return (
        status(state, y, x),
        rf_image(state, y, x),
        legend_html(boxes),
        profile_image(state, y, x),
    )


def image_array_of(state: State) -> Array:
    """The image on show, ``(H, W, 3)`` uint8."""
    return image_array(state.pixels)


def erf_layer(state: State, layer: str | int | None = None) -> Layer:
    """The layer the ERF view measures: ``layer`` (any spatial layer of the model), by default
    the deepest chosen spatial layer."""
    if layer is None or layer == "":
        spatial = [lay for lay in state.layers if lay.layout is not None]
        if not spatial:
            raise LayerNotFoundError(
                "no chosen layer has spatial units, so no unit has an effective receptive "
                "field; choose a spatial layer"
            )
        return spatial[-1]
    return select(state.all_layers, layer, input_size=state.size)[0]


def effective_rf(state: State, y: int, x: int, layer: str | int | None = None) -> ERF:
    """The effective receptive field, on this image, of the unit of ``layer`` (see
    :func:`erf_layer`) under pixel ``(y, x)``: :func:`hypercolumns.erf` with the image as its
    one input."""
    y, x = check_pixel(state, y, x)
    target = erf_layer(state, layer)
    if target.layout is None or target.rf is None or target.rf.is_global:
        raise HypercolumnsError(
            f"layer {target.name!r} has no spatial units (output shape {target.shape}): every "
            "pixel reaches it, so there is no unit to measure; choose a spatial layer"
        )
    unit = unit_at(target, y, x)
    with state.explorer.running():
        return erf(
            state.explorer.model,
            target.name,
            state.size,
            unit=unit,
            inputs=state.x,
            samples=1,
            in_channels=state.explorer.in_channels,
        )


def erf_image(state: State, y: int, x: int, layer: str | int | None = None) -> Array:
    """The ERF of :func:`effective_rf` as a heat map over the image, with the unit's box."""
    return figure_array(plot.erf_on_image(effective_rf(state, y, x, layer), state.pixels))


def hypercolumn(state: State, y: int, x: int) -> Hypercolumn:
    """The hypercolumn at pixel ``(y, x)``, read from the kept layer maps."""
    y, x = check_pixel(state, y, x)
    points = torch.tensor([[[y, x]]], device=state.maps.device)
    values = state.maps.columns(points)[0, 0]
    return Hypercolumn((y, x), values, dict(state.maps.slices))


def profile_image(state: State, y: int, x: int) -> Array:
    """The hypercolumn at ``(y, x)`` as a profile, one coloured block per layer."""
    hc = hypercolumn(state, y, x)
    colours = [colour(k) for k in range(len(hc.slices))]
    title = f"hypercolumn at pixel (y={hc.pixel[0]}, x={hc.pixel[1]}): {len(hc.values)} channels"
    return profile_figure(hc.values, hc.slices, colours, title=title)


def feature_map(state: State, layer: str | int) -> tuple[Layer, torch.Tensor]:
    """A layer's activations on the image, ``(C, h, w)``: from the kept maps when the layer is
    chosen, else from one forward pass of the needed prefix."""
    found = select(state.all_layers, layer, input_size=state.size)
    if len(found) != 1:
        raise LayerNotFoundError(f"name one layer, not {len(found)}")
    target = found[0]
    if target.layout is None:
        raise HypercolumnsError(
            f"layer {target.name!r} is global (output shape {target.shape}): it has no map to "
            "show; choose a spatial layer"
        )
    kept = state.maps.values.get(target.name)
    if kept is None:
        with state.explorer.running(), torch.no_grad():
            kept = feature_maps(state.explorer.model, state.x, [target.name], as_maps=True)[
                target.name
            ]
    return target, kept[0]


def channel_grid_image(state: State, layer: str | int, count: int = 16) -> Array:
    """``count`` channels of ``layer`` on a shared scale: those that vary most on this image."""
    target, maps = feature_map(state, layer)
    spread = maps.flatten(1).std(dim=1)
    chosen = sorted(spread.argsort(descending=True)[: max(1, int(count))].tolist())
    return figure_array(plot.channel_grid(maps, chosen, layer=target))


def channel_image(state: State, layer: str | int, channel: int) -> Array:
    """One channel of ``layer`` beside the image."""
    target, maps = feature_map(state, layer)
    return figure_array(plot.feature_map(maps, int(channel), layer=target, image=state.pixels))


def mean_activation(state: State) -> torch.Tensor:
    """The mean hypercolumn activation at every pixel, ``(H, W)``: the mean over all channels
    of the dense hypercolumns, computed as a one-output linear map at each layer's resolution
    (:class:`~hypercolumns.features.linear.LinearMap`), without forming them."""
    maps = state.maps
    weights = {
        name: torch.full((1, sl.stop - sl.start), 1.0 / maps.channels)
        for name, sl in maps.slices.items()
    }
    with torch.no_grad():
        return maps.linear(LinearMap(weights, torch.zeros(1)))[0, 0]


def mean_activation_image(state: State) -> Array:
    """:func:`mean_activation` beside the image."""
    from matplotlib.figure import Figure

    mean = mean_activation(state).cpu().numpy()
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(image_array(state.pixels), interpolation="nearest")
    left.set_title(f"{state.name} {state.size[0]}x{state.size[1]}")
    im = right.imshow(mean, cmap="viridis", interpolation="nearest")
    names = ", ".join(layer.name for layer in state.layers)
    right.set_title(f"mean hypercolumn activation\n{names} ({state.maps.channels} channels)")
    for ax in (left, right):
        ax.set_xlabel("x (input pixels)")
        ax.set_ylabel("y (input pixels)")
    fig.colorbar(im, ax=right, shrink=0.85)
    return figure_array(fig)


def layer_rows(state: State) -> list[list[object]]:
    """The layer table (:data:`LAYER_COLUMNS`): every layer with a leaf index, its receptive
    field at this image's size, and whether the hypercolumn stacks it."""
    chosen = {layer.name for layer in state.layers}
    rows: list[list[object]] = []
    for layer in state.all_layers:
        if layer.index is None:
            continue
        rf = layer.rf
        flags = []
        if rf is None:
            flags.append("unknown")
        else:
            if rf.is_global:
                flags.append("global")
            if not rf.aligned:
                flags.append("misaligned")
            if not rf.uniform:
                flags.append("non-uniform")
        rows.append(
            [
                "\u2713" if layer.name in chosen else "",
                layer.index,
                layer.name,
                layer.type,
                "x".join(str(s) for s in layer.shape),
                "" if rf is None else f"{rf.size[0]}x{rf.size[1]}",
                "" if rf is None or rf.is_global else ",".join(_fmt(s) for s in rf.stride),
                "" if rf is None or rf.is_global else ",".join(_fmt(c) for c in rf.center),
                " ".join(flags),
            ]
        )
    return rows


# -- similarity and correspondence ----------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """The best match in the second image of the clicked pixel's hypercolumn.

    Attributes:
        pixel: The clicked ``(y, x)`` of the image.
        point: ``(y, x)`` of the second image's pixel of highest cosine similarity.
        score: That similarity.
        map: ``(H_target, W_target)`` the similarity to every pixel of the second image.
    """

    pixel: tuple[int, int]
    point: tuple[int, int]
    score: float
    map: torch.Tensor


def similarity(state: State, y: int, x: int) -> torch.Tensor:
    """Cosine similarity ``(H, W)`` of the hypercolumn at pixel ``(y, x)`` to every pixel's,
    from the kept layer maps (no forward pass): ``hc.similarity(model, state.x, layers,
    [[y, x]])[0]``."""
    y, x = check_pixel(state, y, x)
    return similarity_of_maps(state.maps, torch.tensor([[y, x]]), norms=state.norms)[0]


def similarity_image(state: State, y: int, x: int) -> Array:
    """:func:`similarity` as a heat map over the image, the pixel marked."""
    y, x = check_pixel(state, y, x)
    return heat_on_image(
        state.pixels,
        similarity(state, y, x),
        label=f"cosine similarity to pixel (y={y}, x={x})",
        marks=[(y, x, "white")],
    )


def correspondence(state: State, y: int, x: int) -> Match:
    """The similarity of the hypercolumn at ``(y, x)`` to every pixel of the second image
    (``state.target``) and its best match, as :func:`hypercolumns.correspond` finds it.

    Raises:
        HypercolumnsError: No second image is chosen.
    """
    y, x = check_pixel(state, y, x)
    if state.target is None:
        raise HypercolumnsError("choose a second image first (upload or pick one)")
    target = state.target
    query = torch.tensor([[y, x]])
    sim = similarity_of_maps(state.maps, query, target=target.maps, norms=target.norms)[0]
    flat = int(sim.flatten().argmax())
    width = sim.shape[1]
    return Match((y, x), (flat // width, flat % width), float(sim.flatten()[flat]), sim)


def target_image(state: State, y: int, x: int) -> Array:
    """:func:`correspondence` as a heat map over the second image, the best match marked."""
    found = correspondence(state, y, x)
    assert state.target is not None
    my, mx = found.point
    return heat_on_image(
        state.target.pixels,
        found.map,
        label=f"similarity to (y={y}, x={x}); best match (y={my}, x={mx})",
        marks=[(my, mx, "#00ff66")],
    )


# -- PCA image and k-means clusters -------------------------------------------------------------

CLUSTER_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
)  # fmt: skip
"""One colour per cluster (``tab20``'s strong then light halves)."""


def _names(state: State) -> list[str]:
    return [layer.name for layer in state.layers]


def pca_rgb(state: State, points: int = 1000) -> torch.Tensor:
    """The first three principal components of the image's hypercolumns as RGB ``(3, H, W)``
    in ``[0, 1]``: ``hc.fit_pca_image(model, state.x, layers, points=points).rgb(state.x)``,
    drawn through the kept maps (without a second forward pass)."""
    with state.explorer.running():
        fitted = fit_pca_image(state.explorer.model, state.x, _names(state), points=points)
    with torch.no_grad():
        return state.maps.linear(fitted.rgb_map)[0].clamp_(0, 1)


def pca_image(state: State, points: int = 1000) -> Array:
    """:func:`pca_rgb` beside the image."""
    rgb = image_array(pca_rgb(state, points))
    gap = np.full((rgb.shape[0], 4, 3), 255, dtype=np.uint8)
    both = np.concatenate([image_array_of(state), gap, rgb], axis=1)
    from PIL import Image

    scale = max(1, round(900 / both.shape[1]))
    size = (both.shape[1] * scale, both.shape[0] * scale)
    return np.asarray(Image.fromarray(both).resize(size, Image.Resampling.NEAREST))


def kmeans(state: State, k: int, points: int = 1000) -> torch.Tensor:
    """The cluster ``(H, W)`` int64 of every pixel's hypercolumn: ``hc.fit_kmeans(model,
    state.x, layers, k, points=points)`` on this image, assigned through the kept maps (as
    ``.assign(state.x)``, without a second forward pass)."""
    k = int(k)
    if not 2 <= k <= len(CLUSTER_COLOURS):
        raise OptionError(f"k must be between 2 and {len(CLUSTER_COLOURS)}, got {k}")
    with state.explorer.running():
        fitted = fit_kmeans(state.explorer.model, state.x, _names(state), k, points=points)
    with torch.no_grad():
        return state.maps.linear(fitted.linear_map)[0].argmax(0)


def kmeans_image(state: State, k: int) -> Array:
    """:func:`kmeans` over the image, beside it."""
    k = int(k)
    return labels_on_image(state.pixels, kmeans(state, k), CLUSTER_COLOURS[:k])


# -- scribble segmentation ------------------------------------------------------------------------

SCRIBBLE_CLASSES = {
    "red": "#e41a1c",
    "blue": "#377eb8",
    "green": "#4daf4a",
    "yellow": "#ffd92f",
}
"""The brush colours of the scribble view, one per class (the name is the class's name)."""

_TOLERANCE = 60.0  # largest RGB distance of a painted pixel to its class colour


def _layer_array(layer: Any) -> np.ndarray[Any, Any]:
    if isinstance(layer, str | Path):
        from PIL import Image

        with Image.open(layer) as img:
            return np.asarray(img.convert("RGBA"))
    return np.asarray(layer)


def scribble_labels(
    strokes: Mapping[str, Any] | Sequence[Any] | None,
    size: tuple[int, int],
    classes: Mapping[str, str] = SCRIBBLE_CLASSES,
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The class of every painted pixel, ``(H, W)`` uint8: the index in ``classes`` of the
    brush colour, 255 where nothing is painted.

    Args:
        strokes: The editor's value (a mapping with ``layers``, as Gradio's ``ImageEditor``
            gives it) or its layers: ``(h, w, 4)`` RGBA arrays (or image files) where painted
            pixels are opaque; later layers paint over earlier ones. Layers of another size
            than the image are resized (nearest).
        size: ``(H, W)`` of the image.
        classes: Class name to brush colour.

    A pixel counts when it is at least half opaque and its colour is within a small distance
    of a class colour (the anti-aliased rims of strokes are left out).
    """
    from PIL import Image

    if isinstance(strokes, Mapping):
        strokes = strokes.get("layers") or []
    height, width = size
    out = np.full((height, width), 255, dtype=np.uint8)
    table = np.array(
        [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in classes.values()], dtype=np.float32
    )
    for layer in strokes or []:
        arr = _layer_array(layer)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise OptionError(f"a stroke layer is an (H, W, 4) RGBA image, got {arr.shape}")
        if arr.shape[:2] != (height, width):
            resized = Image.fromarray(arr.astype(np.uint8)).resize(
                (width, height), Image.Resampling.NEAREST
            )
            arr = np.asarray(resized)
        rgb = arr[..., :3].astype(np.float32)
        opaque = arr[..., 3] >= 128 if arr.shape[2] == 4 else np.ones((height, width), bool)
        dist = ((rgb[:, :, None, :] - table[None, None]) ** 2).sum(-1)
        nearest = dist.argmin(-1)
        close = np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= _TOLERANCE**2
        painted = opaque & close
        out[painted] = nearest[painted].astype(np.uint8)
    return out


def scribble(
    state: State,
    labels: np.ndarray[Any, Any] | torch.Tensor,
    classes: Sequence[str] = tuple(SCRIBBLE_CLASSES),
    points: int = 1024,
) -> Probe:
    """A linear probe fitted on the painted pixels of the image: ``hc.fit_probe(model,
    state.x, labels[None], layers, points=points, classes=...)`` over the classes painted
    (in the order of ``classes``; labels are renumbered to them, 255 unpainted).

    When the explorer knows how its model was built (:attr:`Explorer.record`), the probe
    records it, so that ``hypercolumns probe predict`` rebuilds the model from the saved file.

    Raises:
        OptionError: Fewer than two classes are painted, or ``labels`` is not the image's size.
    """
    lab = torch.as_tensor(np.asarray(labels)).long()
    if tuple(lab.shape) != state.size:
        raise OptionError(f"labels must be {state.size}, got {tuple(lab.shape)}")
    used = sorted(int(v) for v in torch.unique(lab).tolist() if v != 255)
    if any(v >= len(classes) for v in used):
        raise OptionError(f"labels must be below {len(classes)} or 255, got {used}")
    if len(used) < 2:
        raise OptionError(
            "paint strokes of at least two classes (two brush colours) before fitting"
        )
    target = torch.full_like(lab, 255)
    for k, v in enumerate(used):
        target[lab == v] = k
    with state.explorer.running():
        probe = fit_probe(
            state.explorer.model,
            state.x,
            target[None],
            _names(state),
            points=points,
            classes=[classes[v] for v in used],
        )
    if state.explorer.record:
        probe.meta.update(state.explorer.record)
    return probe


def segmentation(state: State, probe: Probe) -> torch.Tensor:
    """The probe's class ``(H, W)`` of every pixel of the image (``probe.segment``)."""
    with state.explorer.running():
        return probe.segment(state.x)[0]


def segmentation_image(state: State, probe: Probe) -> Array:
    """:func:`segmentation` over the image, one colour per class (its brush colour)."""
    palette = [SCRIBBLE_CLASSES.get(name, colour(k)) for k, name in enumerate(probe.classes)]
    return labels_on_image(state.pixels, segmentation(state, probe), palette, names=probe.classes)


def save_probe(probe: Probe, folder: str | Path | None = None) -> Path:
    """``probe.save`` into ``folder`` (a new temporary one by default) as
    ``scribble-probe.safetensors``; returns the path."""
    where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="hc-probe-"))
    return probe.save(where / "scribble-probe.safetensors")
