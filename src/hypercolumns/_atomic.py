"""Atomic file writes: a temporary file beside the target, renamed onto it only on success.

A reader never sees a half-written file, and a failed write leaves nothing behind. The process
umask is read once, here, at import: reading it means setting it, which is not thread-safe.

A process killed outright (``kill -9``, a power cut) cannot remove its temporary file, so each
temporary name carries its writer: ``.NAME.HOST-PID-XXXXXXXX.tmp`` (``HOST`` a short digest of
the host name). The next write of the same target removes the leftovers whose writer is gone:
a process of this host that no longer exists, or a file untouched for a day (:func:`leftovers`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hypercolumns.errors import HypercolumnsError

__all__ = ["STALE_SECONDS", "check_writable", "leftovers", "staged", "writer_tag"]

_UMASK = os.umask(0)
os.umask(_UMASK)

STALE_SECONDS = 24 * 3600
"""A temporary file untouched this long is a leftover, whoever wrote it."""


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def writer_tag() -> str:
    """``HOST-PID``: who writes a temporary file, as its name says."""
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def leftovers(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """The entries of ``folder`` named ``{prefix}HOST-PID-...{suffix}`` whose writer is gone:
    a process of this host that no longer runs, or (any host) untouched for
    :data:`STALE_SECONDS`. Nothing else, so a running writer's files are never touched."""
    pattern = re.compile(
        re.escape(prefix) + r"([0-9a-f]{6})-(\d+)-[A-Za-z0-9_]+" + re.escape(suffix)
    )
    host, now = _host(), time.time()
    found: list[Path] = []
    with suppress(OSError):
        for entry in folder.iterdir():
            match = pattern.fullmatch(entry.name)
            if match is None:
                continue
            try:
                old = now - entry.lstat().st_mtime > STALE_SECONDS
            except OSError:
                continue
            if old or (match[1] == host and not _alive(int(match[2]))):
                found.append(entry)
    return found


@contextmanager
def staged(*paths: Path, suffix: str = ".tmp") -> Iterator[list[Path]]:
    """Temporary files beside ``paths`` (hidden, ending in ``suffix``) to write; renamed onto
    ``paths`` with the usual permissions if the block succeeds, removed in any case. Leftovers
    of earlier writes of ``paths`` whose writer was killed are removed first."""
    temps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{path.name}."
            for stale in leftovers(path.parent, prefix, suffix):
                with suppress(OSError):
                    stale.unlink()
            fd, name = tempfile.mkstemp(
                dir=path.parent, prefix=f"{prefix}{writer_tag()}-", suffix=suffix
            )
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


def check_writable(path: Path) -> None:
    """Fail before any work when the file ``path`` cannot be written: its folder (or the first
    folder above it that exists, which :func:`staged` would create it in) must be a writable
    folder."""
    folder = next((p for p in path.absolute().parents if p.exists()), None)
    if folder is None:  # pragma: no cover - the root always exists
        return
    if not folder.is_dir():
        raise HypercolumnsError(f"cannot write {str(path)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HypercolumnsError(
            f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable"
        )
