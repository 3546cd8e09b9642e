"""``hypercolumns match``: the pixels of one image that look most like points of another.

The work is :func:`hypercolumns.correspond`; the figure is
:func:`hypercolumns.viz.matches.matches`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hypercolumns.cli._options import (
    Align,
    Crop,
    Format,
    FormatOpt,
    Mean,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    Std,
    Weights,
    check_figure,
    count_or_file,
    floats,
    load,
)
from hypercolumns.cli._render import stdout

__all__ = ["match"]


def match(
    model: ModelArg,
    source: Annotated[
        Path, typer.Argument(metavar="A", help="Source image file.", show_default=False)
    ],
    target: Annotated[
        Path,
        typer.Argument(metavar="B", help="Target image file (any size).", show_default=False),
    ],
    layers_spec: Annotated[
        str,
        typer.Option(
            "--layers",
            "-l",
            metavar="L1,L2",
            help="Layers whose hypercolumns are compared: names, indices (3,8), globs or 'all'.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FIG",
            help="Figure file (.png, .pdf, .svg): the images side by side, a line per match "
            "coloured by score [default: no figure].",
        ),
    ] = None,
    points: Annotated[
        str,
        typer.Option(
            "--points",
            "-p",
            metavar="N|FILE",
            help="Source pixels: sample N (seeded by --seed), or read (y, x) pairs from a "
            ".json, .npy or .csv file.",
        ),
    ] = "200",
    mutual: Annotated[
        bool,
        typer.Option(
            "--mutual",
            help="Check each match back: mutual when the best source match of the target "
            "pixel is within one pixel of the source point (others drawn faint).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --points N.")] = 0,
    align: Annotated[
        Align, typer.Option("--align", help="rf: by receptive-field centres; half-pixel: classic.")
    ] = Align("rf"),
    fmt: FormatOpt = Format.table,
    resize: Resize = None,
    crop: Crop = None,
    mean: Mean = None,
    std: Std = None,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Match points of image A to the pixels of image B whose hypercolumns are most similar
    (cosine), exact at each layer's own resolution, in chunks of points (bounded memory).

    Both images are preprocessed as for extract. --format json prints every match (source,
    target, score, and mutual with --mutual) with the model and layers; the table format
    prints a summary.

    Example: hypercolumns match torchvision:vgg16 a.jpg b.jpg --layers 3,8,15,22 --mutual
    --out matches.png
    """
    from hypercolumns.features.align import check_align
    from hypercolumns.features.points import read_points
    from hypercolumns.images import load_image
    from hypercolumns.probes.similarity import correspond
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.rf.layers import select
    from hypercolumns.viz import matches, plot

    check_figure(out)
    sample = count_or_file(points)
    net = load(model, model_kwargs, weights, pretrained)
    options: dict[str, Any] = {"mean": floats(mean, "--mean"), "std": floats(std, "--std"),
                               "resize": resize, "crop": crop}  # fmt: skip
    a, prep_a = load_image(source, net, **options)
    b, prep_b = load_image(target, net, **options)
    chosen = select(list_layers(net, prep_a.size), layers_spec, input_size=prep_a.size)
    names = [layer.name for layer in chosen]
    at = read_points(sample, prep_a.size) if isinstance(sample, Path) else sample
    assert at is not None
    found = correspond(
        net, a, b, names, at, mutual=mutual, align=check_align(align.value), seed=seed
    )
    title = f"{model}, layers {', '.join(names)}"
    if out is not None:
        fig = matches.matches(
            prep_a.unnormalize(a[0]), prep_b.unnormalize(b[0]), found.source_points,
            found.points, found.scores, mutual=found.mutual, title=title,
        )  # fmt: skip
        plot.save(fig, out)
    if fmt is Format.json:
        records = [
            {"source": s, "target": t, "score": round(v, 6)}
            for s, t, v in zip(
                found.source_points.tolist(), found.points.tolist(), found.scores.tolist(),
                strict=True,
            )
        ]  # fmt: skip
        if found.mutual is not None:
            for record, m in zip(records, found.mutual.tolist(), strict=True):
                record["mutual"] = m
        print(json.dumps({
            "model": model, "layers": names, "align": align.value,
            "source": str(source), "target": str(target),
            "source_size": list(prep_a.size), "target_size": list(prep_b.size),
            "figure": None if out is None else str(out), "matches": records,
        }))  # fmt: skip
        return
    scores = found.scores
    line = (f"{len(found)} matches from {source} to {target}, score median "
            f"{float(scores.median()):.3f} (min {float(scores.min()):.3f}, max "
            f"{float(scores.max()):.3f})")  # fmt: skip
    if found.mutual is not None:
        line += f"; {int(found.mutual.sum())} mutual"
    stdout.print(line, highlight=False)
    if out is not None:
        stdout.print(f"wrote {out}", highlight=False, markup=False)
