"""Exceptions and warnings. Every error a user can cause is a :class:`HypercolumnsError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "GeometryWarning",
    "HypercolumnsError",
    "ImageError",
    "InputSizeError",
    "LayerNotFoundError",
    "MeasurementError",
    "ModelError",
    "StoreError",
    "WeightsError",
    "closest",
]


class HypercolumnsError(Exception):
    """Base class: something the caller asked for cannot be done; the message says why and what
    to do instead. The command-line tool prints it as one line and exits non-zero."""


class ImageError(HypercolumnsError):
    """An image file cannot be read, or cannot be made into an input for the model."""


class ModelError(HypercolumnsError):
    """A model spec cannot be resolved, built, or run."""


class WeightsError(HypercolumnsError):
    """A weights file cannot be read or does not fit the model."""


class LayerNotFoundError(HypercolumnsError):
    """A layer name, index or pattern matches no layer of the model."""


class InputSizeError(HypercolumnsError):
    """The input is too small for the model, or otherwise of the wrong shape."""


class StoreError(HypercolumnsError):
    """An on-disk store cannot be created, written or read, or belongs to another run."""


class MeasurementError(HypercolumnsError):
    """A gradient measurement cannot be made (clipped receptive field, unit off the map, ...)."""


class GeometryWarning(UserWarning):
    """An operation's receptive-field geometry is not known; the affected layers are unknown."""


def closest(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``word`` (for "did you mean" hints)."""
    pool = list(dict.fromkeys(candidates))
    near = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if len(near) < n:
        low = word.lower()
        near += [c for c in pool if low and low in c.lower() and c not in near][: n - len(near)]
    return near
