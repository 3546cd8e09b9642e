"""The ``hypercolumns`` command line: a thin layer over the library."""

from __future__ import annotations

import json
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hypercolumns._version import __version__
from hypercolumns.errors import HypercolumnsError

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
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


class Format(StrEnum):
    table = "table"
    json = "json"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, package.module:factory or path/to/file.py:factory.",
        show_default=False,
    ),
]
ModelKwargs = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        metavar="JSON",
        help="Keyword arguments for the model factory, as JSON, e.g. '{\"output_stride\": 8}'.",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights", metavar="FILE", help="Local state dict (.safetensors, .pt, .pth) to load."
    ),
]
Pretrained = Annotated[
    bool,
    typer.Option(
        "--pretrained", help="Download the library's pretrained weights (needs a model hub)."
    ),
]
InputSize = Annotated[
    str,
    typer.Option(
        "--input-size", "-s", metavar="H[,W]", help="Input image size, e.g. 224 or 480,640."
    ),
]
InChannels = Annotated[
    int | None,
    typer.Option(
        "--in-channels", min=1, help="Input channels [default: those of the first convolution]."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"hypercolumns {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["debug"] = debug


def load(model: str, model_kwargs: str | None, weights: Path | None, pretrained: bool) -> Any:
    """Build the model from the common CLI options (shared by every command)."""
    from hypercolumns.models import load_model

    kwargs: dict[str, Any] = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"not valid JSON: {err}", param_hint="--model-kwargs") from err
        if not isinstance(kwargs, dict):
            raise typer.BadParameter("expected a JSON object", param_hint="--model-kwargs")
    return load_model(model, pretrained=pretrained, weights=weights, **kwargs)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _pair(values: Any) -> str:
    a, b = values
    return _fmt(a) if a == b else f"{_fmt(a)},{_fmt(b)}"


@app.command()
def layers(
    model: ModelArg,
    input_size: InputSize,
    in_channels: InChannels = None,
    fmt: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """List every layer with its output shape and exact receptive field.

    Layers are listed in the order modules first run; leaf modules are numbered (the index
    that --layers options accept). Geometry per axis, as y,x when they differ: rf = input
    pixels one unit sees, stride = input pixels between units, centre = input position of
    unit 0. Flags: global (no spatial units), misaligned (paths with different centres or
    strides met), non-uniform (units differ in extent, e.g. after transposed convolution).

    Example: hypercolumns layers torchvision:resnet50 --input-size 224
    """
    from hypercolumns.layers import layers as list_layers
    from hypercolumns.layers import parse_size

    net = load(model, model_kwargs, weights, pretrained)
    found = list_layers(net, parse_size(input_size), in_channels=in_channels)
    if fmt is Format.json:
        records = ",\n  ".join(json.dumps(layer.to_dict()) for layer in found)
        print(f"[\n  {records}\n]" if records else "[]")
        return
    table = Table(title=f"{model} at {input_size}", header_style="bold")
    for col, justify in (
        ("index", "right"),
        ("name", "left"),
        ("type", "left"),
        ("shape", "left"),
        ("rf", "right"),
        ("stride", "right"),
        ("centre", "right"),
        ("flags", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for layer in found:
        rf = layer.rf
        flags = (
            []
            if rf is None
            else [
                n
                for n, on in (
                    ("global", rf.is_global),
                    ("misaligned", not rf.aligned),
                    ("non-uniform", not rf.uniform),
                )
                if on
            ]
        )
        table.add_row(
            "" if layer.index is None else str(layer.index),
            layer.name,
            layer.type,
            "x".join(str(s) for s in layer.shape),
            "?" if rf is None else ("all" if rf.is_global else _pair(rf.size)),
            "?" if rf is None else ("-" if rf.is_global else _pair(rf.stride)),
            "?" if rf is None else ("-" if rf.is_global else _pair(rf.center)),
            "unknown" if rf is None else " ".join(flags),
        )
    stdout.print(table)


def main() -> None:
    """Entry point: run the app; print library errors as one line and exit non-zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.showwarning = _show_warning
        try:
            app()
        except HypercolumnsError as err:
            if _state["debug"]:
                raise
            stderr.print(f"[bold red]error:[/] {err}", highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            stderr.print("interrupted")
            sys.exit(130)
        except Exception as err:
            if _state["debug"]:
                raise
            stderr.print(
                f"[bold red]error:[/] unexpected {type(err).__name__}: {err} "
                "(run with --debug for the traceback)",
                highlight=False,
            )
            sys.exit(1)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)
