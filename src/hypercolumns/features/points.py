"""Pixels to compute sparse hypercolumns at: drawn (uniform or stratified, seeded), given, or
read from a file.

Points are ``(y, x)`` pixel coordinates, float64, ``(B, N, 2)``; pixel ``i``'s centre is at
``i`` and an image of height ``H`` spans ``[-0.5, H - 0.5]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypercolumns.errors import OptionError

__all__ = ["check_points", "read_points", "sample_points"]


def sample_points(
    n: int,
    batch: int,
    size: tuple[int, int],
    labels: torch.Tensor | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """``(B, n, 2)`` distinct pixels per image, uniform, or stratified by ``labels``.

    Args:
        n: Pixels per image, drawn without replacement.
        batch: Images ``B``.
        size: ``(H, W)`` of the images.
        labels: ``(B, H, W)`` int labels: as equal a number of pixels per label present as the
            labels' sizes allow; pixels with negative labels are never drawn.
        seed: Seed of the draw; ``None`` for a fresh one.
    """
    height, width = size
    if n < 1 or n > height * width:
        raise OptionError(
            f"points={n} cannot be sampled without replacement from a {height}x{width} image: "
            f"give 1 to {height * width} points"
        )
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    if labels is not None and (
        not isinstance(labels, torch.Tensor)
        or labels.shape != (batch, height, width)
        or labels.is_floating_point()
    ):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise OptionError(
            f"labels must be an int tensor of shape (B={batch}, {height}, {width}), got "
            f"{got}{'' if not isinstance(labels, torch.Tensor) else ' ' + str(labels.dtype)}"
        )
    flat_all: list[torch.Tensor] = []
    for b in range(batch):
        if labels is None:
            flat = torch.randperm(height * width, generator=gen)[:n]
        else:
            flat = _stratified(n, labels[b].reshape(-1).cpu(), gen, b)
        flat_all.append(flat)
    flat_t = torch.stack(flat_all)
    return torch.stack((flat_t // width, flat_t % width), dim=-1).to(torch.float64)


def _stratified(n: int, labels: torch.Tensor, gen: torch.Generator, b: int) -> torch.Tensor:
    """``n`` pixels, as equal a number per label present as the labels' sizes allow (pixels
    with negative labels are never chosen)."""
    present = [int(v) for v in torch.unique(labels) if v >= 0]
    pools = [(labels == v).nonzero().squeeze(1) for v in present]
    available = sum(len(p) for p in pools)
    if available < n:
        raise OptionError(
            f"image {b} has {available} labelled (non-negative) pixels, fewer than points={n}"
        )
    quota = [0] * len(pools)
    left, open_ = n, list(range(len(pools)))
    while left:  # water-filling: equal shares, a small label gives its surplus to the others
        share = max(1, left // len(open_))
        for i in list(open_):
            take = min(share, len(pools[i]) - quota[i], left)
            quota[i] += take
            left -= take
            if quota[i] == len(pools[i]):
                open_.remove(i)
            if not left:
                break
    chosen = [
        p[torch.randperm(len(p), generator=gen)[:q]] for p, q in zip(pools, quota, strict=True)
    ]
    return torch.cat(chosen)


def check_points(
    points: torch.Tensor, batch: int, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Given ``(B, N, 2)`` or ``(N, 2)`` (shared by the batch) ``(y, x)`` pixel coordinates as
    float64 ``(B, N, 2)`` on ``device``, every point inside the ``size`` image."""
    height, width = size
    pts = points
    if pts.dim() == 2:
        pts = pts.unsqueeze(0).expand(batch, -1, -1)
    if pts.dim() != 3 or pts.shape[0] != batch or pts.shape[2] != 2:
        raise OptionError(
            f"points must have shape (B={batch}, N, 2) or (N, 2) as (y, x), got "
            f"{tuple(points.shape)}"
        )
    if pts.is_complex() or pts.dtype == torch.bool:
        raise OptionError(f"points must be int or float coordinates, got {pts.dtype}")
    pts = pts.to(device=device, dtype=torch.float64)
    bad = ~(
        (pts[..., 0] >= -0.5)
        & (pts[..., 0] <= height - 0.5)
        & (pts[..., 1] >= -0.5)
        & (pts[..., 1] <= width - 0.5)
    )
    if bool(bad.any()):
        b, n = (int(i) for i in bad.nonzero()[0])
        y, x = (float(v) for v in pts[b, n])
        raise OptionError(
            f"point {n} of image {b}, (y, x) = ({y:g}, {x:g}), is outside the "
            f"{height}x{width} image (y must lie in [-0.5, {height - 0.5}], x in "
            f"[-0.5, {width - 0.5}]); {int(bad.sum())} point(s) are outside in all"
        )
    return pts


