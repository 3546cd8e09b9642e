"""What the commands share on the way in: option declarations and the parsing of their values.

The ``Annotated`` aliases declare an option once (its flags, metavar and help) for every command
that takes it; the functions turn option text into library values (``--model-kwargs`` JSON, a
model, number lists, ``--unit I,J``, the images of ``--images DIR``).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from hypercolumns.errors import HypercolumnsError
from hypercolumns.features.align import ALIGNS

__all__ = [
    "Align",
    "Crop",
    "DType",
    "Format",
    "FormatOpt",
    "InChannels",
    "InputSize",
    "Layer1",
    "Mean",
    "ModelArg",
    "ModelKwargs",
    "Pretrained",
    "Resize",
    "Std",
    "UnitOpt",
    "Weights",
    "cell",
    "check_figure",
    "count_or_file",
    "floats",
    "image_files",
    "load",
    "parse_kwargs",
    "pixel",
    "unit",
]


class Format(StrEnum):
    table = "table"
    json = "json"


# The choices of --align are the library's (typer needs an Enum to list them in --help).
Align = StrEnum("Align", [(name.replace("-", "_"), name) for name in ALIGNS])  # type: ignore[misc]


class DType(StrEnum):
    float32 = "float32"
    float16 = "float16"


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
Resize = Annotated[
    str | None,
    typer.Option(
        "--resize",
        metavar="S|H,W",
        help="Resize first: S scales the shorter side to S (aspect kept), H,W resizes exactly "
        "[default: keep the image's own size].",
    ),
]
Crop = Annotated[
    str | None,
    typer.Option(
        "--crop", metavar="center:S|center:H,W", help="Centre crop after --resize [default: none]."
    ),
]
Mean = Annotated[
    str | None,
    typer.Option(
        "--mean",
        metavar="M[,M,M]",
        help="Normalisation mean per channel [default: the model's: timm pretrained_cfg, "
        "ImageNet for torchvision, none otherwise].",
    ),
]
Std = Annotated[
    str | None,
    typer.Option("--std", metavar="S[,S,S]", help="Normalisation std per channel (see --mean)."),
]
Layers = Annotated[
    str,
    typer.Option(
        "--layers",
        "-l",
        metavar="L1,L2",
        help="Layers to stack: names, indices (3,8), globs (features.*) or 'all'.",
        show_default=False,
    ),
]
Layer1 = Annotated[
    str,
    typer.Option(
        "--layer", "-l", metavar="L", help="One spatial layer: name or index.", show_default=False
    ),
]
UnitOpt = Annotated[
    str | None,
    typer.Option(
        "--unit",
        "-u",
        metavar="I,J",
        help="Unit (row, column) in the layer's grid [default: the middle of the grid].",
    ),
]


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON as a dict (``{}`` when not given)."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"not valid JSON: {err}", param_hint="--model-kwargs") from err
    if not isinstance(kwargs, dict):
        raise typer.BadParameter("expected a JSON object", param_hint="--model-kwargs")
    return kwargs


def load(model: str, model_kwargs: str | None, weights: Path | None, pretrained: bool) -> nn.Module:
    """Build the model from the common options (shared by every command). Random weights (no
    ``--weights``, no ``--pretrained``) are drawn with seed 0, so every command repeats."""
    import torch

    from hypercolumns.models import load_model

    kwargs = parse_kwargs(model_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_model(model, pretrained=pretrained, weights=weights, **kwargs)


def floats(text: str | None, option: str) -> list[float] | None:
    """``"0.5,0.5,0.5"`` as numbers (``None`` when not given); ``option`` names the flag."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise HypercolumnsError(f"{option} expects comma-separated numbers, got {text!r}") from err


def cell(text: str) -> tuple[int, int]:
    """``--unit I,J`` as a pair of ints."""
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError as err:
        raise HypercolumnsError(f"--unit expects I,J (two integers), got {text!r}") from err
    return i, j


def count_or_file(text: str | None, option: str = "--points") -> int | Path | None:
    """``--points``: a count of pixels to sample, or a file of them (``None`` when not given)."""
    if text is None:
        return None
    if text.strip().isdigit():
        n = int(text)
        if n < 1:
            raise HypercolumnsError(f"{option} must be a positive number of pixels to sample")
        return n
    if not Path(text).is_file():
        raise HypercolumnsError(
            f"{option} {text!r} is neither a count nor a file (.json, .npy, .csv of y,x pairs)"
        )
    return Path(text)


def pixel(text: str, option: str) -> tuple[int, int]:
    """``Y,X`` (``--similar``) as a pair of ints."""
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError as err:
        raise HypercolumnsError(
            f"{option} expects Y,X (two integers: row, column), got {text!r}"
        ) from err
    return y, x


def unit(text: str | None) -> Any:
    """``--unit`` of ``erf`` and ``draw rf``: a cell, or ``"center"`` when not given."""
    return "center" if text is None else cell(text)


def check_figure(out: Path | None) -> None:
    """Fail before any work when ``out`` cannot hold a figure (``None``: no figure asked)."""
    from hypercolumns.viz import plot

    if out is not None:
        plot.check_path(out)


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` for ``erf --images``: those ``extract DIR`` would take
    (:func:`hypercolumns.pipeline.image_files`), without subfolders."""
    from hypercolumns.pipeline import IMAGE_SUFFIXES
    from hypercolumns.pipeline import image_files as listed

    if not folder.is_dir():
        raise HypercolumnsError(f"--images {str(folder)!r} is not a folder")
    files = listed(folder, recursive=False)
    if not files:
        raise HypercolumnsError(
            f"--images {str(folder)!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files
