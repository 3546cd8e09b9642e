from __future__ import annotations

import threading

import pytest

from hypercolumns._interrupts import interrupt, uninterrupted


def _write(steps: list[str], *, interrupts: int) -> None:
    """A write during which ``interrupts`` signals arrive, then a nested write."""
    with uninterrupted():
        for _ in range(interrupts):
            interrupt()
        steps.append("the write goes on")
        with uninterrupted():  # nested: held until the outermost block ends
            steps.append("nested")


def test_an_interrupt_waits_for_the_block_and_a_second_one_does_not() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _write(steps, interrupts=1)
    assert steps == ["the write goes on", "nested"]
    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        _write(steps, interrupts=2)  # a write that hangs can still be stopped
    assert steps == []
    with pytest.raises(KeyboardInterrupt):
        interrupt()  # outside a block: at once


def _failing_write() -> None:
    with uninterrupted():
        interrupt()
        raise OSError("disk full")


def test_an_error_in_the_block_goes_on_and_drops_the_held_interrupt() -> None:
    with pytest.raises(OSError, match="disk full"):
        _failing_write()
    with uninterrupted():
        pass  # nothing held any more


def test_other_threads_are_not_held() -> None:
    raised: list[bool] = []

    def other() -> None:
        with uninterrupted():
            try:
                interrupt()
            except KeyboardInterrupt:
                raised.append(True)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert raised == [True]
