"""Training data for the uses of hypercolumns: images with their targets, and hypercolumns
sampled at their pixels.

:func:`examples` accepts what users have: a ``(N, C, H, W)`` tensor, a sequence of tensors or of
image paths, or the CSV list that ``hypercolumns extract`` reads (``path`` and ``mask``
columns); targets as label masks (``(H, W)`` int, an ``ignore_index`` for unlabelled pixels, so
scribbles work as well as full masks) or float maps ``(K, H, W)`` for regression.
:func:`sample` draws pixels per image (stratified by class for labels, seeded) and reads the
exact hypercolumns there from one forward pass per image; :class:`Standardizer` holds the
per-channel statistics fitted on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hypercolumns.errors import OptionError
from hypercolumns.features.align import Align
from hypercolumns.features.linear import LinearMapper
from hypercolumns.features.points import sample_points
from hypercolumns.images import load_image, read_mask
from hypercolumns.models import input_channels
from hypercolumns.pipeline.sources import expand_inputs
from hypercolumns.rf.layers import Layer, LayerSpec

__all__ = ["Example", "Images", "Samples", "Standardizer", "Targets", "Task", "examples", "sample"]

Task = Literal["classify", "regress"]
Images = torch.Tensor | str | Path | Sequence[torch.Tensor | str | Path]
Targets = None | torch.Tensor | Sequence[torch.Tensor | str | Path]


@dataclass(frozen=True)
class Example:
    """One image and its target.

    Attributes:
        name: The file, or ``"image i"`` for a tensor.
        image: ``(1, C, H, W)`` model input.
        target: ``(H, W)`` int64 labels, ``(K, H, W)`` float32 values, or ``None``.
    """

    name: str
    image: torch.Tensor
    target: torch.Tensor | None = None


def _as_batch(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[0] != 1 or not t.is_floating_point():
        raise OptionError(
            f"{name} must be a float (C, H, W) or (1, C, H, W) tensor, got "
            f"{t.dtype} {tuple(t.shape)}"
        )
    return t


def _image_items(
    model: nn.Module, images: Images, resize: str | int | None, crop: str | None
) -> list[tuple[str, torch.Tensor | Path, Path | None]]:
    """``(name, tensor or path, mask path from a CSV list)`` per image."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise OptionError(
                f"images must be a (N, C, H, W) tensor or a sequence of images, got shape "
                f"{tuple(images.shape)}"
            )
        return [(f"image {i}", images[i : i + 1], None) for i in range(images.shape[0])]
    if isinstance(images, str | Path):
        images = [images]
    items: list[tuple[str, torch.Tensor | Path, Path | None]] = []
    for i, item in enumerate(images):
        if isinstance(item, torch.Tensor):
            items.append((f"image {i}", _as_batch(item, f"image {i}"), None))
        elif Path(item).suffix.lower() in (".csv", ".txt") or Path(item).is_dir():
            items += [(str(s.path), s.path, s.mask) for s in expand_inputs([item])]
        else:
            items.append((str(item), Path(item), None))
    if not items:
        raise OptionError("no images given")
    return items


def _target(
    target: torch.Tensor | str | Path,
    name: str,
    size: tuple[int, int],
    original: tuple[int, int],
    resize: str | int | None,
    crop: str | None,
) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        return read_mask(target, original, resize=resize, crop=crop)
    if target.dim() == 2 and not target.is_floating_point():
        t = target.long()
    elif target.dim() == 3 and target.is_floating_point():
        t = target.float()
    else:
        raise OptionError(
            f"the target of {name} must be (H, W) int labels or (K, H, W) float values, got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    if tuple(t.shape[-2:]) != size:
        raise OptionError(
            f"the target of {name} is {t.shape[-2]}x{t.shape[-1]}, its image {size[0]}x{size[1]}"
        )
    return t


class ExampleStream:
    """The examples of :func:`examples`, each image read when iteration reaches it, so that
    one image at a time is in memory (``probe predict`` over a data set).

    Attributes:
        names: The images' names, in order, known before any is read.
    """

    def __init__(
        self,
        model: nn.Module,
        items: list[tuple[str, torch.Tensor | Path, Path | None]],
        targets: Sequence[torch.Tensor | str | Path] | None,
        resize: str | int | None,
        crop: str | None,
    ) -> None:
        self._model, self._items, self._targets = model, items, targets
        self._resize, self._crop = resize, crop
        self.names = [name for name, _, _ in items]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Example]:
        channels = input_channels(self._model)
        resize, crop = self._resize, self._crop
        for i, (name, source, mask) in enumerate(self._items):
            if isinstance(source, torch.Tensor):
                x, original = source, tuple(source.shape[-2:])
            else:
                x, prep = load_image(
                    source, self._model, channels=channels, resize=resize, crop=crop
                )
                original = prep.original_size
            size = (int(x.shape[-2]), int(x.shape[-1]))
            given = mask if self._targets is None else self._targets[i]
            target = (
                None
                if given is None
                else _target(given, name, size, (int(original[0]), int(original[1])), resize, crop)
            )
            yield Example(name, x, target)


