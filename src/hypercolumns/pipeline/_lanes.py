"""Model lanes: on a CPU, two batches computed at once by two threads, each with half of
PyTorch's threads, their results written in order by the thread that owns the store.

Why: a forward pass on two threads waits for the slower of them at every op, so another thread
of the run (decoding the next image, encoding Parquet) that takes one core for a moment stalls
both; and an op split over two threads does less per thread than two ops side by side. Two
one-thread forwards on two images lose neither: on 2 cores they made 12 % more images a
second than one two-thread forward, and the run's other threads fit between them
(``docs/benchmarks.md``).

What makes it safe: each forward's hooks act on their own thread's calls only (see
``features.maps``), extractors keep no state between calls that two calls could share, and
planning, which traces the model with hooks on every module, runs only while no lane runs
(:meth:`Lanes.drain`, :meth:`~hypercolumns.pipeline.extraction.Extraction.planned`). A lane
takes a batch only if its working set fits its share of the memory budget, so the lanes
together stay within it (beside them, the main thread holds the output of the batch it is
writing); a batch that does not fit waits for the lanes and runs alone, with the whole budget
and every thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import torch

from hypercolumns.io.store import ImageResult
from hypercolumns.pipeline._sink import Sink
from hypercolumns.pipeline.decoding import Decoded
from hypercolumns.pipeline.extraction import Extraction, Failure

__all__ = ["Lanes", "lanes_for"]

_LANES = 2


def lanes_for(extraction: Extraction) -> int:
    """How many lanes a run of ``extraction`` uses: two on a CPU with two PyTorch threads or
    more, else one (no lane: every batch runs in the caller's thread)."""
    cpu = extraction.device.type == "cpu"
    return _LANES if cpu and torch.get_num_threads() >= _LANES else 1


class Lanes:
    """``count`` threads computing batches of ``extraction`` at once, for ``sink``.

    Use as a context manager: on leaving, batches not started are dropped and running ones
    finish. A lane's PyTorch thread count also becomes the default of threads started later:
    the caller restores it (:func:`~hypercolumns.pipeline._local.run` does).
    """

    def __init__(self, count: int, extraction: Extraction, sink: Sink) -> None:
        self.count, self.extraction, self.sink = count, extraction, sink
        self.budget = extraction.max_memory // count
        self._pool: ThreadPoolExecutor | None = None
        if count > 1:
            self._pool = ThreadPoolExecutor(
                count, thread_name_prefix="hypercolumns-lane",
                initializer=torch.set_num_threads,
                initargs=(max(1, torch.get_num_threads() // count),),
            )  # fmt: skip
        self._running: deque[tuple[Future[list[ImageResult | Failure]], int]] = deque()

    def __enter__(self) -> Lanes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def takes(self, batch: Sequence[Decoded]) -> bool:
        """Whether a lane can compute ``batch``; its sizes are planned here if needed, so drain
        the lanes first unless :meth:`Extraction.planned` says it is."""
        if self._pool is None or not batch:
            return False
        return self.extraction.fits_within(batch, self.budget)

    def submit(self, batch: Sequence[Decoded], images: int) -> None:
        """Compute ``batch`` in a lane; its results are written, and ``images`` counted as
        processed, in order, once the batches before it are."""
        assert self._pool is not None
        while self._running and self._running[0][0].done():
            self._write_first()
        future = self._pool.submit(self.extraction, batch, budget=self.budget)
        self._running.append((future, images))
        while len(self._running) > self.count:
            self._write_first()

    def drain(self) -> None:
        """Wait for every lane, writing their results."""
        while self._running:
            self._write_first()

    def _write_first(self) -> None:
        future, images = self._running.popleft()
        for result in future.result():
            self.sink.put(result)
        self.sink.advance(images)
