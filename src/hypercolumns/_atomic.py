"""Atomic file writes: a temporary file beside the target, renamed onto it only on success.

A reader never sees a half-written file, and a failed write leaves nothing behind. The process
umask is read once, here, at import: reading it means setting it, which is not thread-safe.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def staged(*paths: Path, suffix: str = ".tmp") -> Iterator[list[Path]]:
    """Temporary files beside ``paths`` (hidden, ending in ``suffix``) to write; renamed onto
    ``paths`` with the usual permissions if the block succeeds, removed in any case."""
    temps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for tmp in temps:
            tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
