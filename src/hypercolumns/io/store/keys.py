"""Image keys: the names images have in a store (``cats/001.jpg``).

A key is a relative path. In a dense store it is the image's array path, so no key may be a
folder of another (``x.png`` and ``x.png/y.png``), and no part may be a name Zarr keeps for its
own metadata. :func:`check_key` checks one key; :func:`nesting` finds the key a new one would
nest with.
"""

from __future__ import annotations

from hypercolumns.errors import StoreError
from hypercolumns.io.store._book import BOOK

__all__ = ["RESERVED", "check_key", "folders_of", "nesting"]

RESERVED = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
"""Names Zarr gives its own metadata: no part of a key may be one of them."""


def check_key(key: str) -> None:
    """Raise :class:`StoreError` unless ``key`` can name an image in a store: a relative path
    of non-empty parts, none ``.`` or ``..`` or a name Zarr reserves, not inside
    ``_hypercolumns``."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == BOOK or "\\" in key:
        raise StoreError(
            f"{key!r} cannot be an image key: keys are relative paths like 'cats/001.jpg' "
            f"(no empty, '.' or '..' parts, not under {BOOK}/)"
        )
    reserved = RESERVED.intersection(parts)
    if reserved:
        raise StoreError(
            f"{key!r} cannot be an image key: Zarr keeps its own metadata under the name "
            f"{sorted(reserved)[0]!r}; rename the file"
        )


def nesting(key: str, keys: set[str], folders: set[str]) -> str | None:
    """A key of ``keys`` that ``key`` would nest with (one a folder of the other), or
    ``None``. ``folders`` holds every proper prefix of the keys in ``keys``."""
    if key in folders:
        return next(k for k in sorted(keys) if k.startswith(key + "/"))
    parts = key.split("/")
    for n in range(1, len(parts)):
        prefix = "/".join(parts[:n])
        if prefix in keys:
            return prefix
    return None


def folders_of(key: str) -> list[str]:
    """The proper prefixes of ``key``: ``a/b/c.png`` -> ``a``, ``a/b``."""
    parts = key.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]
