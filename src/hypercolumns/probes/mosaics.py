"""Texture mosaics with exact label masks: data made offline to fit and evaluate pixel probes.

Each image is a Voronoi partition of random cells; each cell is filled with one of a few
textures (gratings of two orientations, a checkerboard, smooth noise, dots), at a random phase
and tinted with a random colour, so that colour alone does not tell the classes apart and a
pixel's class is decided by its neighbourhood: what hypercolumns describe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hypercolumns.errors import OptionError

__all__ = ["TEXTURES", "texture_mosaics"]

TEXTURES = ("horizontal", "vertical", "checkerboard", "blobs", "dots")


def _texture(kind: str, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """An ``(h, w)`` pattern in ``[0, 1]``."""
    y = torch.arange(h, dtype=torch.float32)[:, None]
    x = torch.arange(w, dtype=torch.float32)[None, :]
    phase = float(torch.rand((), generator=gen)) * 2 * math.pi
    if kind == "horizontal":
        return (0.5 + 0.5 * torch.sin(2 * math.pi * y / 6 + phase)).expand(h, w)
    if kind == "vertical":
        return (0.5 + 0.5 * torch.sin(2 * math.pi * x / 6 + phase)).expand(h, w)
    if kind == "checkerboard":
        shift = int(torch.randint(0, 8, (), generator=gen))
        return ((((y + shift) // 4) + ((x + shift) // 4)) % 2).float()
    if kind == "blobs":
        noise = torch.rand(1, 1, h // 8 + 2, w // 8 + 2, generator=gen)
        smooth = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        return smooth.clamp(0, 1)
    if kind == "dots":
        dy = int(torch.randint(0, 7, (), generator=gen))
        dx = int(torch.randint(0, 7, (), generator=gen))
        return ((((y + dy) % 7 - 3) ** 2 + ((x + dx) % 7 - 3) ** 2) <= 2).float()
    raise OptionError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")


def texture_mosaics(
    n: int,
    size: int | tuple[int, int] = 96,
    *,
    classes: int = 4,
    cells: int = 6,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` mosaics of ``classes`` textures and their exact masks.

    Args:
        n: Images.
        size: ``S`` or ``(H, W)``.
        classes: How many of :data:`TEXTURES` to use (2 to 5), in that order.
        cells: Voronoi cells per image.
        seed: Seed of everything random.

    Returns:
        ``(n, 3, H, W)`` float32 images in ``[0, 1]`` and ``(n, H, W)`` int64 labels.
    """
    if not 2 <= classes <= len(TEXTURES):
        raise OptionError(f"classes must lie in 2..{len(TEXTURES)}, got {classes}")
    if n < 1 or cells < 1:
        raise OptionError(f"n and cells must be at least 1, got n={n}, cells={cells}")
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.empty(n, 3, h, w)
    masks = torch.empty(n, h, w, dtype=torch.long)
    for i in range(n):
        centres = torch.rand(cells, 2, generator=gen) * torch.tensor([h, w])
        dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (
            xx[None] - centres[:, 1, None, None]
        ) ** 2
        cell = dist.argmin(0)
        kinds = torch.randint(0, classes, (cells,), generator=gen)
        kinds[: min(cells, classes)] = torch.randperm(classes, generator=gen)[: min(cells, classes)]
        image = torch.empty(3, h, w)
        for c in range(cells):
            pattern = _texture(TEXTURES[int(kinds[c])], h, w, gen)
            low, high = torch.rand(2, 3, generator=gen).sort(0).values
            tint = low[:, None, None] + (high - low)[:, None, None] * pattern
            inside = cell == c
            image[:, inside] = tint[:, inside]
        images[i] = image
        masks[i] = kinds[cell]
    return images, masks
