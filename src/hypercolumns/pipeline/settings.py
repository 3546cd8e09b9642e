"""What a run computes: the :class:`Settings` that a store records and a resumed run must match."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from hypercolumns.errors import HypercolumnsError
from hypercolumns.features.align import Align
from hypercolumns.io.store import Kind

__all__ = ["Settings"]


def _hashable(value: Any) -> Hashable:
    """``value`` in a hashable form that equal values share: mappings as frozen sets of their
    items, lists and tuples as tuples, sets as frozen sets, anything else as it is (so still
    unhashable if it is, like a NumPy array)."""
    if isinstance(value, Mapping):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(_hashable(v) for v in value)
    hashable: Hashable = value
    return hashable


class _Kwargs(Mapping[str, Any]):
    """Keyword arguments, read-only: a shallow copy of the mapping given, so that adding to or
    replacing in that mapping later changes no :class:`Settings` (a list inside stays shared).
    Equal to any mapping with the same items, hashable when its values are (lists and dicts
    inside count by value), and it pickles (Ray sends settings to its actors)."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(_hashable(self._items))

    def __repr__(self) -> str:
        return repr(self._items)


@dataclass(frozen=True)
class Settings:
    """What a run computes; all of it but the weights' file name must match to continue a store.

    Settings are frozen and hashable: ``model_kwargs`` is kept as a read-only (shallow) copy of
    the mapping given, and a list given for ``layers``, ``size``, ``mean`` or ``std`` (or inside
    ``model_kwargs``) is hashed by its items. Hashing fails only for a value that is unhashable
    whatever holds it (a NumPy array in ``model_kwargs``).

    Attributes:
        model: Model spec (``timm:NAME``, ``torchvision:NAME``, ``module:factory``,
            ``file.py:factory``).
        layers: Layer spec: names, indices, globs, ``"3,8"``.
        model_kwargs: Keyword arguments of the model factory (kept read-only).
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
        object.__setattr__(self, "model_kwargs", _Kwargs(self.model_kwargs))

    def __hash__(self) -> int:  # the generated hash fails on a dict or a list
        return hash(tuple(_hashable(getattr(self, f.name)) for f in fields(self)))

    @property
    def kind(self) -> Kind:
        return "dense" if self.points is None else "sparse"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self.dtype == "float16" else torch.float32