def read_points(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """The ``(N, 2)`` int64 ``(y, x)`` pixels listed in a file, each inside a ``size`` image.

    Args:
        path: ``.npy`` (an ``(N, 2)`` array), ``.json`` (a list of ``[y, x]`` pairs) or
            ``.csv`` (``y,x`` lines, optionally under a ``y,x`` or ``x,y`` header); whole
            pixel coordinates.
        size: ``(H, W)`` of the image the points are on: ``0 <= y < H``, ``0 <= x < W``.

    Raises:
        HypercolumnsError: The file cannot be read, holds no ``(y, x)`` pairs, holds fractional
            or non-finite coordinates, or a point lies outside the image.
    """
    where = str(path)
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"no points file {where!r} (a .json, .npy or .csv of (y, x) pixel pairs)")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".json":
            arr = _json_points(json.loads(path.read_text()), where)
        else:
            arr = _csv_points(path, where)
    except (OSError, ValueError) as err:
        raise OptionError(f"cannot read points from {where!r}: {err}") from err
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise OptionError(f"points in {where!r} must be N (y, x) pairs, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise OptionError(f"points in {where!r} must be whole pixel coordinates")
    h, w = size
    outside = (arr[:, 0] < 0) | (arr[:, 0] > h - 1) | (arr[:, 1] < 0) | (arr[:, 1] > w - 1)
    if outside.any():
        k = int(np.argmax(outside))
        y, x = (int(v) for v in arr[k])
        raise OptionError(
            f"point {k} (y={y}, x={x}) in {where!r} is outside the {h}x{w} input "
            f"(y in 0..{h - 1}, x in 0..{w - 1}); {int(outside.sum())} of {len(arr)} are outside"
        )
    return torch.as_tensor(arr, dtype=torch.long)


_JSON_FORM = "a JSON list of [y, x] pairs, e.g. [[10, 20], [30, 5]]"


def _json_points(data: object, where: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The ``(N, 2)`` points of a parsed JSON file: a list of ``[y, x]`` pairs."""
    if not isinstance(data, list) or not all(
        isinstance(p, list) and all(isinstance(v, int | float) for v in p) for p in data
    ):
        got = {"dict": "a JSON object", "list": "a list of other things", "str": "a string"}
        kind = got.get(type(data).__name__, "a single value")
        raise OptionError(f"points in {where!r} must be {_JSON_FORM}; got {kind}")
    return np.asarray(data, dtype=np.float64)


def _csv_points(path: Path, where: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The ``(N, 2)`` points of a CSV file: ``y,x`` lines, under an optional ``y,x`` or
    ``x,y`` header."""
    with path.open() as fh:
        first = fh.readline()
    header = [c.strip().strip('"').lower() for c in first.split(",")]
    skip, swap = 0, False
    if any(c and not _number(c) for c in header):
        if sorted(header) != ["x", "y"]:
            raise ValueError(
                f"the header {first.strip()!r} is not 'y,x' (or 'x,y'); a points CSV is y,x "
                "lines, optionally under a y,x header"
            )
        skip, swap = 1, header == ["x", "y"]
    arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
    return np.ascontiguousarray(arr[:, ::-1]) if swap and arr.shape[1:] == (2,) else arr


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