def stream_examples(
    model: nn.Module,
    images: Images,
    targets: Targets = None,
    *,
    resize: str | int | None = None,
    crop: str | None = None,
) -> ExampleStream:
    """:func:`examples`, read one at a time as they are iterated: the inputs are listed and
    the counts checked here, each image and target read (and its errors raised) when reached."""
    items = _image_items(model, images, resize, crop)
    if targets is not None and any(mask is not None for _, _, mask in items):
        raise OptionError("give targets, or a CSV list with a mask column, not both")
    if isinstance(targets, torch.Tensor):
        targets = list(targets.unbind(0))
    if targets is not None and len(targets) != len(items):
        raise OptionError(f"{len(items)} images but {len(targets)} targets")
    return ExampleStream(model, items, targets, resize, crop)


def examples(
    model: nn.Module,
    images: Images,
    targets: Targets = None,
    *,
    resize: str | int | None = None,
    crop: str | None = None,
) -> list[Example]:
    """The images as model inputs, each with its target.

    Args:
        model: The model the inputs are for (channels and normalisation of image files).
        images: A ``(N, C, H, W)`` tensor; a sequence of ``(C, H, W)`` / ``(1, C, H, W)``
            tensors or of image paths; or a ``.csv`` list with ``path`` and ``mask`` columns
            (or a folder, glob or ``.txt`` list, as ``hypercolumns extract`` reads them).
        targets: ``(N, H, W)`` int labels or ``(N, K, H, W)`` float values, or a sequence of
            ``(H, W)`` / ``(K, H, W)`` tensors or of label-image paths, one per image; ``None``
            for the CSV list's masks (or no targets).
        resize: Applied to image files (and their masks, nearest), as ``load_image`` does.
        crop: Likewise.

    Raises:
        OptionError: Shapes or counts that do not match, naming the image.
        ImageError: An unreadable image or mask, or a mask whose size differs from its image.
    """
    return list(stream_examples(model, images, targets, resize=resize, crop=crop))


@dataclass(frozen=True)
class Samples:
    """Hypercolumns sampled at pixels of several images.

    Attributes:
        features: ``(M, C)`` float32 hypercolumns.
        targets: ``(M,)`` int64 labels, ``(M, K)`` float32 values, or ``None``.
        slices: Layer name to its channels.
        layers: The layers, in the order given.
        counts: Samples drawn from each image, in order.
    """

    features: torch.Tensor
    targets: torch.Tensor | None
    slices: dict[str, slice]
    layers: list[Layer]
    counts: list[int]


def sample(
    model: nn.Module,
    items: Sequence[Example],
    layers: LayerSpec,
    *,
    points: int,
    seed: int = 0,
    align: Align = "rf",
    ignore_index: int = 255,
    progress: Callable[[int, int], None] | None = None,
) -> Samples:
    """Hypercolumns at ``points`` pixels of each example: stratified by class (pixels labelled
    ``ignore_index`` or negative never drawn; every labelled pixel when there are fewer),
    uniform for value targets or none. Image ``i`` draws with seed ``seed + i``;
    ``progress(done, total)`` is called after each image.

    Raises:
        OptionError: ``points`` below 1, or no labelled pixel in any image.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise OptionError(f"points must be a positive int (pixels per image), got {points!r}")
    mappers: dict[tuple[int, ...], LinearMapper] = {}
    features, targets, counts = [], [], []
    first: LinearMapper | None = None
    for i, ex in enumerate(items):
        key = tuple(ex.image.shape[1:])
        if key not in mappers:
            mappers[key] = LinearMapper(model, layers, key[1:], in_channels=key[0], align=align)
        mapper = mappers[key]
        first = first or mapper
        height, width = key[1:]
        labels = None
        if ex.target is not None and ex.target.dim() == 2:
            labels = ex.target.clone()
            labels[labels == ignore_index] = -1
            available = int((labels >= 0).sum())
            if available == 0:
                counts.append(0)
                if progress is not None:
                    progress(i + 1, len(items))
                continue
            n = min(points, available)
        else:
            n = min(points, height * width)
        pts = sample_points(
            n, 1, (height, width), None if labels is None else labels[None], seed + i
        )
        features.append(mapper.maps(ex.image).columns(pts)[0])
        counts.append(n)
        if ex.target is not None:
            yx = pts[0].long()
            at = ex.target[..., yx[:, 0], yx[:, 1]]
            targets.append(at if at.dim() == 1 else at.T)
        if progress is not None:
            progress(i + 1, len(items))
    if not features:
        raise OptionError(
            f"no labelled pixel in any of the {len(items)} image(s): every pixel is "
            f"ignore_index={ignore_index} or negative"
        )
    assert first is not None
    return Samples(
        torch.cat(features),
        torch.cat(targets) if targets else None,
        dict(first.slices),
        list(first.layers),
        counts,
    )


@dataclass(frozen=True)
class Standardizer:
    """Per-channel standardisation ``(h - mean) / std``, fitted on samples.

    Attributes:
        mean: ``(C,)``.
        std: ``(C,)``, at least a small fraction of the largest (constant channels stay finite).
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardizer:
        """Fitted on ``(M, C)`` samples."""
        mean = features.double().mean(0)
        std = features.double().std(0, correction=0)
        floor = max(float(std.max()) * 1e-6, 1e-12)
        return cls(mean.float(), std.clamp_min(floor).float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.to(features)) / self.std.to(features)
