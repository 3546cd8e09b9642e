"""What a run computes: the :class:`Settings` that a store records and a resumed run must match."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from hypercolumns.errors import HypercolumnsError
from hypercolumns.features.columns import Align
from hypercolumns.io.store import Kind

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """What a run computes; all of it but the weights' file name must match to continue a store.

    Attributes:
        model: Model spec (``timm:NAME``, ``torchvision:NAME``, ``module:factory``,
            ``file.py:factory``).
        layers: Layer spec: names, indices, globs, ``"3,8"``.
        model_kwargs: Keyword arguments of the model factory.
        weights: Local state dict to load (its SHA-256 is recorded, not its name).
        pretrained: Use the library's pretrained weights.
        points: ``None`` for dense hypercolumns (``.zarr``), else pixels sampled per image
            (``.parquet``).
        seed: Seed of the point sampling (combined with each image's key).
        align: ``"rf"`` or ``"half-pixel"``.
        dtype: ``"float32"`` or ``"float16"``, as stored.
        size: Dense output ``(H, W)``; ``None``: each image's own input size.
        resize: ``"S"`` or ``"H,W"`` (see :func:`~hypercolumns.images.load_image`).
        crop: ``"center:S"`` or ``"center:H,W"``.
        mean: Normalisation mean; ``None``: the model's.
        std: Normalisation std; ``None``: the model's.
    """

    model: str
    layers: str | Sequence[str | int]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    pretrained: bool = False
    points: int | None = None
    seed: int = 0
    align: Align = "rf"
    dtype: Literal["float32", "float16"] = "float32"
    size: tuple[int, int] | None = None
    resize: str | None = None
    crop: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise HypercolumnsError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.align not in ("rf", "half-pixel"):
            raise HypercolumnsError(f"align must be 'rf' or 'half-pixel', got {self.align!r}")
        if self.points is not None and (isinstance(self.points, bool) or self.points < 1):
            raise HypercolumnsError(f"points must be a positive count, got {self.points!r}")
        if self.points is not None and self.size is not None:
            raise HypercolumnsError(
                "size sets the grid of dense hypercolumns; sparse points are input pixels, so "
                "give one or the other"
            )

    @property
    def kind(self) -> Kind:
        return "dense" if self.points is None else "sparse"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self.dtype == "float16" else torch.float32
