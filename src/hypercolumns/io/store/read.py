"""Reading stores: :func:`open_store` gives a read-only mapping from image key to its
hypercolumns, :class:`DenseStore` (Zarr arrays) or :class:`SparseStore` (:class:`SparseEntry`).
Only committed images are listed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hypercolumns.errors import StoreError
from hypercolumns.io.store import _book
from hypercolumns.io.store._book import BOOK, PENDING, Kind, store_kind


@dataclass(frozen=True)
class SparseEntry:
    """One image of a sparse store.

    Attributes:
        features: ``(N, C)`` hypercolumns.
        points: ``(N, 2)`` int32 ``(y, x)`` pixel coordinates.
        labels: ``(N,)`` int32 labels of the points, or ``None`` without masks.
    """

    features: np.ndarray[Any, Any]
    points: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any] | None


class _Store:
    """What both kinds of store share: configuration, records, failures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = _book.read_config(path)
        self._records, _ = _book.committed(path)

    @property
    def kind(self) -> Kind:
        kind: Kind = self.config["kind"]
        return kind

    @property
    def slices(self) -> dict[str, slice]:
        """Layer name to its channels in the hypercolumns."""
        return {name: slice(a, b) for name, (a, b) in self.config["channels"].items()}

    def record(self, key: str) -> dict[str, Any]:
        """What the store knows about image ``key``: source, preprocessing, shape, bytes."""
        if key not in self._records:
            raise KeyError(key)
        return dict(self._records[key])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Images that failed and are not in the store: ``key``, ``source``, ``reason``."""
        latest = {f["key"]: f for f in _book.read_lines(self.path / BOOK / "failures.jsonl")}
        return [f for k, f in latest.items() if k not in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} images)"


class DenseStore(_Store, Mapping[str, Any]):
    """A read-only mapping from image key to its ``(C, H, W)`` ``zarr.Array`` (read lazily:
    slice it, or ``np.asarray(store[key])`` for the whole array)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import zarr

        self._group = zarr.open_group(str(path), mode="r")

    def __getitem__(self, key: str) -> Any:
        if key not in self._records:
            raise KeyError(key)
        return self._group[key]


class SparseStore(_Store, Mapping[str, SparseEntry]):
    """A read-only mapping from image key to its :class:`SparseEntry` (features, points,
    labels). For the whole data set at once, read the folder with pyarrow or pandas."""

    def __getitem__(self, key: str) -> SparseEntry:
        import pyarrow.parquet as pq

        if key not in self._records:
            raise KeyError(key)
        rec = self._records[key]
        part = self.path / rec["part"]
        if not part.exists():  # committed, not yet moved beside the others (a crash)
            part = self.path / BOOK / PENDING / rec["part"]
        parquet = pq.ParquetFile(part)
        table = parquet.read_row_groups(rec["row_groups"])
        features = table.column("features").combine_chunks()
        width = features.type.list_size
        values = features.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        points = np.stack([table.column(c).to_numpy() for c in ("y", "x")], axis=1).astype(np.int32)
        labels = (
            table.column("label").to_numpy().astype(np.int32)
            if "label" in table.column_names
            else None
        )
        return SparseEntry(values, points, labels)


def open_store(path: str | Path) -> DenseStore | SparseStore:
    """Open a store for reading: a mapping from image key to its hypercolumns.

    Only committed images are listed (see the module docstring); the listing is a snapshot of
    the store when it was opened.

    Args:
        path: A ``.zarr`` (dense) or ``.parquet`` (sparse) store written by ``hypercolumns
            extract`` or :func:`hypercolumns.pipeline.run`.

    Returns:
        :class:`DenseStore` (key to a ``(C, H, W)`` ``zarr.Array``) or :class:`SparseStore`
        (key to :class:`SparseEntry`); both have ``config``, ``slices``, ``record(key)`` and
        ``failures``.

    Raises:
        StoreError: ``path`` is not a store of the kind its name says.
    """
    path = Path(path)
    kind = store_kind(path)
    if kind is None:
        raise StoreError(f"cannot tell the kind of store {str(path)!r}: name it .zarr or .parquet")
    if not path.is_dir():
        inside = next((p for p in path.parents if store_kind(p) and (p / BOOK).is_dir()), None)
        if path.is_file() and inside is not None:
            raise StoreError(
                f"{str(path)!r} is a file inside the store {str(inside)!r}; open the store "
                "itself, whose listing holds committed images only"
            )
        raise StoreError(f"store {str(path)!r} does not exist")
    return DenseStore(path) if kind == "dense" else SparseStore(path)
