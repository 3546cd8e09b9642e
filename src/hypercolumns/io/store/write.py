"""Writing stores: :func:`open_writer` gives a :class:`StoreWriter` (:class:`DenseWriter` or
:class:`SparseWriter`) that takes :class:`ImageResult` and commits each image atomically:
staged, flushed, renamed into place, then named by one manifest line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from hypercolumns._atomic import leftovers, writer_tag
from hypercolumns._interrupts import uninterrupted
from hypercolumns.errors import StoreError
from hypercolumns.io.store import _book
from hypercolumns.io.store._book import BOOK, PENDING, Kind, store_kind
from hypercolumns.io.store._part import PartFile
from hypercolumns.io.store.keys import check_key, folders_of, nesting

TILE = 64  # rows and columns of a dense chunk
_CHUNK_BYTES = 4 << 20


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


def _identity(config: Mapping[str, Any]) -> Any:
    """What must match to continue a store: the ``run`` configuration, a model file spec
    (``path/to/file.py:factory``) by its file name and factory only, since the same file may be
    given by another path (relative, absolute, through a link); the weights digest beside it
    tells the models apart."""
    run = config.get("run")
    if isinstance(run, dict) and isinstance(run.get("model"), str):
        return {**run, "model": _model_identity(run["model"])}
    return run


def _model_identity(spec: str) -> str:
    file, sep, factory = spec.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{file.replace(chr(92), '/').rpartition('/')[2]}:{factory}"
    return spec


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
        self._book_dir = path / BOOK
        if overwrite and path.exists():
            _book.read_config(path)  # only ever delete a store
            self._lock = self._acquire()
            self._release()  # no other run holds it: delete the store
            shutil.rmtree(path)
        if not path.exists():
            self._create(dict(config))
        self.config = _book.read_config(path)
        self._lock = self._acquire()
        try:
            differ = _book.differences(_identity(self.config), _identity(config))
            if differ:
                raise StoreError(
                    f"store {str(path)!r} was made with another configuration ("
                    + "; ".join(differ)
                    + "); rerun with the same options to continue it, write another store, "
                    "or overwrite=True (--overwrite) to replace it"
                )
            self._recover()
            records, parts = _book.committed(path)
            self.records: dict[str, dict[str, Any]] = records
            self.done: set[str] = set(records)
            self.parts = parts
            self.bytes_written = 0
        except BaseException:
            self._release()
            raise

    # -- life cycle ---------------------------------------------------------------------------

    def _create(self, config: dict[str, Any]) -> None:
        """Build the empty store beside its destination and rename it into place."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.name}.new-"
        for stale in leftovers(parent, prefix):  # only those of runs that are gone
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f"{prefix}{writer_tag()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            self._init_data(tmp, config)
            (tmp / BOOK / "staging").mkdir(parents=True)
            (tmp / BOOK / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / BOOK / "manifest.jsonl").touch()
            _book.fsync_tree(tmp)
            try:
                os.rename(tmp, self.path)
            except OSError as err:
                if not self.path.exists():
                    raise
                raise StoreError(
                    f"another run is creating store {str(self.path)!r} at the same time; wait "
                    "for it to finish (rerunning the same command then continues the store)"
                ) from err
            _book.fsync_path(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _init_data(self, root: Path, config: dict[str, Any]) -> None:
        """Kind-specific files of a new, empty store."""

    def _acquire(self) -> Any:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return None
        fh = (self._book_dir / "lock").open("a")
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
        staging = self._book_dir / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(exist_ok=True)
        _book.drop_torn_tail(self._book_dir / "manifest.jsonl")
        _book.drop_torn_tail(self._book_dir / "failures.jsonl")

    def missing(self) -> list[str]:
        """Committed images whose data is gone from the store (removed by hand)."""
        return []

    def _staging(self, suffix: str = "") -> Path:
        return self._book_dir / "staging" / f"{uuid.uuid4().hex}{suffix}"

    def _commit(self, images: Sequence[Mapping[str, Any]], part: str | None = None) -> None:
        entry: dict[str, Any] = {"time": _book.now(), "images": list(images)}
        if part is not None:
            entry["part"] = part
        _book.append_line(self._book_dir / "manifest.jsonl", entry)
        self.done.update(img["key"] for img in images)

    def fail(self, key: str, source: str, reason: str) -> None:
        """Record that image ``key`` (file ``source``) could not be made, and why."""
        entry = {"key": key, "source": source, "reason": reason, "time": _book.now()}
        _book.append_line(self._book_dir / "failures.jsonl", entry)

    def write(self, result: ImageResult) -> None:
        """Write one image's hypercolumns and commit it (sparse writers may batch commits)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Commit whatever is waiting to be committed."""

    def _discard(self) -> None:
        """Drop what waits for its commit (after a failed write)."""

    def close(self, *, flush: bool = True) -> None:
        """Commit what waits (unless ``flush`` is false), clear staging, release the lock."""
        try:
            if flush:
                self.flush()
        finally:
            self._discard()
            shutil.rmtree(self._book_dir / "staging", ignore_errors=True)
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
        with uninterrupted():  # Zarr's coroutines are not cut off by Ctrl-C
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
        with uninterrupted():
            self.array[:, row : row + band.shape[1], :] = band
        self.rows_written += band.shape[1]


class DenseWriter(StoreWriter):
    """Writes a ``.zarr`` store, one committed array per image."""

    kind: Kind = "dense"

    def __init__(self, path: Path, config: Mapping[str, Any], *, overwrite: bool) -> None:
        super().__init__(path, config, overwrite=overwrite)
        self._groups: set[str] = set()  # parent groups known to exist
        self._folders = {f for key in self.done for f in folders_of(key)}

    def missing(self) -> list[str]:
        return sorted(k for k in self.done if not (self.path / k / "zarr.json").is_file())

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
        with uninterrupted():
            self._commit_slot(slot)

    def _commit_slot(self, slot: DenseSlot) -> None:
        import zarr

        if slot.rows_written != slot.shape[1]:
            raise StoreError(
                f"image {slot.key!r} has {slot.rows_written} of {slot.shape[1]} rows written; "
                "it cannot be committed"
            )
        other = slot.key if slot.key in self.done else nesting(slot.key, self.done, self._folders)
        if other is not None:  # never replace or bury a committed image
            raise StoreError(
                f"image {slot.key!r} cannot be committed: the store holds the committed image "
                f"{other!r} at that path or around it"
            )
        _book.fsync_tree(slot.dir)
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
        _book.fsync_path(target.parent)
        entry = {"key": slot.key, "shape": list(slot.shape), "dtype": slot.dtype}
        self._commit([{**entry, "bytes": nbytes, **slot.record}])
        self._folders.update(folders_of(slot.key))
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
        with uninterrupted():  # an image written whole is committed before Ctrl-C stops the run
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
        self._part: PartFile | None = None  # the part being written, until its commit

    def missing(self) -> list[str]:
        gone = {p for p in self.parts if not (self.path / p).is_file()}
        return sorted(k for k, r in self.records.items() if r.get("part") in gone)

    def _recover(self) -> None:
        super()._recover()
        _, parts = _book.committed(self.path)
        pending = self._book_dir / PENDING
        pending.mkdir(exist_ok=True)
        for part in sorted(pending.iterdir()):
            if part.name in parts and not (self.path / part.name).exists():
                os.rename(part, self.path / part.name)  # committed: finish its move
            else:
                part.unlink()  # never committed
        _book.fsync_path(self.path)
        for orphan in self.path.glob("part-*.parquet"):
            if orphan.name not in parts:  # an uncommitted part of an older version
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
        if self._part is None:
            self._part = PartFile(self._staging(".parquet"), json.dumps(self.config).encode())
        part = self._part
        part.add(result)
        if (
            part.feature_bytes >= self.part_bytes
            or len(part) >= self.part_images
            or time.monotonic() - part.started >= self.part_seconds
        ):
            self.flush()

    def flush(self) -> None:
        with uninterrupted():  # Ctrl-C during a commit would drop the part's images
            self._flush()

    def _flush(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        try:
            images = part.finish()
        except BaseException:
            part.discard()
            raise
        name = f"part-{self._next_part:06d}.parquet"
        # a part waits for its commit where plain readers (pyarrow, pandas skip names starting
        # with '_') do not look, and moves beside the others once the manifest names it
        waiting = self._book_dir / PENDING / name
        waiting.parent.mkdir(exist_ok=True)
        os.rename(part.path, waiting)
        _book.fsync_path(waiting.parent)
        self._next_part += 1
        self._commit(images, part=name)
        size = waiting.stat().st_size
        os.rename(waiting, self.path / name)
        _book.fsync_path(self.path)
        self.bytes_written += size

    def _discard(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            part.discard()


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
                "(write the store elsewhere)"
            )
    try:
        if kind == "dense":
            return DenseWriter(path, config, overwrite=overwrite)
        return SparseWriter(path, config, overwrite=overwrite, **options)
    except OSError as err:
        raise StoreError(f"cannot write store {str(path)!r}: {err.strerror or err}") from err
