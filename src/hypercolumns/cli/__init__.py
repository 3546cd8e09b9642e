"""The ``hypercolumns`` command line: a thin layer over the library.

This file builds the app and registers the commands, each in a file of its own (``layers``,
``extract``, ``erf``, ``show``, ``match``, ``cluster``, the ``draw`` and ``probe`` groups, ``demo``,
``explore``); :func:`main` runs it, printing library errors and warnings as one line each and
choosing the exit code. Shared options and their parsing are in ``_options``, tables and
progress bars in ``_render``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated, Any

import typer

from hypercolumns._allocator import keep_freed_memory
from hypercolumns._version import __version__
from hypercolumns.cli import (
    _signals,
    cluster,
    demo,
    draw,
    erf,
    explore,
    extract,
    layers,
    match,
    probe,
    show,
)
from hypercolumns.cli._render import plain, stderr, stdout
from hypercolumns.errors import HypercolumnsError

__all__ = ["app", "main"]

app = typer.Typer(
    name="hypercolumns",
    help="Where a convolutional network looks and what it sees at every pixel: exact receptive "
    "fields, feature maps and hypercolumns for any PyTorch vision model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode="markdown",
)
_state: dict[str, Any] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        stdout.print(f"hypercolumns {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show full tracebacks on errors, and Ray's INFO lines and its workers' output "
            "(--engine ray).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["debug"] = debug
    # the library's verbosity (the Ray engine lets Ray speak at DEBUG); this process is ours
    logging.getLogger("hypercolumns").setLevel(logging.DEBUG if debug else logging.NOTSET)


app.command()(layers.layers)
app.command()(extract.extract)
app.command()(erf.erf)
app.command()(show.show)
app.command()(match.match)
app.command()(cluster.cluster)
app.add_typer(draw.app)
app.add_typer(probe.app)
app.command()(demo.demo)
app.command()(explore.explore)


def main() -> None:
    """Entry point: run the app; print every error as one line and exit non-zero (1; 2 for
    a command line that does not parse; 128 + the signal when interrupted)."""
    keep_freed_memory()  # this process is ours: see hypercolumns._allocator
    with warnings.catch_warnings(), _signals.installed():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.showwarning = _show_warning
        try:
            code = app(standalone_mode=False)  # errors come here, not to Click's printer
            if _signals.received() is not None:  # Typer turned the interrupt into exit 130
                _signals.interrupted()
            sys.exit(code if isinstance(code, int) else 0)
        except typer.TyperException as err:  # a command line that does not parse
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `hypercolumns`: the help
                err.show()  # type: ignore[attr-defined]
                sys.exit(2)
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            stderr.print(
                f"[bold red]error:[/] {plain(message)} (see {_help(err)})", highlight=False
            )
            sys.exit(getattr(err, "exit_code", 2))
        except typer.Abort:
            stderr.print("aborted", highlight=False)
            sys.exit(1)
        except HypercolumnsError as err:
            if _state["debug"]:
                raise
            stderr.print(f"[bold red]error:[/] {plain(err)}", highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            _signals.interrupted()
        except Exception as err:
            if _state["debug"]:
                raise
            stderr.print(
                f"[bold red]error:[/] unexpected {type(err).__name__}: {plain(err)} "
                "(run with --debug for the traceback)",
                highlight=False,
            )
            sys.exit(1)


def _help(err: Exception) -> str:
    """``hypercolumns COMMAND --help`` for the command whose line did not parse."""
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", "") or "hypercolumns"
    return f"{path} --help"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    stderr.print(f"[yellow]warning:[/] {plain(message)}", highlight=False)
