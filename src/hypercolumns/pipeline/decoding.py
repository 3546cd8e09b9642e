"""Decoding: a :class:`Source` in, a :class:`Decoded` image out, read, preprocessed and (for
sparse stores) its points sampled, as :class:`DecodeOptions` say. It needs no model, so it runs
in worker processes and Ray tasks, and it never raises: an unusable image carries its error.

Decoding warns about nothing where it runs (a worker process, a Ray task): what
:func:`~hypercolumns.images.load_image` would warn about an image (:class:`ImageWarning`: a file
of several frames) goes into its record, under ``warnings``, for the process that writes the
store to show (:meth:`~hypercolumns.pipeline._sink.Sink.put`). The notes are collected for the
decoding thread alone (:func:`~hypercolumns.images.image_notes`), as it runs beside the model.

Points are sampled per image from a seed derived from the run's seed and the image's key, so
an image gets the same points whatever batch or engine it lands in, in this run or a resumed one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypercolumns.errors import HypercolumnsError
from hypercolumns.features.points import sample_points
from hypercolumns.images import Preprocessing, image_notes, load_image, per_channel, read_mask
from hypercolumns.models import input_channels, normalization
from hypercolumns.pipeline.settings import Settings
from hypercolumns.pipeline.sources import Source

__all__ = ["DecodeOptions", "Decoded", "decode", "file_stat"]


@dataclass(frozen=True)
class DecodeOptions:
    """Everything :func:`decode` needs, without the model (it runs in worker processes)."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    normalization: str
    resize: str | None = None
    crop: str | None = None
    points: int | None = None
    seed: int = 0
    max_bytes: int | None = None

    @classmethod
    def for_model(
        cls, model: nn.Module, settings: Settings, *, max_bytes: int | None = None
    ) -> DecodeOptions:
        """How to prepare images for ``model`` as ``settings`` say: the input channels it
        takes, and the normalisation of ``settings`` or else its own; images whose decoded
        tensor would take more than ``max_bytes`` (the run's memory budget) are refused before
        they are decoded.

        Raises:
            ModelError: The model's input channels cannot be told.
            ImageError: The mean or std does not fit the channels.
        """
        norm = normalization(model)
        channels = input_channels(model)
        user = settings.mean is not None or settings.std is not None
        return cls(
            channels=channels,
            mean=per_channel(
                norm.mean if settings.mean is None else settings.mean, channels, "mean"
            ),
            std=per_channel(norm.std if settings.std is None else settings.std, channels, "std"),
            interpolation=norm.interpolation,
            normalization="user" if user else norm.source,
            resize=settings.resize,
            crop=settings.crop,
            points=settings.points,
            seed=settings.seed,
            max_bytes=max_bytes,
        )


@dataclass(frozen=True)
class Decoded:
    """A decoded image, ready for the model (or the reason it is not).

    Attributes:
        source: Where it came from.
        image: ``(C, H, W)`` float32 normalised input, or ``None`` after an error.
        record: JSON-ready facts stored with the image (source, mask, preprocessing).
        points: Sparse: ``(N, 2)`` int64 ``(y, x)`` pixels to sample.
        labels: Sparse with a mask: ``(N,)`` int64 label of each point.
        error: Why the image cannot be used, or ``None``.
    """

    source: Source
    image: torch.Tensor | None
    record: dict[str, Any]
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    error: str | None = None


def file_stat(path: Path) -> dict[str, int]:
    """The size and modification time of ``path``, recorded with each image so that a rerun
    notices a file replaced under the same key."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _image_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _load(source: Source, options: DecodeOptions) -> tuple[torch.Tensor, Preprocessing]:
    return load_image(
        source.path,
        channels=options.channels,
        mean=options.mean,
        std=options.std,
        resize=options.resize,
        crop=options.crop,
        interpolation=options.interpolation,
        max_bytes=options.max_bytes,
        budget_name="the run's memory budget, max_memory / --max-memory",
    )


def decode(source: Source, options: DecodeOptions) -> Decoded:
    """Read and preprocess one image, and sample its points; errors become ``Decoded.error``."""
    record: dict[str, Any] = {"source": str(source.path)}
    if source.error is not None:
        return Decoded(source, None, record, error=source.error)
    if source.mask is not None:
        record["mask"] = str(source.mask)
    try:
        record["source_stat"] = file_stat(source.path)
        with image_notes() as notes:  # this thread's alone: decoding runs beside the model
            x, prep = _load(source, options)
        if notes:
            record["warnings"] = notes
        prep = replace(prep, normalization=options.normalization)
        record["preprocessing"] = prep.to_dict()
        points = labels = None
        if options.points is not None:
            mask = None
            if source.mask is not None:
                mask = read_mask(
                    source.mask, prep.original_size, resize=options.resize, crop=options.crop
                )
                assert tuple(mask.shape) == prep.size
            seed = _image_seed(options.seed, source.key)
            labels = None if mask is None else mask[None]
            pts = sample_points(options.points, 1, prep.size, labels, seed)
            points = pts[0].long()
            if mask is not None:
                labels = mask[points[:, 0], points[:, 1]]
        return Decoded(source, x[0], record, points, labels)
    except Exception as err:  # one bad file must not stop the run: record why
        reason = str(err) if isinstance(err, HypercolumnsError) else f"{type(err).__name__}: {err}"
        return Decoded(source, None, record, error=reason)
