"""``hypercolumns erf``: measure the effective receptive field of one unit and print it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hypercolumns.cli._options import (
    Format,
    FormatOpt,
    InChannels,
    InputSize,
    Layer1,
    ModelArg,
    ModelKwargs,
    Pretrained,
    UnitOpt,
    Weights,
    check_figure,
    image_files,
    load,
    unit,
)
from hypercolumns.cli._render import fmt, pair, progress, stdout, tracker

__all__ = ["erf"]


def erf(
    model: ModelArg,
    layer: Layer1,
    input_size: InputSize,
    in_channels: InChannels = None,
    unit_: UnitOpt = None,
    samples: Annotated[
        int, typer.Option("--samples", "-n", help="Inputs to average over (noise or images).")
    ] = 32,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Inputs per forward/backward pass.")
    ] = 8,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            metavar="DIR",
            help="Average over the images in DIR (the first --samples, by name, resized to "
            "--input-size) [default: standard normal noise in the model's normalised space].",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FIG",
            help="Also draw the ERF heat map with the theoretical box (.png, .pdf or .svg).",
        ),
    ] = None,
    fmt_: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Measure the effective receptive field (ERF) of one unit of a layer.

    The ERF is the mean absolute input gradient of the unit (summed over its channels) over
    --samples inputs, normalised to sum 1; the model runs in eval mode with its weights as
    given. Prints, in input pixels: the theoretical rf of the unit, the ERF's centroid and
    std per axis, the half-width of the smallest square around the unit's centre holding
    20..99 % of the ERF, RepLKNet's high-contribution area ratio, and the 95 % square's side
    over the rf size. See docs/erf.md for the exact definitions.

    Example: hypercolumns erf torchvision:resnet50 --layer layer3 --input-size 224 --out erf.png
    """
    from hypercolumns.rf.erf import erf as measure
    from hypercolumns.viz import plot

    check_figure(out)
    inputs: Any = "noise" if images is None else image_files(images)
    net = load(model, model_kwargs, weights, pretrained)
    total = samples if images is None else min(samples, len(inputs))
    with progress(total, "ERF samples") as bar:
        result = measure(
            net, layer, input_size, unit=unit(unit_), inputs=inputs, samples=samples,
            batch_size=batch_size, in_channels=in_channels, seed=seed,
            progress=tracker(bar, total, first=1),
        )  # fmt: skip
    if out is not None:
        plot.save(plot.erf_map(result), out)
    if fmt_ is Format.json:
        print(json.dumps(result.to_dict()))
        return
    stdout.print(_table(result, model))
    if out is not None:
        stdout.print(f"wrote {out}", highlight=False, markup=False)


def _table(result: Any, model: str) -> Table:
    h, w = result.input_size
    table = Table(
        title=f"ERF of {model} {result.layer.name} unit {tuple(result.unit)} at {h}x{w}, "
        f"{result.inputs_text}",
        header_style="bold",
    )
    table.add_column("statistic")
    table.add_column("y,x (input pixels)", justify="right")
    y0, x0, y1, x1 = result.rf_box
    rows = [
        ("theoretical rf size", pair(result.rf_size)),
        ("rf centre", pair(result.rf_center)),
        ("rf box (y0,x0 .. y1,x1)", f"{fmt(y0)},{fmt(x0)} .. {fmt(y1)},{fmt(x1)}"),
        ("ERF centroid", pair(round(v, 2) for v in result.centroid)),
        ("ERF std", pair(round(v, 2) for v in result.std)),
        *((f"{t} % of mass within \u00b1", fmt(r)) for t, r in result.mass_radius.items()),
        *((f"area ratio {t} % (RepLKNet)", f"{a:.4f}") for t, a in result.area_ratio.items()),
        ("95 % square side / rf size", pair(round(v, 3) for v in result.erf_to_rf)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
