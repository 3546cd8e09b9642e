"""Interrupts that wait for the end of a write.

A signal handler that raises ``KeyboardInterrupt`` (the command line's, for SIGINT and SIGTERM)
could cut a store write in the middle. Zarr writes from coroutines in a loop of its own thread:
cut off, they go on without the caller, and at exit Python prints "Task was destroyed but it is
pending!" after the command's last line. Such a handler calls :func:`interrupt`, which inside
:func:`uninterrupted` (in the main thread, where signals arrive) only notes the interrupt: the
``KeyboardInterrupt`` is raised when the outermost block ends, so the image being written is
written whole. A second interrupt during the block raises at once, so that a write that hangs
(a network file system) can still be stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["interrupt", "uninterrupted"]

_depth = 0  # blocks entered by the main thread
_pending = False  # an interrupt came during them


def interrupt() -> None:
    """Raise ``KeyboardInterrupt`` now, or at the end of the write under way."""
    global _pending
    if _depth and not _pending:
        _pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold :func:`interrupt` back until the block ends (in the main thread; elsewhere nothing
    changes). If the block raises, its error goes on and a held interrupt is dropped."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    done = False
    try:
        yield
        done = True
    finally:
        _depth -= 1
        held = _depth == 0 and _pending
        if _depth == 0:
            _pending = False
    if done and held:
        raise KeyboardInterrupt
