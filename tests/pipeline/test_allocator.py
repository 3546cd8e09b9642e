"""The C allocator settings of the processes we own: freed memory stays for reuse."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from hypercolumns._allocator import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# In a fresh interpreter: touch 24 MiB from malloc, free it, and print how much of it the
# process still holds (resident pages, from /proc/self/statm).
_PROBE = """
import ctypes, os, sys
from hypercolumns._allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
page = os.sysconf("SC_PAGE_SIZE")
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
size = 24 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = resident()
libc.free(ctypes.c_void_p(block))
print(applied, (before - resident()) / size)
"""


def _probe(mode: str) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    applied, returned = done.stdout.split()
    return applied == "True", float(returned)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_stays_in_the_process() -> None:
    applied, returned = _probe("keep")
    assert applied
    assert returned < 0.1  # kept for the next image
    applied, returned = _probe("default")
    assert not applied
    assert returned > 0.9  # glibc's default: handed back at once, faulted in again next time


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
)
def test_the_users_allocator_settings_win(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory() is False


def test_nothing_to_do_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False


def test_the_command_line_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercolumns import cli

    calls: list[bool] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.setattr(sys, "argv", ["hypercolumns", "--version"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    assert calls == [True]
