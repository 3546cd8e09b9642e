"""``hypercolumns cluster``: k-means on the hypercolumns of one or several images (fitted
jointly), each image drawn beside its cluster map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hypercolumns.cli._options import (
    Align,
    Crop,
    Format,
    FormatOpt,
    Layers,
    Mean,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    Std,
    Weights,
    check_figure,
    floats,
    load,
)
from hypercolumns.cli._render import progress, progress_callback, stdout, tracker
from hypercolumns.features.align import check_align

__all__ = ["cluster"]


def cluster(
    model: ModelArg,
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...",
            help="Image files (sizes may differ), folders, glob patterns or .txt/.csv lists, as "
            "for extract; all are clustered together.",
            show_default=False,
        ),
    ],
    layers_spec: Layers,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FIG",
            help="Figure file: .png, .pdf or .svg.",
            show_default=False,
        ),
    ],
    k: Annotated[int, typer.Option("-k", "--clusters", min=1, help="Number of clusters.")] = 8,
    points: Annotated[
        int,
        typer.Option(
            "--points", "-p", min=1, help="Pixels sampled per image to fit the clusters on."
        ),
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling and seeding.")] = 0,
    iterations: Annotated[
        int, typer.Option("--iterations", min=1, help="Most Lloyd iterations per restart.")
    ] = 100,
    restarts: Annotated[
        int,
        typer.Option("--restarts", min=1, help="k-means++ seedings; the best one is kept."),
    ] = 1,
    standardize: Annotated[
        bool,
        typer.Option(
            "--standardize/--no-standardize",
            help="Standardise each channel over the samples first, so that no layer dominates.",
        ),
    ] = True,
    align: Annotated[
        Align, typer.Option("--align", help="rf: by receptive-field centres; half-pixel: classic.")
    ] = Align("rf"),
    resize: Resize = None,
    crop: Crop = None,
    mean: Mean = None,
    std: Std = None,
    fmt_: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Cluster pixels by their hypercolumns (k-means) and draw each image beside its map.

    The clusters are fitted jointly on --points pixels of every image (k-means++ seeding,
    seeded, on channels standardised over the samples), so a colour means the same cluster in
    every row. Every pixel is then assigned exactly, at each layer's own resolution, without
    forming the hypercolumns. A model without --weights or --pretrained has random weights,
    seeded (0) as extract seeds them, so a run can be repeated. --format json prints the
    clusters' sizes per image.

    Example: hypercolumns cluster torchvision:vgg16 a.jpg b.jpg --layers 3,8,15,22 -k 8
    --out clusters.png
    """

    from hypercolumns.images import load_image
    from hypercolumns.pipeline import expand_inputs
    from hypercolumns.probes.kmeans import fit_kmeans
    from hypercolumns.viz import plot
    from hypercolumns.viz.clusters import cluster_figure

    check_figure(out)
    chosen_align = check_align(align.value)
    sources = expand_inputs(inputs, check_keys=False)
    net = load(model, model_kwargs, weights, pretrained)  # random weights: seed 0, each run
    means, stds = floats(mean, "--mean"), floats(std, "--std")
    loaded = [
        load_image(s.path, net, mean=means, std=stds, resize=resize, crop=crop) for s in sources
    ]
    with progress_callback("sampling") as report:
        km = fit_kmeans(
            net, [x for x, _ in loaded], layers_spec, k, points=points, seed=seed,
            align=chosen_align, standardize=standardize, iterations=iterations,
            restarts=restarts, progress=report,
        )  # fmt: skip
    labels = []
    with progress(len(loaded), "assigning") as bar:
        step = tracker(bar, len(loaded))
        for i, (x, _) in enumerate(loaded):
            labels.append(km.assign(x)[0])
            if step is not None:
                step(i, len(loaded))
    names = [layer.name for layer in km.layers]
    fig = cluster_figure(
        [prep.unnormalize(x[0]) for x, prep in loaded],
        labels,
        k,
        titles=[s.path.name for s in sources],
        layers=names,
    )
    plot.save(fig, out)
    if fmt_ is Format.json:
        record = {
            "out": str(out), "k": k, "layers": names, "samples": sum(km.counts),
            "iterations": km.iterations, "inertia": km.inertia,
            "images": [
                {"path": str(s.path), "size": list(lab.shape),
                 "pixels": lab.flatten().bincount(minlength=k).tolist()}
                for s, lab in zip(sources, labels, strict=True)
            ],
        }  # fmt: skip
        print(json.dumps(record))
        return
    stdout.print(
        f"wrote {out}: {k} clusters of {len(sources)} image(s), layers {', '.join(names)}",
        highlight=False,
    )
