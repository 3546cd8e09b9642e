"""Similarity and correspondence: which pixels look the same to the network.

The cosine similarity of two hypercolumns is ``q . h(p) / (|q| |h(p)|)``. The dot products with
every pixel of an image are a per-pixel linear map of its hypercolumns whose rows are the query
hypercolumns, so they go through :class:`~hypercolumns.features.linear.LayerMaps` (each layer's
block applied at the layer's own resolution, only the ``Q`` outputs resampled), and the norms
``|h(p)|`` are exact there too (:meth:`~hypercolumns.features.linear.LayerMaps.sq_norms`; the
norm of an interpolated vector is not the interpolation of the norms). The result equals dense
hypercolumns followed by the cosine, to float rounding, without ever forming them.

The hypercolumn is compared raw: every layer's channels weigh as their activations do, so
the layers with the largest activations dominate. Per-layer ``normalize="l2"`` is not offered:
it scales each sampled hypercolumn, which the per-layer route cannot do exactly (see
:mod:`hypercolumns.features.linear`); compute ``hc.hypercolumns(..., normalize="l2")`` and the
cosine yourself for that.

:func:`correspond` finds, for each source pixel, the target pixel of highest cosine similarity,
a chunk of source points at a time so that memory stays bounded on large images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hypercolumns._checks import budget, positive_int
from hypercolumns.errors import InputSizeError, OptionError
from hypercolumns.features.align import Align, check_align
from hypercolumns.features.linear import LayerMaps, LinearMap, layer_maps
from hypercolumns.features.points import sample_points
from hypercolumns.rf.layers import LayerSpec

__all__ = ["CHUNK_BYTES", "Correspondence", "correspond", "similarity", "similarity_of_maps"]

CHUNK_BYTES = 256 * 2**20
"""Working memory of one chunk of :func:`correspond` by default (its score maps)."""

_EPS = 1e-12  # a hypercolumn shorter than this is zero: its similarity to anything is 0
_MAPS_PER_POINT = 4  # float32 (H, W) maps one source point holds at once in a chunk


@dataclass(frozen=True)
class Correspondence:
    """The result of :func:`correspond`: for each source point, its best target pixel.

    Attributes:
        source_points: ``(N, 2)`` ``(y, x)`` source pixels (int64 when they were drawn or
            given as integers, else float32).
        points: ``(N, 2)`` int64 ``(y, x)`` target pixels, the best match of each source point.
        scores: ``(N,)`` cosine similarity of each pair, in ``[-1, 1]``.
        mutual: ``(N,)`` bool with ``mutual=True``, else ``None``: whether the best source
            match of the target pixel is back within one pixel (``|dy|, |dx| <= 1``) of the
            source point. All pairs are kept; ``c.points[c.mutual]`` are the mutual ones.
    """

    source_points: torch.Tensor
    points: torch.Tensor
    scores: torch.Tensor
    mutual: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _image(x: object, name: str) -> torch.Tensor:
    """One image as a ``(1, C, H, W)`` float batch."""
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputSizeError(f"{name} must be one image, (1, C, H, W) or (C, H, W); got {got}")
    if not x.is_floating_point():
        raise InputSizeError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert it first (e.g. "
            "x.float() / 255, then normalise), or read files with hc.load_image"
        )
    return x


def _pixels(
    points: object, size: tuple[int, int], name: str, image: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``points`` as given (``(N, 2)``; one ``(y, x)`` pair is ``(1, 2)``) and as float64, each
    inside the ``size`` image (``[-0.5, H - 0.5]`` by ``[-0.5, W - 0.5]``)."""
    pts = points if isinstance(points, torch.Tensor) else None
    if pts is None:
        try:
            pts = torch.as_tensor(points)
        except (TypeError, ValueError, RuntimeError) as err:
            raise OptionError(
                f"{name} must be an (N, 2) tensor of (y, x) pixels, got {type(points).__name__}"
            ) from err
    if pts.dim() == 1 and pts.shape[0] == 2:
        pts = pts.unsqueeze(0)
    if pts.dim() != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise OptionError(
            f"{name} must be an (N, 2) tensor of (y, x) pixels with N >= 1, got shape "
            f"{tuple(pts.shape)}"
        )
    if pts.is_complex() or pts.dtype == torch.bool:
        raise OptionError(f"{name} must be int or float (y, x) coordinates, got {pts.dtype}")
    coords = pts.detach().to("cpu", torch.float64)
    height, width = size
    inside = (
        (coords[:, 0] >= -0.5)
        & (coords[:, 0] <= height - 0.5)
        & (coords[:, 1] >= -0.5)
        & (coords[:, 1] <= width - 0.5)
    )
    if not bool(inside.all()):
        k = int((~inside).nonzero()[0])
        y, x = (float(v) for v in coords[k])
        raise OptionError(
            f"{name} point {k}, (y, x) = ({y:g}, {x:g}), is outside the {height}x{width} "
            f"{image} (y in 0..{height - 1}, x in 0..{width - 1}); "
            f"{int((~inside).sum())} of {len(coords)} are outside"
        )
    return pts.detach().cpu(), coords


