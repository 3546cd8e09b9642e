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

from hypercolumns.io.store._book import (
    BOOK,
    FORMAT,
    FORMAT_VERSION,
    Kind,
    store_kind,
)
from hypercolumns.io.store.keys import RESERVED, check_key, folders_of, nesting
from hypercolumns.io.store.read import DenseStore, SparseEntry, SparseStore, open_store
from hypercolumns.io.store.write import (
    TILE,
    DenseSlot,
    DenseWriter,
    ImageResult,
    SparseWriter,
    StoreWriter,
    open_writer,
)

__all__ = [
    "BOOK",
    "FORMAT",
    "FORMAT_VERSION",
    "RESERVED",
    "TILE",
    "DenseSlot",
    "DenseStore",
    "DenseWriter",
    "ImageResult",
    "Kind",
    "SparseEntry",
    "SparseStore",
    "SparseWriter",
    "StoreWriter",
    "check_key",
    "folders_of",
    "nesting",
    "open_store",
    "open_writer",
    "store_kind",
]
