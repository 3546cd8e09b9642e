"""A Parquet part of a sparse store while it is written: :class:`PartFile`.

Images are encoded into the part as they come, one row group each, by a thread of its own
(pyarrow encodes and compresses without holding the GIL), so that the run's model does not
wait for Parquet: the cost of a part is spread over its images instead of falling on the run
at each commit and at its end. The file is flushed to disk as it grows (``fdatasync`` every
few MiB, in that thread), so its final fsync has little left to do.

Nothing here commits: the writer commits a part only after :meth:`PartFile.finish` has closed
and flushed it, exactly as when the part was written at once (what a ``kill -9`` leaves is the
same: a part in staging, which the next writer removes).

The records of a part's images go into its schema metadata (``hypercolumns.images``), which
Parquet writes in the footer; pyarrow serialises the Arrow schema (``ARROW:schema``, from
which readers take the schema metadata) when the file is opened, before the images are known,
so the part is opened without it and the complete schema is added to the footer at the end:
the file equals one written at once with the full schema.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hypercolumns.io.store import _book

if TYPE_CHECKING:
    from hypercolumns.io.store.write import ImageResult

ROW_GROUP = 1 << 20  # most rows per Parquet row group
_SYNC_BYTES = 16 << 20  # flush the file to disk after this many bytes written
_QUEUED = 8  # images waiting for the thread before the caller waits for it


def _column(values: np.ndarray[Any, Any]) -> Any:
    """A pyarrow array over the 1-D ``values``, made from their buffer: ``pa.array`` imports
    pandas on its first call when pandas is installed (about 2 s of CPU, taken from the model
    on a small machine)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [None, pa.py_buffer(values)])  # fmt: skip


def _repeated(text: str, n: int) -> Any:
    """A pyarrow string array of ``text`` ``n`` times, made from its buffers (see ``_column``)."""
    import pyarrow as pa

    data = text.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(data)
    return pa.Array.from_buffers(pa.string(), n,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])  # fmt: skip


def table(result: ImageResult) -> Any:
    """The Arrow table of one image's rows: ``key, y, x, [label,] features``."""
    import pyarrow as pa

    f = np.ascontiguousarray(result.features)
    n, c = f.shape
    assert result.points is not None
    points = np.asarray(result.points, dtype=np.int32)
    columns: dict[str, Any] = {
        "key": _repeated(result.key, n),
        "y": _column(points[:, 0]),
        "x": _column(points[:, 1]),
    }
    if result.labels is not None:
        columns["label"] = _column(np.asarray(result.labels, dtype=np.int32))
    columns["features"] = pa.FixedSizeListArray.from_arrays(_column(f.reshape(-1)), c)
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


class PartFile:
    """One part being written at ``path`` (in staging), its images encoded by a thread.

    Args:
        path: The file to write.
        config: The run configuration, JSON (schema metadata ``hypercolumns``).
    """

    def __init__(self, path: Path, config: bytes) -> None:
        self.path, self._config = path, config
        self.images = 0  # images queued
        self.feature_bytes = 0  # their feature bytes
        self.started = time.monotonic()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hypercolumns-part")
        self._jobs: deque[Future[None]] = deque()
        self._error: BaseException | None = None
        # written by the thread alone: the records of the images in the file, for the manifest
        # and for the file's metadata, whatever interrupts the caller between two images
        self._records: list[dict[str, Any]] = []
        self._meta: list[dict[str, Any]] = []
        self._groups = 0
        self._sink: Any = None
        self._writer: Any = None
        self._schema: Any = None
        self._unsynced = 0

    def __len__(self) -> int:
        return self.images

    def add(self, result: ImageResult) -> None:
        """Queue one image's rows; an error of an earlier image's write is raised here."""
        while self._jobs and (self._jobs[0].done() or len(self._jobs) >= _QUEUED):
            self._jobs.popleft().result()
        if self._error is not None:
            raise self._error
        self.images += 1
        self.feature_bytes += result.features.nbytes
        self._jobs.append(self._thread.submit(self._write, result))

    def _write(self, result: ImageResult) -> None:
        """In the thread: encode one image's rows into the file, and record it there; after an
        error nothing more is written (the error is raised to the caller)."""
        if self._error is not None:
            return
        try:
            self._append(result)
        except BaseException as err:
            self._error = err

    def _append(self, result: ImageResult) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = table(result)
        if self._writer is None:
            self._schema = data.schema
            self._sink = pa.OSFile(str(self.path), "wb")
            # dictionary-encoding the features (pyarrow's default for every column) only to
            # fall back to plain pages made writing 12x slower; their min and max (statistics)
            # serve no query and cost 5 % of the writing
            flat = [name for name in data.schema.names if name != "features"]
            self._writer = pq.ParquetWriter(
                self._sink, data.schema, use_dictionary=["key"], write_statistics=flat,
                store_schema=False,
            )  # fmt: skip
        before = self._sink.tell()
        rows = data.num_rows
        self._writer.write_table(data, row_group_size=min(rows, ROW_GROUP))
        count = -(-rows // ROW_GROUP)
        self._records.append({"key": result.key, "rows": rows,
                              "row_groups": list(range(self._groups, self._groups + count)),
                              **result.record})  # fmt: skip
        self._meta.append({"key": result.key, **result.record})
        self._groups += count
        self._unsynced += self._sink.tell() - before
        if self._unsynced >= _SYNC_BYTES:
            os.fdatasync(self._sink.fileno())
            self._unsynced = 0

    def finish(self) -> list[dict[str, Any]]:
        """Wait for the thread, close the file with its complete metadata and flush it to disk;
        the records of its images (as the manifest takes them)."""
        self._thread.shutdown()  # every image queued is written
        self._jobs.clear()
        if self._error is not None:
            raise self._error
        images = json.dumps(self._meta).encode()
        schema = self._schema.with_metadata(
            {b"hypercolumns": self._config, b"hypercolumns.images": images}
        )
        self._writer.add_key_value_metadata({
            b"hypercolumns": self._config,
            b"hypercolumns.images": images,
            b"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()),
        })  # fmt: skip
        self._writer.close()
        self._sink.close()
        _book.fsync_path(self.path)
        return self._records

    def discard(self) -> None:
        """Stop writing: wait for the thread (dropping what it has not started) and close the
        file, which the caller removes with staging."""
        self._thread.shutdown(cancel_futures=True)
        self._jobs.clear()
        for closing in (self._writer, self._sink):
            if closing is not None:
                with contextlib.suppress(Exception):  # a broken part is dropped anyway
                    closing.close()
