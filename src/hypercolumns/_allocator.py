"""The C allocator of a process that runs models on the CPU: keep freed memory for reuse.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc hands blocks back to the
operating system as soon as the top of its heap holds 128 KiB or more free (and serves large
blocks with their own ``mmap``, unmapped again on free), so every forward pass touches its
activations in fresh pages: a page fault per 4 KiB. On a 2-core machine that costs vgg16 at
320x240 a third to a half of its forward time (``docs/benchmarks.md``, pipeline section).

:func:`keep_freed_memory` raises both thresholds, so that blocks up to 32 MiB come from the heap
and up to 256 MiB of freed memory stays in the process for the next image. The command line calls
it for the process it owns (and the Ray engine in its actors); the library functions never do:
the allocator belongs to whoever owns the process.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 256 << 20
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, in this process and its children.

    Nothing is changed where the C library is not glibc, or where the user chose the allocator
    or its settings (``LD_PRELOAD`` of jemalloc or tcmalloc, ``MALLOC_*_`` or
    ``GLIBC_TUNABLES`` set).

    Returns:
        Whether the settings were applied.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