def _inverse_norms(maps: LayerMaps) -> torch.Tensor:
    """``1 / |h(p)|`` at every pixel of the one image of ``maps``, ``(H * W,)`` (0 where the
    hypercolumn is zero)."""
    norms = maps.sq_norms()[0].sqrt_().flatten()
    return torch.where(norms > _EPS, norms.reciprocal(), torch.zeros_like(norms))


def _queries(maps: LayerMaps, at: torch.Tensor) -> tuple[LinearMap, torch.Tensor]:
    """The map whose rows are the hypercolumns of ``maps`` at ``at`` ``(n, 2)``, and
    ``1 / |q|`` ``(n,)`` (0 for a zero hypercolumn)."""
    columns = maps.columns(at)[0]
    norms = maps.sq_norms(at)[0].sqrt_()
    inverse = torch.where(norms > _EPS, norms.reciprocal(), torch.zeros_like(norms))
    rows = {name: columns[:, s].contiguous() for name, s in maps.slices.items()}
    return LinearMap(rows, columns.new_zeros(columns.shape[0])), inverse


def similarity_of_maps(
    source: LayerMaps,
    query: torch.Tensor | Sequence[Sequence[float]],
    *,
    target: LayerMaps | None = None,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`similarity` from layer maps already computed (one image each, the same layers):
    no forward pass, so an app can keep the maps of an image and answer each query at the cost
    of a ``Q``-output linear map and the target's norms.

    Args:
        source: The maps of the query image (:func:`~hypercolumns.features.linear.layer_maps`
            or :meth:`~hypercolumns.features.linear.LinearMapper.maps` of one image).
        query: ``(Q, 2)`` ``(y, x)`` pixels of the source image, each inside it.
        target: The maps of the image compared to (same layers); by default ``source``.
        norms: ``(H_target, W_target)`` the norms ``|h(p)|`` of the compared image's
            hypercolumns (``maps.sq_norms()[0].sqrt()``), when kept from before: they do not
            depend on the query, and reading them is most of the cost of a query.

    Returns:
        ``(Q, H_target, W_target)`` float32, in ``[-1, 1]``.

    Raises:
        OptionError: A query point outside the source image, a malformed ``query``, maps of
            more than one image, or a target of other layers.
    """
    maps = source if target is None else target
    for name, given in (("source", source), ("target", maps)):
        if given.batch != 1:
            raise OptionError(f"{name} maps must be of one image, got a batch of {given.batch}")
    if dict(maps.slices) != dict(source.slices):
        raise OptionError(
            "source and target maps must be of the same layers, got "
            f"{list(source.slices)} and {list(maps.slices)}"
        )
    _, at = _pixels(query, source.input_size, "query", "source image")
    with torch.no_grad():
        m, inverse = _queries(source, at)
        out = maps.linear(m)[0]
        if norms is None:
            inverse_over = _inverse_norms(maps)
        else:
            if tuple(norms.shape) != tuple(out.shape[1:]):
                raise OptionError(
                    f"norms must be {tuple(out.shape[1:])}, the compared image's size, got "
                    f"{tuple(norms.shape)}"
                )
            flat = norms.flatten().to(out)
            inverse_over = torch.where(flat > _EPS, flat.reciprocal(), torch.zeros_like(flat))
        out.mul_(inverse_over.view(1, *out.shape[1:]))
        out.mul_(inverse.view(-1, 1, 1))
        return out.clamp_(-1.0, 1.0)


def similarity(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec,
    query: torch.Tensor | Sequence[Sequence[float]],
    *,
    target: torch.Tensor | None = None,
    align: Align = "rf",
    max_bytes: int | None = None,
) -> torch.Tensor:
    """Cosine similarity of the hypercolumns at ``query`` pixels of ``x`` to every pixel of
    ``target`` (by default ``x`` itself), exact at each layer's own resolution.

    Equal to dense :func:`~hypercolumns.features.columns.hypercolumns` of both images followed
    by the cosine, to float rounding, at about the cost of the network's forward pass alone.
    The hypercolumns are compared raw (no per-layer ``normalize``, see the module docstring);
    a zero hypercolumn has similarity 0 to everything.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        x: One image, ``(1, C, H, W)`` or ``(C, H, W)``.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        query: ``(Q, 2)`` ``(y, x)`` pixels of ``x`` (int or float; one pair may be given
            alone), each inside the image.
        target: One image, of any size; by default ``x`` (then the network runs once).
        align: ``"rf"`` or ``"half-pixel"``.
        max_bytes: Largest output to allocate; by default half the memory available now.

    Returns:
        ``(Q, H_target, W_target)`` float32, in ``[-1, 1]``.

    Raises:
        OptionError: A query point outside ``x``, or a malformed ``query``.
        InputSizeError: ``x`` or ``target`` is not one image.
    """
    x = _image(x, "x")
    other = None if target is None else _image(target, "target")
    check_align(align)
    budget(max_bytes, "max_bytes")
    _pixels(query, (x.shape[-2], x.shape[-1]), "query", "image x")  # before the forward pass
    with torch.no_grad():
        source = layer_maps(model, x, layers, align=align, max_bytes=max_bytes)
        maps = None
        if other is not None:
            maps = layer_maps(model, other, layers, align=align, max_bytes=max_bytes)
    return similarity_of_maps(source, query, target=maps)


def _best(
    queries: LayerMaps, at: torch.Tensor, over: LayerMaps, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the ``at`` ``(n, 2)`` pixels of ``queries``, the flat index of the pixel of
    ``over`` of highest cosine similarity, and that similarity; ``chunk`` points at a time."""
    inverse_over = _inverse_norms(over)
    index = torch.empty(len(at), dtype=torch.long)
    score = torch.empty(len(at))
    for start in range(0, len(at), chunk):
        part = at[start : start + chunk]
        m, inverse = _queries(queries, part)
        dots = over.linear(m)[0].flatten(1)
        dots.mul_(inverse_over)
        best, where = dots.max(1)
        index[start : start + len(part)] = where.cpu()
        score[start : start + len(part)] = (best * inverse).clamp_(-1.0, 1.0).cpu()
        del dots
    return index, score


def correspond(
    model: nn.Module,
    source: torch.Tensor,
    target: torch.Tensor,
    layers: LayerSpec,
    points: int | torch.Tensor | Sequence[Sequence[float]],
    *,
    mutual: bool = False,
    align: Align = "rf",
    chunk: int | None = None,
    max_bytes: int | None = None,
    seed: int = 0,
) -> Correspondence:
    """For each source point, the target pixel whose hypercolumn is most similar (cosine).

    The search runs a chunk of source points at a time: each chunk's similarity maps over the
    target are computed as in :func:`similarity`, reduced to their maximum and dropped, so
    memory stays bounded whatever the number of points. With ``mutual=True`` the search runs
    back from every matched target pixel over the whole source, in chunks too.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found.
        source: One image, ``(1, C, H, W)`` or ``(C, H, W)``.
        target: One image, of any size.
        layers: As for :func:`~hypercolumns.features.columns.hypercolumns`.
        points: Source pixels: an int ``N`` to draw uniformly without replacement (seeded by
            ``seed``), or an ``(N, 2)`` tensor of ``(y, x)`` pixels.
        mutual: Also check each match back (see :attr:`Correspondence.mutual`).
        align: ``"rf"`` or ``"half-pixel"``.
        chunk: Source points per chunk; by default as many as fit in ``max_bytes``.
        max_bytes: Working memory of one chunk (its float32 similarity maps); by default
            :data:`CHUNK_BYTES` (256 MiB).
        seed: Seed of the draw when ``points`` is an int.

    Returns:
        :class:`Correspondence`.

    Raises:
        OptionError: A point outside the source image, a malformed ``points`` or ``chunk``.
        InputSizeError: ``source`` or ``target`` is not one image.
    """
    source = _image(source, "source")
    target = _image(target, "target")
    check_align(align)
    budget(max_bytes, "max_bytes")
    if chunk is not None:
        positive_int(chunk, "chunk")
    src_size = (int(source.shape[-2]), int(source.shape[-1]))
    tgt_size = (int(target.shape[-2]), int(target.shape[-1]))
    if isinstance(points, int) and not isinstance(points, bool):
        given = sample_points(points, 1, src_size, seed=seed)[0].long()
        at = given.double()
    elif isinstance(points, bool):
        raise OptionError("points must be an int N or an (N, 2) tensor of (y, x) pixels")
    else:
        given, at = _pixels(points, src_size, "source", "source image")
        given = given.float() if given.is_floating_point() else given.long()

    def step(size: tuple[int, int]) -> int:
        if chunk is not None:
            return chunk
        per_point = _MAPS_PER_POINT * 4 * size[0] * size[1]
        return max(1, (max_bytes or CHUNK_BYTES) // per_point)

    with torch.no_grad():
        src = layer_maps(model, source, layers, align=align, max_bytes=max_bytes)
        tgt = layer_maps(model, target, layers, align=align, max_bytes=max_bytes)
        index, scores = _best(src, at, tgt, step(tgt_size))
        width = tgt_size[1]
        matched = torch.stack((index // width, index % width), dim=1)
        agree = None
        if mutual:
            pixels, inverse = torch.unique(index, return_inverse=True)
            back_at = torch.stack((pixels // width, pixels % width), dim=1).double()
            back, _ = _best(tgt, back_at, src, step(src_size))
            back_yx = torch.stack((back // src_size[1], back % src_size[1]), dim=1)[inverse]
            agree = ((back_yx.double() - at).abs() <= 1.0).all(dim=1)
    return Correspondence(given, matched, scores, agree)
