"""The local engine of :func:`hypercolumns.pipeline.run`: images decoded in
``torch.utils.data.DataLoader`` worker processes or a thread (:func:`decoded`), grouped into
batches of one size (:func:`batches`), and the model run in this process (in two
:class:`~hypercolumns.pipeline._lanes.Lanes` on a CPU), which writes the store.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import math
import os
import signal
import sys
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from hypercolumns.pipeline._lanes import Lanes, lanes_for
from hypercolumns.pipeline._sink import Sink, split_whole, write_banded
from hypercolumns.pipeline.decoding import Decoded, DecodeOptions, decode
from hypercolumns.pipeline.extraction import Extraction
from hypercolumns.pipeline.sources import Source

__all__ = ["batches", "decoded", "run"]

_AHEAD = 1  # images decoded ahead of the model when decoding in this process
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent thread ends


class _Decoding(torch.utils.data.Dataset[Decoded]):
    def __init__(self, sources: Sequence[Source], options: DecodeOptions) -> None:
        self.sources, self.options = list(sources), options

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Decoded:
        return decode(self.sources[i], self.options)


def _keep(item: Any) -> Any:
    return item


def _worker_started(parent: int, worker: int) -> None:
    """Each decoding worker, as it starts.

    It runs at a lower priority than the model: when the cores are busy, an image decoded a
    little later costs less than every thread of a forward pass waiting for the one a worker
    pre-empted. On Linux it is killed as the thread that started it ends, so that a
    ``kill -9`` of the run takes the workers at once (PyTorch's own check of the parent comes
    every 5 s: they outlived it by 5-8 s)."""
    with contextlib.suppress(OSError):
        os.nice(5)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)


def decoded(
    sources: Sequence[Source], options: DecodeOptions, workers: int, *, ahead: int = _AHEAD
) -> Iterator[Decoded]:
    """Decode ``sources`` in order, in ``workers`` DataLoader processes (0: in this one, by a
    thread that keeps ``ahead`` images decoded before they are asked for)."""
    if workers == 0:
        yield from _decoded_ahead(sources, options, ahead)
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and workers > cpus:
        warnings.warn(
            f"{workers} decoding processes (workers, --workers) for the {cpus} CPU(s) this "
            "process may use: they compete with the model for them",
            stacklevel=2,
        )
    with warnings.catch_warnings():  # PyTorch's paragraph saying the same, twice
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        loader = torch.utils.data.DataLoader(
            _Decoding(sources, options),
            batch_size=None,
            num_workers=workers,
            collate_fn=_keep,
            prefetch_factor=2,
            worker_init_fn=functools.partial(_worker_started, os.getpid()),
        )
        batches = iter(loader)
    yield from batches


def _decoded_ahead(
    sources: Sequence[Source], options: DecodeOptions, ahead: int
) -> Iterator[Decoded]:
    """Decode in a thread of this process, ``ahead`` images before the caller: reading a file
    and Pillow's decoding release the GIL, and so do PyTorch's ops, so the next image is made
    while the model runs instead of between two forward passes (a process would have to send
    it back; a thread hands it over)."""
    if ahead < 1:
        for source in sources:
            yield decode(source, options)
        return
    # its few ops on one thread: a second one would spin beside the model
    pool = ThreadPoolExecutor(
        1, "hypercolumns-decode", initializer=torch.set_num_threads, initargs=(1,)
    )
    waiting: deque[Future[Decoded]] = deque()
    todo = iter(sources)
    try:
        for source in itertools.islice(todo, ahead):
            waiting.append(pool.submit(decode, source, options))
        while waiting:
            item = waiting.popleft().result()
            for source in itertools.islice(todo, 1):
                waiting.append(pool.submit(decode, source, options))
            yield item
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def batches(
    items: Iterable[Decoded], batch_size: int, *, hold: int = 4, max_bytes: int | None = None
) -> Iterator[list[Decoded]]:
    """Group decoded images into batches of one size. At most ``hold * batch_size`` images, and
    ``max_bytes`` of them, wait for their batch to fill; beyond, the fullest batch goes as it
    is. Failed images come alone."""
    buckets: dict[tuple[int, ...], list[Decoded]] = {}
    limit = math.inf if max_bytes is None else max_bytes
    waiting = waiting_bytes = 0
    for item in items:
        if item.image is None:
            yield [item]
            continue
        shape = tuple(item.image.shape)
        buckets.setdefault(shape, []).append(item)
        waiting += 1
        waiting_bytes += item.image.nbytes
        while buckets and (
            len(buckets.get(shape, ())) >= batch_size
            or waiting >= hold * batch_size
            or waiting_bytes >= limit
        ):
            full = shape if len(buckets.get(shape, ())) >= batch_size else None
            done = buckets.pop(full or max(buckets, key=lambda s: len(buckets[s])))
            waiting -= len(done)
            waiting_bytes -= sum(d.image.nbytes for d in done if d.image is not None)
            yield done
    yield from buckets.values()


@contextlib.contextmanager
def _threads_kept() -> Iterator[None]:
    """Leave PyTorch's thread count as found: a thread's ``torch.set_num_threads`` (the lanes',
    the decoding thread's) is also the count of threads started after it."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(
    todo: Sequence[Source], extraction: Extraction, sink: Sink, *, workers: int, batch_size: int
) -> None:
    """The local engine: decoding in DataLoader workers (or a thread), the model in this
    process, in two :class:`Lanes` on a CPU."""
    count = lanes_for(extraction)
    items = decoded(todo, extraction.decode_options, workers, ahead=count)
    with _threads_kept(), Lanes(count, extraction, sink) as lanes:
        for batch in batches(items, batch_size, max_bytes=extraction.max_memory // 2):
            if not extraction.planned(batch):
                lanes.drain()  # planning (in split_whole) runs alone
            whole, banded = split_whole(extraction, batch)
            if not banded and lanes.takes(whole):
                lanes.submit(whole, len(batch))
                continue
            lanes.drain()
            for result in extraction(whole):
                sink.put(result)
            for item in banded:
                failure = write_banded(extraction, sink.writer, item)
                if failure is None:
                    sink.committed_in_bands(item.record)
                else:
                    sink.put(failure)
            sink.advance(len(batch))
        lanes.drain()
