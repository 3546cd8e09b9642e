"""Exceptions and warnings. Every error a user can cause is a :class:`HypercolumnsError`.

Each subclass also derives from the builtin that fits it, so ``except ValueError`` (or
``LookupError``, ``RuntimeError``) catches it too, as Python users expect.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "GeometryWarning",
    "HypercolumnsError",
    "ImageError",
    "ImageWarning",
    "InputSizeError",
    "LayerNotFoundError",
    "MeasurementError",
    "ModelError",
    "OptionError",
    "OutputTooLargeError",
    "StoreError",
    "StoreWarning",
    "WeightsError",
    "closest",
]


class HypercolumnsError(Exception):
    """Base class: something the caller asked for cannot be done; the message says why and what
    to do instead. The command-line tool prints it as one line and exits non-zero."""


class OptionError(HypercolumnsError, ValueError):
    """An argument has a value the function cannot take (a bad choice, count, shape or type)."""


class ImageError(HypercolumnsError, ValueError):
    """An image file cannot be read, or cannot be made into an input for the model."""


class ModelError(HypercolumnsError, ValueError):
    """A model spec cannot be resolved, built, or run."""


class WeightsError(HypercolumnsError, ValueError):
    """A weights file cannot be read or does not fit the model."""


class LayerNotFoundError(HypercolumnsError, LookupError):
    """A layer name, index or pattern matches no layer of the model."""


class InputSizeError(HypercolumnsError, ValueError):
    """The input is too small for the model, or otherwise of the wrong shape."""


class StoreError(HypercolumnsError, RuntimeError):
    """An on-disk store cannot be created, written or read, or belongs to another run."""


class MeasurementError(HypercolumnsError, RuntimeError):
    """A gradient measurement cannot be made (clipped receptive field, unit off the map, ...)."""


class OutputTooLargeError(HypercolumnsError, MemoryError):
    """An output would take more memory than allowed.

    Attributes:
        need: Bytes the output would take (an estimate made before computing it).
        limit: Bytes allowed.
        detail: What makes it that large, in words (e.g. ``"3 image(s), 192 channels"``).
        what: What would take it: ``"the output"``, or e.g. ``"decoding 'big.png'"``.
    """

    def __init__(
        self, message: str, *, need: int, limit: int, detail: str = "", what: str = "the output"
    ) -> None:
        super().__init__(message)
        self.need = need
        self.limit = limit
        self.detail = detail
        self.what = what


class GeometryWarning(UserWarning):
    """An operation's receptive-field geometry is not known; the affected layers are unknown."""


class ImageWarning(UserWarning):
    """An image file holds more than its model input shows: an animated GIF, WebP or PNG, or a
    multi-page TIFF, of which only the first frame is used."""


class StoreWarning(UserWarning):
    """A store holds something it should not, or lacks something it should: committed images
    removed by hand, or images whose files changed since they were committed."""


def closest(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``word`` (for "did you mean" hints)."""
    pool = list(dict.fromkeys(candidates))
    near = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if len(near) < n:
        low = word.lower()
        near += [c for c in pool if low and low in c.lower() and c not in near][: n - len(near)]
    return near
