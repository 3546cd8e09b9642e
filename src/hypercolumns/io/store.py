"""On-disk stores of hypercolumns for whole data sets: dense Zarr, sparse Parquet.

A store is a folder named by its kind:

* ``NAME.zarr``, dense: a Zarr v3 group with one ``(C, H, W)`` array per image, at the image's
  key (``cats/001.jpg``; folders become groups), chunked ``(C', 64, 64)`` and compressed
  (Blosc lz4 with byte shuffle). The run configuration is the root group's attribute
  ``hypercolumns``; each array's attribute ``hypercolumns`` holds its image's record (source
  file, preprocessing).
* ``NAME.parquet``, sparse: a Parquet data set of part files ``part-NNNNNN.parquet`` with the
  columns ``key`` (string), ``y``, ``x`` (int32 pixel coordinates), ``label`` (int32, only
  when masks stratified the points) and ``features`` (fixed-size list of float16 or float32,
  the hypercolumn), one row group per image. The run configuration and the records of the
  part's images are in each file's schema metadata (``hypercolumns``,
  ``hypercolumns.images``).

Both keep their bookkeeping in ``_hypercolumns/``, which Zarr and Parquet readers skip:
``config.json`` (the run configuration), ``manifest.jsonl`` (one line per commit),
``failures.jsonl`` (images that could not be read), ``lock`` and ``staging/``.

Commits: an image's data is written in ``staging/``, flushed to disk (fsync), moved into place
with one rename, and then committed by appending one line to the manifest (fsync again). Only
committed images exist for :func:`open_store` and for resumption; a line cut short by a crash
is no commit. When a writer opens the store it removes what a crash left behind: the staging
area, Parquet parts that no commit names, and the torn tail of the manifest. A Zarr array a
crash left in place without its commit is complete, is ignored by :func:`open_store`, and is
replaced when its image is run again.

A store remembers the run configuration that made it (model, weights digest, layers, points,
alignment, dtype, size, preprocessing); a writer with a different one is refused, with the
differences listed, unless it overwrites the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from hypercolumns.errors import StoreError

__all__ = [
    "DenseSlot",
    "DenseStore",
    "DenseWriter",
    "ImageResult",
    "SparseEntry",
    "SparseStore",
    "SparseWriter",
    "StoreWriter",
    "check_key",
    "open_store",
    "open_writer",
    "store_kind",
]

Kind = Literal["dense", "sparse"]
FORMAT = "hypercolumns-store"
FORMAT_VERSION = 1
BOOK = "_hypercolumns"
TILE = 64  # rows and columns of a dense chunk
_CHUNK_BYTES = 4 << 20
_ROW_GROUP = 1 << 20  # most rows per Parquet row group
_SUFFIXES: dict[str, Kind] = {".zarr": "dense", ".parquet": "sparse"}


def store_kind(path: str | Path) -> Kind | None:
    """``"dense"`` for a ``.zarr`` path, ``"sparse"`` for ``.parquet``, else ``None``."""
    return _SUFFIXES.get(Path(path).suffix.lower())


@dataclass(frozen=True)
class ImageResult:
    """The hypercolumns of one image, as a writer takes them.

    Attributes:
        key: The image's key in the store.
        features: Dense ``(C, H, W)`` or sparse ``(N, C)`` values.
        points: Sparse: ``(N, 2)`` integer ``(y, x)`` pixel coordinates.
        labels: Sparse with masks: ``(N,)`` integer label of each point.
        record: JSON-ready facts about the image (source file, preprocessing).
    """

    key: str
    features: np.ndarray[Any, Any]
    points: np.ndarray[Any, Any] | None = None
    labels: np.ndarray[Any, Any] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)


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


# -- bookkeeping files -----------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a last line without its newline (a torn write) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    out = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise StoreError(
                f"{path} line {number} is not valid JSON ({err.msg}); the file was changed by "
                "something else than hypercolumns"
            ) from err
    return out


def _append_line(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk: the line is there entirely, or not at all."""
    line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    with path.open("ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _drop_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / BOOK / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(
            f"{str(path)!r} is not a hypercolumns store (it has no {BOOK}/config.json)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"cannot read the configuration of store {str(path)!r}: {err}") from err
    if config.get("format") != FORMAT or config.get("kind") != store_kind(path):
        raise StoreError(
            f"{str(path)!r} is not a {store_kind(path)} hypercolumns store "
            f"(format {config.get('format')!r}, kind {config.get('kind')!r})"
        )
    return dict(config)


def _differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for k in list(stored) + [k for k in given if k not in stored]:
            out += _differences(stored.get(k), given.get(k), f"{prefix}{k}.")
        return out
    if stored != given:
        return [f"{prefix[:-1]}: {json.dumps(stored)} in the store, {json.dumps(given)} now"]
    return []


def _committed(path: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Committed images (key to record, latest commit wins) and the part files commits name."""
    images: dict[str, dict[str, Any]] = {}
    parts: set[str] = set()
    for commit in _read_lines(path / BOOK / "manifest.jsonl"):
        part = commit.get("part")
        if part:
            parts.add(part)
        for entry in commit.get("images", []):
            images[entry["key"]] = {**entry, "part": part} if part else entry
    return images, parts


def check_key(key: str) -> None:
    """Raise :class:`StoreError` unless ``key`` can name an image in a store: a relative path
    of non-empty parts, none ``.`` or ``..``, not inside ``_hypercolumns``."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == BOOK or "\\" in key:
        raise StoreError(
            f"{key!r} cannot be an image key: keys are relative paths like 'cats/001.jpg' "
            f"(no empty, '.' or '..' parts, not under {BOOK}/)"
        )


# -- reading -----------------------------------------------------------------------------------


class _Store:
    """What both kinds of store share: configuration, records, failures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = _read_config(path)
        self._records, _ = _committed(path)

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
        latest = {f["key"]: f for f in _read_lines(self.path / BOOK / "failures.jsonl")}
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
        parquet = pq.ParquetFile(self.path / rec["part"])
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
        raise StoreError(f"store {str(path)!r} does not exist")
    return DenseStore(path) if kind == "dense" else SparseStore(path)


# -- writing -----------------------------------------------------------------------------------


def _identity(config: Mapping[str, Any]) -> Any:
    return config.get("run")


class StoreWriter:
    """Writes images into a store and commits them one by one; use :func:`open_writer`.

    Attributes:
        path: The store.
        config: Its run configuration.
        done: Keys of the images committed so far (before this writer and by it).
        bytes_written: Bytes of data this writer committed.
    """

    kind: Kind

    def __init__(self, path: Path, config: Mapping[str, Any], *, overwrite: bool) -> None:
        self.path = path
        self._book = path / BOOK
        if overwrite and path.exists():
            _read_config(path)  # only ever delete a store
            self._lock = self._acquire()
            self._release()  # no other run holds it: delete the store
            shutil.rmtree(path)
        if not path.exists():
            self._create(dict(config))
        self.config = _read_config(path)
        self._lock = self._acquire()
        try:
            differ = _differences(_identity(self.config), _identity(config))
            if differ:
                raise StoreError(
                    f"store {str(path)!r} was made with another configuration ("
                    + "; ".join(differ)
                    + "); rerun with the same options to continue it, give another --out, "
                    "or --overwrite to replace it"
                )
            self._recover()
            records, _ = _committed(path)
            self.done: set[str] = set(records)
            self.bytes_written = 0
        except BaseException:
            self._release()
            raise

    # -- life cycle ---------------------------------------------------------------------------

    def _create(self, config: dict[str, Any]) -> None:
        """Build the empty store beside its destination and rename it into place."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{self.path.name}.new-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{self.path.name}.new-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            self._init_data(tmp, config)
            (tmp / BOOK / "staging").mkdir(parents=True)
            (tmp / BOOK / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / BOOK / "manifest.jsonl").touch()
            _fsync_tree(tmp)
            os.rename(tmp, self.path)
            _fsync_path(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _init_data(self, root: Path, config: dict[str, Any]) -> None:
        """Kind-specific files of a new, empty store."""

    def _acquire(self) -> Any:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return None
        fh = (self._book / "lock").open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise StoreError(
                f"another run is writing to store {str(self.path)!r}; wait for it to finish"
            ) from None
        return fh

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def _recover(self) -> None:
        """Remove what an interrupted run left: staging, torn manifest tail."""
        staging = self._book / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(exist_ok=True)
        _drop_torn_tail(self._book / "manifest.jsonl")
        _drop_torn_tail(self._book / "failures.jsonl")

    def _staging(self, suffix: str = "") -> Path:
        return self._book / "staging" / f"{uuid.uuid4().hex}{suffix}"

    def _commit(self, images: Sequence[Mapping[str, Any]], part: str | None = None) -> None:
        entry: dict[str, Any] = {"time": _now(), "images": list(images)}
        if part is not None:
            entry["part"] = part
        _append_line(self._book / "manifest.jsonl", entry)
        self.done.update(img["key"] for img in images)

    def fail(self, key: str, source: str, reason: str) -> None:
        """Record that image ``key`` (file ``source``) could not be made, and why."""
        entry = {"key": key, "source": source, "reason": reason, "time": _now()}
        _append_line(self._book / "failures.jsonl", entry)

    def write(self, result: ImageResult) -> None:
        """Write one image's hypercolumns and commit it (sparse writers may batch commits)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Commit whatever is waiting to be committed."""

    def close(self, *, flush: bool = True) -> None:
        """Commit what waits (unless ``flush`` is false), clear staging, release the lock."""
        try:
            if flush:
                self.flush()
        finally:
            shutil.rmtree(self._book / "staging", ignore_errors=True)
            self._release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # after a failed write, keep what is complete if that still works; never mask `exc`
        with contextlib.suppress(Exception):
            self.close(flush=not isinstance(exc, OSError))
        self._release()


def _chunks(
    shape: tuple[int, int, int], itemsize: int, rows: int | None = None
) -> tuple[int, int, int]:
    c, h, w = shape
    th, tw = min(h, rows or TILE), min(w, TILE)
    return max(1, min(c, _CHUNK_BYTES // (th * tw * itemsize))), th, tw


class DenseSlot:
    """One dense image being written, in staging until :meth:`DenseWriter.commit`.

    Write it whole or in horizontal bands with :meth:`write`.
    """

    def __init__(
        self,
        writer: DenseWriter,
        key: str,
        shape: tuple[int, int, int],
        dtype: str,
        record: Mapping[str, Any],
        chunk_rows: int | None = None,
    ) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        self.key, self.shape, self.dtype, self.record = key, shape, dtype, dict(record)
        self.dir = writer._staging()
        self.rows_written = 0
        self.array = zarr.create_array(
            store=str(self.dir),
            shape=shape,
            chunks=_chunks(shape, np.dtype(dtype).itemsize, chunk_rows),
            dtype=dtype,
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            fill_value=0,
            attributes={"hypercolumns": {"key": key, **self.record}},
            dimension_names=("channel", "y", "x"),
        )

    def write(self, row: int, band: np.ndarray[Any, Any]) -> None:
        """Write ``band`` ``(C, rows, W)`` at output rows ``row`` to ``row + rows``."""
        c, h, w = self.shape
        if band.ndim != 3 or band.shape[0] != c or band.shape[2] != w or row + band.shape[1] > h:
            raise StoreError(
                f"a band of shape {band.shape} at row {row} does not fit image {self.key!r} "
                f"of shape {self.shape}"
            )
        self.array[:, row : row + band.shape[1], :] = band
        self.rows_written += band.shape[1]


class DenseWriter(StoreWriter):
    """Writes a ``.zarr`` store, one committed array per image."""

    kind: Kind = "dense"

    def __init__(self, path: Path, config: Mapping[str, Any], *, overwrite: bool) -> None:
        super().__init__(path, config, overwrite=overwrite)
        self._groups: set[str] = set()  # parent groups known to exist

    def _init_data(self, root: Path, config: dict[str, Any]) -> None:
        import zarr

        zarr.open_group(str(root), mode="w", attributes={"hypercolumns": config})

    def begin(
        self,
        key: str,
        shape: tuple[int, int, int],
        dtype: str,
        record: Mapping[str, Any],
        *,
        chunk_rows: int | None = None,
    ) -> DenseSlot:
        """Start writing image ``key`` of ``shape`` ``(C, H, W)`` in staging (``chunk_rows``:
        rows per chunk, to match the bands it will be written in; 64 by default)."""
        check_key(key)
        return DenseSlot(self, key, shape, dtype, record, chunk_rows)

    def commit(self, slot: DenseSlot) -> None:
        """Move a fully written image into place and commit it."""
        import zarr

        if slot.rows_written != slot.shape[1]:
            raise StoreError(
                f"image {slot.key!r} has {slot.rows_written} of {slot.shape[1]} rows written; "
                "it cannot be committed"
            )
        _fsync_tree(slot.dir)
        nbytes = sum(f.stat().st_size for f in slot.dir.rglob("*") if f.is_file())
        target = self.path / slot.key
        parent = str(Path(slot.key).parent)
        if parent != "." and parent not in self._groups:
            zarr.open_group(str(self.path), mode="r+").require_group(parent)
            self._groups.add(parent)
        if target.exists():  # an uncommitted leftover of an interrupted run
            trash = self._staging(".old")
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(slot.dir, target)
        _fsync_path(target.parent)
        entry = {"key": slot.key, "shape": list(slot.shape), "dtype": slot.dtype}
        self._commit([{**entry, "bytes": nbytes, **slot.record}])
        self.bytes_written += nbytes

    def abort(self, slot: DenseSlot) -> None:
        """Discard an image that will not be committed."""
        shutil.rmtree(slot.dir, ignore_errors=True)

    def write(self, result: ImageResult) -> None:
        features = result.features
        if features.ndim != 3:
            raise StoreError(
                f"a dense store takes (C, H, W) hypercolumns; image {result.key!r} has shape "
                f"{features.shape}"
            )
        shape = (features.shape[0], features.shape[1], features.shape[2])
        slot = self.begin(result.key, shape, str(features.dtype), result.record)
        try:
            slot.write(0, features)
            self.commit(slot)
        except BaseException:
            self.abort(slot)
            raise


class SparseWriter(StoreWriter):
    """Writes a ``.parquet`` store; images are committed a part file at a time.

    Args:
        part_bytes: Feature bytes that fill a part file.
        part_images: Images that fill a part file.
        part_seconds: Longest time a finished image waits for its commit.
    """

    kind: Kind = "sparse"

    def __init__(
        self,
        path: Path,
        config: Mapping[str, Any],
        *,
        overwrite: bool,
        part_bytes: int = 64 << 20,
        part_images: int = 1024,
        part_seconds: float = 60.0,
    ) -> None:
        super().__init__(path, config, overwrite=overwrite)
        self.part_bytes, self.part_images, self.part_seconds = (
            part_bytes,
            part_images,
            part_seconds,
        )
        self._pending: list[ImageResult] = []
        self._pending_bytes = 0
        self._since = 0.0

    def _recover(self) -> None:
        super()._recover()
        _, parts = _committed(self.path)
        for orphan in self.path.glob("part-*.parquet"):
            if orphan.name not in parts:
                orphan.unlink()
        self._next_part = 1 + max((int(p[5:-8]) for p in parts if p[5:-8].isdigit()), default=-1)

    def write(self, result: ImageResult) -> None:
        f, pts = result.features, result.points
        if f.ndim != 2 or pts is None or pts.shape != (f.shape[0], 2):
            raise StoreError(
                f"a sparse store takes (N, C) hypercolumns with (N, 2) points; image "
                f"{result.key!r} has {f.shape} and {None if pts is None else pts.shape}"
            )
        want_labels = bool(self.config["run"].get("labels"))
        if (result.labels is not None) != want_labels:
            raise StoreError(
                f"image {result.key!r} {'lacks' if want_labels else 'has'} point labels, but "
                f"this store {'has' if want_labels else 'has no'} a label column"
            )
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(result)
        self._pending_bytes += f.nbytes
        if (
            self._pending_bytes >= self.part_bytes
            or len(self._pending) >= self.part_images
            or time.monotonic() - self._since >= self.part_seconds
        ):
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        name = f"part-{self._next_part:06d}.parquet"
        tmp = self._staging(".parquet")
        meta = {
            b"hypercolumns": json.dumps(self.config).encode(),
            b"hypercolumns.images": json.dumps(
                [{"key": r.key, **r.record} for r in pending]
            ).encode(),
        }
        tables = [_table(r) for r in pending]
        images = []
        group = 0
        # dictionary-encoding the features (pyarrow's default for every column) only to fall
        # back to plain pages made writing 12x slower
        schema = tables[0].schema.with_metadata(meta)
        with pq.ParquetWriter(tmp, schema, use_dictionary=["key"]) as out:
            for result, table in zip(pending, tables, strict=True):
                rows = table.num_rows
                out.write_table(table, row_group_size=min(rows, _ROW_GROUP))
                count = -(-rows // _ROW_GROUP)
                images.append({"key": result.key, "rows": rows,
                               "row_groups": list(range(group, group + count)),
                               **result.record})  # fmt: skip
                group += count
        _fsync_path(tmp)
        os.rename(tmp, self.path / name)
        _fsync_path(self.path)
        self._next_part += 1
        self._commit(images, part=name)
        self.bytes_written += (self.path / name).stat().st_size


def _table(result: ImageResult) -> Any:
    import pyarrow as pa

    f = np.ascontiguousarray(result.features)
    n, c = f.shape
    assert result.points is not None
    columns: dict[str, Any] = {
        "key": pa.array([result.key] * n, pa.string()),
        "y": pa.array(result.points[:, 0].astype(np.int32)),
        "x": pa.array(result.points[:, 1].astype(np.int32)),
    }
    if result.labels is not None:
        columns["label"] = pa.array(np.asarray(result.labels).astype(np.int32))
    columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), c)
    return pa.table(columns)


def open_writer(
    path: str | Path, config: Mapping[str, Any], *, overwrite: bool = False, **options: Any
) -> DenseWriter | SparseWriter:
    """Create or continue the store at ``path`` for a run with configuration ``config``.

    Args:
        path: ``NAME.zarr`` (dense) or ``NAME.parquet`` (sparse).
        config: The run configuration: ``format``, ``kind``, ``run`` (what must match to
            continue a store), ``channels`` and any description.
        overwrite: Delete an existing store at ``path`` first (only ever a store).
        options: Writer options (``SparseWriter``: ``part_bytes``, ``part_images``,
            ``part_seconds``).

    Raises:
        StoreError: ``path`` is not a store, cannot be written, is being written by another
            run, or was made with another configuration (the message lists the differences).
    """
    path = Path(path)
    kind = store_kind(path)
    if kind is None or config.get("kind") != kind:
        suffix = {"dense": ".zarr", "sparse": ".parquet"}.get(str(config.get("kind")), "")
        raise StoreError(
            f"a {config.get('kind')} store is a folder named NAME{suffix}, got {str(path)!r}"
        )
    if path.exists() and not (path / BOOK / "config.json").is_file():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise StoreError(
                f"{str(path)!r} exists and is not a hypercolumns store; not writing into it "
                "(give another --out)"
            )
    try:
        if kind == "dense":
            return DenseWriter(path, config, overwrite=overwrite)
        return SparseWriter(path, config, overwrite=overwrite, **options)
    except OSError as err:
        raise StoreError(f"cannot write store {str(path)!r}: {err.strerror or err}") from err
