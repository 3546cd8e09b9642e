"""Stopping a command: SIGTERM (Slurm, Kubernetes, systemd, ``docker stop``) stops a run as
Ctrl-C does, so that what is complete is committed; one line says so; the exit code is 128 +
the signal (130 for Ctrl-C, 143 for SIGTERM)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from hypercolumns._interrupts import interrupt
from hypercolumns.cli._render import stderr

__all__ = ["installed", "interrupted", "received"]

_received: list[signal.Signals] = []


def _raise(signum: int, frame: Any) -> None:
    _received.append(signal.Signals(signum))
    interrupt()  # at once, or once the store write under way is complete


@contextmanager
def installed() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``KeyboardInterrupt`` inside the block (after the store
    write under way, see :mod:`hypercolumns._interrupts`), remembering which came; the handlers
    before are restored after."""
    _received.clear()
    before = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def received() -> signal.Signals | None:
    """The signal that stopped the command, if one did."""
    return _received[-1] if _received else None


def interrupted(detail: str = "") -> NoReturn:
    """Say that the command was stopped (and ``detail``: what was kept) and exit."""
    sig = received() or signal.SIGINT
    stderr.print(
        f"interrupted ({sig.name}){': ' + detail if detail else ''}", highlight=False, markup=False
    )
    sys.exit(128 + sig)
