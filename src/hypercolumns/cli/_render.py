"""How the command line shows things: the consoles, numbers, the layer table, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = [
    "Rate",
    "fmt",
    "layer_table",
    "pair",
    "plain",
    "progress",
    "progress_callback",
    "rate_progress",
    "stderr",
    "stdout",
    "tracker",
]

stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)


def plain(text: object) -> str:
    """``text`` for one line of Rich markup, shown as it is: brackets escaped (a file named
    ``[bold]x.png`` is not bold ``x.png``) and control characters as escapes (a newline in a
    file name does not split the line)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return escape(shown)


def fmt(value: float) -> str:
    """A number as short as it reads: ``16``, ``0.5``."""
    return f"{value:g}"


def pair(values: Iterable[float]) -> str:
    """A ``(y, x)`` pair as ``y,x``, or one number when both are equal."""
    a, b = values
    return fmt(a) if a == b else f"{fmt(a)},{fmt(b)}"


def layer_table(records: Sequence[Mapping[str, Any]], title: str, *, flags: bool = True) -> Table:
    """The layers as a table, from their ``Layer.to_dict()`` records (``layers``, ``demo``).

    Geometry per axis as :func:`pair` gives it: ``all``/``-`` for global layers, ``?`` where
    the receptive field is unknown; ``flags`` adds global, misaligned and non-uniform.
    """
    table = Table(title=title, header_style="bold")
    columns = ["index", "name", "type", "shape", "rf", "stride", "centre"]
    for col in [*columns, "flags"] if flags else columns:
        left = col in ("name", "type", "shape", "flags")
        table.add_column(col, justify="left" if left else "right")
    for rec in records:
        known, is_global = rec["rf_size"] is not None, rec["global"]
        row = [
            "" if rec["index"] is None else str(rec["index"]),
            rec["name"],
            rec["type"],
            "x".join(str(s) for s in rec["shape"]),
            "?" if not known else ("all" if is_global else pair(rec["rf_size"])),
            "?" if not known else ("-" if is_global else pair(rec["stride"])),
            "?" if not known else ("-" if is_global else pair(rec["rf_center"])),
        ]
        if flags:
            marks = [
                name
                for name, on in (
                    ("global", is_global),
                    ("misaligned", not rec["aligned"]),
                    ("non-uniform", not rec["uniform"]),
                )
                if on
            ]
            row.append(" ".join(marks) if known else "unknown")
        table.add_row(*row)
    return table


class Rate(ProgressColumn):
    """A rich progress column: images per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def progress(total: int, label: str) -> AbstractContextManager[Progress | None]:
    """A transient progress bar on stderr for ``total`` steps; ``None`` (no bar) for one."""
    if total <= 1:
        return nullcontext(None)
    return _bar(label)


def _bar(label: str) -> Progress:
    """A transient bar on stderr: label, bar, done of total, time left."""
    return Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


def tracker(
    bar: Progress | None, total: int, *, first: int = 0
) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback moving a new task of ``bar`` (``None`` without a
    bar); ``first`` is the ``done`` of the first step, 0 when steps are counted from 1."""
    if bar is None:
        return None
    task = bar.add_task("", total=total)
    return lambda done, _: bar.update(task, completed=done + 1 - first)


@contextmanager
def progress_callback(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for the library that shows a bar (as
    :func:`progress`) from its first call, so that nothing shows while the work is prepared."""
    bars: list[tuple[Progress, Any]] = []

    def report(done: int, total: int) -> None:
        if not bars:
            if total <= 1:
                return
            bar = _bar(label)
            bar.start()
            bars.append((bar, bar.add_task("", total=total)))
        bar, task = bars[0]
        bar.update(task, completed=done)

    try:
        yield report
    finally:
        for bar, _ in bars:
            bar.stop()


def rate_progress(label: str) -> Progress:
    """A transient progress bar on stderr with images per second, its total set as it runs.

    Bars show on a terminal only: elsewhere (a log file, a pipe) Rich draws nothing while it
    runs and leaves an empty line where a transient bar was."""
    return Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
