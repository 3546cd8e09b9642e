"""Pictures for the page, as ``(H, W, 3)`` uint8 arrays: figures rasterised, boxes drawn.

The receptive-field boxes are drawn with Pillow on an enlarged copy of the image (a few
milliseconds, so a click stays fast); a margin in grey shows where boxes reach past the image
into the padding. Other views are :mod:`hypercolumns.viz.plot` figures, rasterised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "Box",
    "boxes_on_image",
    "colour",
    "figure_array",
    "heat_on_image",
    "image_array",
    "labels_on_image",
    "profile",
]

COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
"""One colour per chosen layer, in order (matplotlib's ``tab10``)."""

Array = np.ndarray[Any, np.dtype[np.uint8]]
Box = tuple[float, float, float, float]
_VIEW = 512  # the longer side of the drawn receptive-field view, in screen pixels


def colour(k: int) -> str:
    """The colour of the ``k``-th chosen layer."""
    return COLOURS[k % len(COLOURS)]


def image_array(pixels: torch.Tensor) -> Array:
    """``(C, H, W)`` pixels in ``[0, 1]`` (1 or 3 channels) as ``(H, W, 3)`` uint8."""
    arr = pixels.detach().float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    arr = arr.transpose(1, 2, 0)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def figure_array(fig: Figure, *, dpi: int = 100) -> Array:
    """A matplotlib figure rasterised to ``(H, W, 3)`` uint8."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgba[..., :3])


def boxes_on_image(
    pixels: torch.Tensor,
    boxes: Sequence[Box],
    colours: Sequence[str],
    *,
    point: tuple[int, int] | None = None,
) -> Array:
    """Boxes ``(y0, x0, y1, x1)`` (first and last input pixel, may reach past the image) drawn
    on the image, which is enlarged so that the longer side is about 512 screen pixels; the
    canvas grows to hold every box, the part outside the image in grey. ``point`` ``(y, x)``
    is marked with a cross."""
    img = image_array(pixels)
    h, w = img.shape[:2]
    lo_y = min([0.0, *(b[0] for b in boxes)])
    lo_x = min([0.0, *(b[1] for b in boxes)])
    hi_y = max([h - 1.0, *(b[2] for b in boxes)])
    hi_x = max([w - 1.0, *(b[3] for b in boxes)])
    extent = max(hi_y - lo_y + 1, hi_x - lo_x + 1)
    scale = max(1, round(_VIEW / extent))
    pad = 4  # screen pixels around the whole canvas, so that outer box lines show

    def to_screen(y: float, x: float) -> tuple[float, float]:
        return ((x - lo_x) * scale + pad, (y - lo_y) * scale + pad)

    width = round((hi_x - lo_x + 1) * scale) + 2 * pad
    height = round((hi_y - lo_y + 1) * scale) + 2 * pad
    canvas = Image.new("RGB", (width, height), (200, 200, 200))
    photo = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    left, top = to_screen(0, 0)
    canvas.paste(photo, (round(left), round(top)))
    draw = ImageDraw.Draw(canvas)
    line = max(2, scale // 2)
    for (y0, x0, y1, x1), c in zip(boxes, colours, strict=True):
        a = to_screen(y0, x0)
        b = to_screen(y1 + 1, x1 + 1)  # a box covers whole pixels: up to the last one's edge
        draw.rectangle((a, (b[0] - 1, b[1] - 1)), outline=c, width=line)
    if point is not None:
        cx, cy = to_screen(point[0] + 0.5, point[1] + 0.5)
        r = max(3, scale)  # small: the first layer's box is only a few pixels wide
        for fill, width_ in (("black", 3), ("white", 1)):
            draw.line(((cx - r, cy), (cx + r, cy)), fill=fill, width=width_)
            draw.line(((cx, cy - r), (cx, cy + r)), fill=fill, width=width_)
    return np.asarray(canvas)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    v = hex_colour.lstrip("#")
    return (int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16))


def profile(
    values: torch.Tensor,
    slices: Mapping[str, slice],
    colours: Sequence[str],
    *,
    title: str,
    size: tuple[int, int] = (300, 760),
) -> Array:
    """A hypercolumn ``(C,)`` as a profile over its channels, one coloured block per layer,
    each labelled with its layer and channel count; ``size`` ``(H, W)`` in screen pixels.

    Drawn with Pillow and numpy (a click redraws it: a figure library would take most of the
    click's time). Where there are more channels than screen columns, a column shows the
    largest and smallest value of its channels, so no peak is lost.
    """
    from PIL import ImageFont

    arr = values.detach().float().cpu().numpy().astype(np.float64)
    height, width = size
    left, right, top, bottom = 64, 10, 58, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    lo, hi = min(0.0, float(arr.min())), max(0.0, float(arr.max()))
    if hi <= lo:
        hi = lo + 1.0
    n = len(arr)

    def row(v: float) -> int:
        return top + round((hi - v) / (hi - lo) * (plot_h - 1))

    owner = np.zeros(n, dtype=np.int64)
    for k, sl in enumerate(slices.values()):
        owner[sl] = k
    cols = np.minimum((np.arange(n) * plot_w) // max(n, 1), plot_w - 1)
    base = row(0.0)
    for col in np.unique(cols):
        members = np.nonzero(cols == col)[0]
        vmax, vmin = float(arr[members].max()), float(arr[members].min())
        rgb = _rgb(colours[int(owner[members[np.argmax(np.abs(arr[members]))]])])
        width_ = max(1, plot_w // max(n, 1))
        a, b = sorted((row(max(vmax, 0.0)), row(min(vmin, 0.0))))
        a, b = min(a, base), max(b, base)
        canvas[a : b + 1, left + col : left + col + width_] = rgb
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)
    small = ImageFont.load_default(size=11)
    draw.rectangle((left - 1, top - 1, left + plot_w, top + plot_h), outline=(90, 90, 90))
    draw.line((left, base, left + plot_w - 1, base), fill=(150, 150, 150))
    for k, (name, sl) in enumerate(slices.items()):
        x0 = left + (sl.start * plot_w) // max(n, 1)
        x1 = left + (sl.stop * plot_w) // max(n, 1)
        if k:
            draw.line((x0, top, x0, top + plot_h), fill=(170, 170, 170))
        label = f"{name} ({sl.stop - sl.start})"  # rows alternate: narrow blocks' labels
        y = top - 4 - 15 * ((len(slices) - 1 - k) % 2)  # do not overlap
        draw.text(((x0 + x1) / 2, y), label, fill=colours[k], font=small, anchor="md")
    for v in (lo, 0.0, hi) if lo < 0 else (0.0, hi):
        draw.text((left - 6, row(v)), f"{v:.3g}", fill=(60, 60, 60), font=small, anchor="rm")
    draw.text((left + plot_w / 2, height - 6), f"hypercolumn channel (0..{n - 1})",
              fill=(60, 60, 60), font=font, anchor="md")  # fmt: skip
    draw.text((left, 4), title, fill=(0, 0, 0), font=font)
    draw.text((6, top + plot_h / 2), "activation", fill=(60, 60, 60), font=small, anchor="lm")
    return np.asarray(img)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: str) -> None:
    for ink, width_ in (("black", 4), (fill, 2)):
        draw.line(((cx - r, cy), (cx + r, cy)), fill=ink, width=width_)
        draw.line(((cx, cy - r), (cx, cy + r)), fill=ink, width=width_)


def heat_on_image(
    pixels: torch.Tensor,
    values: torch.Tensor,
    *,
    label: str,
    marks: Sequence[tuple[int, int, str]] = (),
    cmap: str = "magma",
) -> Array:
    """A map ``(H, W)`` over the image ``(C, H, W)`` as a heat map (its own range, from its
    minimum, dark, to its maximum, bright, written in the key below), enlarged so that the
    longer side is about 448 screen pixels; ``marks`` ``(y, x, colour)`` are drawn as crosses.
    Pillow and numpy only (a click redraws it)."""
    import matplotlib
    from PIL import ImageFont

    img = image_array(pixels).astype(np.float32)
    v = values.detach().float().cpu().numpy()
    lo, hi = float(v.min()), float(v.max())
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    lut = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0
    heat = lut[np.clip((t * 255).round().astype(np.int64), 0, 255)]
    blend = (0.2 * img + 0.8 * heat).round().clip(0, 255).astype(np.uint8)
    h, w = blend.shape[:2]
    scale = max(1, round(448 / max(h, w)))
    photo = Image.fromarray(blend).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    key_h = 34
    canvas = Image.new("RGB", (w * scale, h * scale + key_h), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for y, x, ink in marks:
        _cross(draw, (x + 0.5) * scale, (y + 0.5) * scale, max(6, 3 * scale), ink)
    bar_w = min(160, w * scale // 3)
    ramp = lut[np.linspace(0, 255, bar_w).round().astype(np.int64)].astype(np.uint8)
    bar = np.repeat(ramp[None], 10, axis=0)
    top = h * scale + 4
    canvas.paste(Image.fromarray(bar), (4, top))
    font = ImageFont.load_default(size=11)
    draw.text((4, top + 12), f"{lo:.2f}", fill=(0, 0, 0), font=font)
    draw.text((4 + bar_w, top + 12), f"{hi:.2f}", fill=(0, 0, 0), font=font, anchor="ra")
    draw.text((bar_w + 12, top), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def labels_on_image(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    colours: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    alpha: float = 0.55,
) -> Array:
    """Integer labels ``(H, W)`` over the image, one colour per label (``colours[label]``),
    beside the image itself; ``names`` of the labels are written in a key below."""
    from PIL import ImageFont

    img = image_array(pixels)
    lab = labels.detach().cpu().numpy().astype(np.int64)
    table = np.array([_rgb(c) for c in colours], dtype=np.float32)
    over = (1 - alpha) * img.astype(np.float32) + alpha * table[lab % len(colours)]
    gap = np.full((img.shape[0], 4, 3), 255, dtype=np.uint8)
    both = np.concatenate([img, gap, over.round().clip(0, 255).astype(np.uint8)], axis=1)
    h, w = both.shape[:2]
    scale = max(1, round(900 / w))
    photo = Image.fromarray(both).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    if not names:
        return np.asarray(photo)
    canvas = Image.new("RGB", (w * scale, h * scale + 22), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    x = 4
    for k, name in enumerate(names):
        draw.rectangle((x, h * scale + 5, x + 12, h * scale + 17), fill=colours[k % len(colours)])
        draw.text((x + 16, h * scale + 4), name, fill=(0, 0, 0), font=font)
        x += 24 + round(draw.textlength(name, font=font))
    return np.asarray(canvas)
