"""The engine-neutral end of a run, what every engine shares: the :class:`Sink` that writes
results into the store and counts them, the choice of images to compute whole or in bands
(:func:`split_whole`), and how a dense image computed in bands is laid out in its store
(:class:`BandLayout`) and written there (:func:`write_banded`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypercolumns.errors import HypercolumnsError, ImageWarning
from hypercolumns.io.store import TILE, ImageResult, StoreWriter
from hypercolumns.pipeline.decoding import Decoded
from hypercolumns.pipeline.extraction import Extraction, Failure, failure_of

__all__ = ["BandLayout", "Sink", "split_whole", "write_banded"]


class Sink:
    """The writing end of a run, whatever the engine: results into the store, failures into its
    log, counts, progress."""

    def __init__(
        self, writer: StoreWriter, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.writer, self.total, self.progress = writer, total, progress
        self.done = self.banded = self.processed = 0
        self.failed: list[Failure] = []
        if progress is not None:
            progress(0, total)

    def put(self, result: ImageResult | Failure) -> None:
        """Write and commit one image, or record why it failed."""
        if isinstance(result, Failure):
            self.writer.fail(result.key, result.source, result.reason)
            self.failed.append(result)
        else:
            self.writer.write(result)
            self.done += 1
            _warn(result.record)

    def committed_in_bands(self, record: Mapping[str, Any] | None = None) -> None:
        """Count an image the engine wrote in bands and committed (``record``: its record)."""
        self.done += 1
        self.banded += 1
        _warn(record or {})

    def advance(self, images: int) -> None:
        """Report ``images`` more images processed."""
        self.processed += images
        if self.progress is not None:
            self.progress(self.processed, self.total)


def _warn(record: Mapping[str, Any]) -> None:
    """Show here what decoding noted about a committed image (see ``decoding``)."""
    for note in record.get("warnings", ()):
        warnings.warn(note, ImageWarning, stacklevel=3)


def split_whole(
    extraction: Extraction, batch: Sequence[Decoded]
) -> tuple[list[Decoded], list[Decoded]]:
    """The images of ``batch`` that :class:`Extraction` computes whole (with those that failed
    to decode), and the dense images too large for its memory budget, to compute in bands."""
    whole: list[Decoded] = []
    banded: list[Decoded] = []
    for d in batch:
        fits = d.image is None or extraction.settings.points is not None or extraction.fits(d)
        (whole if fits else banded).append(d)
    return whole, banded


@dataclass(frozen=True)
class BandLayout:
    """How a dense image computed in bands is stored: its ``(C, H, W)`` shape, its record
    (with the band rows and count) and the rows of its chunks."""

    shape: tuple[int, int, int]
    record: dict[str, Any]
    chunk_rows: int

    @staticmethod
    def of(extraction: Extraction, item: Decoded) -> BandLayout:
        """The layout of ``item``'s bands; raises :class:`HypercolumnsError` when it cannot be
        computed in bands."""
        rows = extraction.band_rows_for(item)
        shape = extraction.dense_shape(item)
        bands = {"rows": rows, "count": math.ceil(shape[1] / rows)}
        return BandLayout(shape, {**item.record, "bands": bands}, math.gcd(rows, TILE))


def write_banded(extraction: Extraction, writer: Any, item: Decoded) -> Failure | None:
    """Compute a dense image band by band straight into its store slot; a failure to compute
    (not to write) is returned."""
    try:
        layout = BandLayout.of(extraction, item)
    except HypercolumnsError as err:
        return failure_of(item, err)
    slot = writer.begin(
        item.source.key, layout.shape, extraction.settings.dtype, layout.record,
        chunk_rows=layout.chunk_rows,
    )  # fmt: skip
    try:
        for r0, band in extraction.bands(item):
            slot.write(r0, band)
    except OSError:
        writer.abort(slot)
        raise
    except Exception as err:
        writer.abort(slot)
        return failure_of(item, err)
    except BaseException:
        writer.abort(slot)
        raise
    writer.commit(slot)
    return None
