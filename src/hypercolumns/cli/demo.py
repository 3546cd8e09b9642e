"""``hypercolumns demo``: the offline tour (:func:`hypercolumns.demo.run`), printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hypercolumns.cli._options import Format, FormatOpt
from hypercolumns.cli._render import layer_table, stderr, stdout

__all__ = ["demo"]


def demo(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="DIR", help="Folder for figures and summary.json."),
    ] = Path("hypercolumns-demo"),
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Try to download VGG-16 ImageNet weights when they are not cached (needs a "
            "network; without it the demo uses random weights at once).",
        ),
    ] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """The tour, offline: torchvision VGG-16 on a bundled public-domain photo (224x224).

    Writes feature_map.png (a channel of layer 3), grid.png (16 channels of layer 3),
    mean_hypercolumn.png (layers 3 and 8, 192 channels), receptive_fields.png (layers
    3, 8, 15, 22, 29), growth.png (receptive field and stride per layer), erf_on_image.png
    (effective receptive field of layer 22 on the photo) and conv_transposed.png (a transposed
    convolution's connections), plus summary.json, and prints the layers.
    Uses ImageNet weights when they are already in the torch hub cache, else random
    weights (seeded) with a note.
    """
    from hypercolumns import demo as tour

    summary = tour.run(out, download=download, note=lambda m: stderr.print(m, highlight=False))
    if fmt is Format.json:
        print(json.dumps(summary, indent=2))
        return
    title = f"{summary['model']} on {summary['image']['path']} ({summary['weights']} weights)"
    stdout.print(layer_table(summary["layers"], title, flags=False))
    hc = summary["hypercolumns"]
    stdout.print(
        f"hypercolumns of {', '.join(hc['layers'])}: {tuple(hc['shape'])}; "
        f"figures and summary.json in {out} ({summary['seconds']:.1f} s)",
        highlight=False,
    )
