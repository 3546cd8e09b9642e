"""``hypercolumns show``: draw what a layer sees on one image, one figure per call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hypercolumns.cli._options import (
    Crop,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    Weights,
    check_figure,
    floats,
    load,
    pixel,
)
from hypercolumns.cli._render import stdout
from hypercolumns.errors import HypercolumnsError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from hypercolumns.rf.layers import Layer

__all__ = ["show"]


def show(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.", show_default=False)],
    layer: Annotated[
        str,
        typer.Option(
            "--layer",
            "-l",
            metavar="L",
            help="Layer name or index; several (3,8) with --mean, --pca or --rf.",
            show_default=False,
        ),
    ],
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
    channel: Annotated[
        int | None, typer.Option("--channel", "-c", help="Channel to draw [default: 0].")
    ] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Draw a grid of channels.")] = False,
    n_channels: Annotated[
        int, typer.Option("--channels", min=1, help="Channels in the --grid (the first N).")
    ] = 16,
    mean_hc: Annotated[
        bool,
        typer.Option(
            "--mean",
            help="Mean hypercolumn activation per pixel over the layers, beside the image.",
        ),
    ] = False,
    pca: Annotated[
        bool,
        typer.Option(
            "--pca",
            help="The first three principal components of the hypercolumns (over the layers, "
            "fitted on this image) as RGB, beside the image.",
        ),
    ] = False,
    rf: Annotated[
        bool,
        typer.Option(
            "--rf", help="Receptive-field boxes of each layer's centre unit on the image."
        ),
    ] = False,
    similar: Annotated[
        str | None,
        typer.Option(
            "--similar",
            metavar="Y,X",
            help="Cosine similarity of pixel (Y, X)'s hypercolumn (over all --layer layers) to "
            "every pixel, with the receptive field of each layer's unit nearest it.",
        ),
    ] = None,
    resize: Resize = None,
    crop: Crop = None,
    norm_mean: Annotated[
        str | None,
        typer.Option(
            "--norm-mean", metavar="M[,M,M]", help="Normalisation mean (see extract --mean)."
        ),
    ] = None,
    norm_std: Annotated[
        str | None, typer.Option("--norm-std", metavar="S[,S,S]", help="Normalisation std.")
    ] = None,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Draw what a layer sees: a feature map, a grid of channels, the mean hypercolumn
    activation, or receptive fields on the image.

    One figure per call, chosen by flag: one channel (default, --channel K), --grid,
    --mean (over all --layer layers), --pca (a PCA image of the hypercolumns of all --layer
    layers), --rf, or --similar Y,X (the pixels whose hypercolumns look like that of pixel
    Y,X). The image is preprocessed as for extract.

    Example: hypercolumns show torchvision:vgg16 cat.jpg --layer 3,8 --mean --out mean.png

    Example: hypercolumns show torchvision:vgg16 cat.jpg --layer 3,8,15,22 --similar 120,96
    --out similar.png
    """
    from hypercolumns.images import load_image
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.rf.layers import select
    from hypercolumns.viz import plot

    flags = (("--channel", channel is not None), ("--grid", grid), ("--mean", mean_hc),
             ("--pca", pca), ("--rf", rf), ("--similar", similar is not None))  # fmt: skip
    modes = [name for name, on in flags if on]
    if len(modes) > 1:
        raise HypercolumnsError(f"choose one of {', '.join(modes)}: one figure per call")
    check_figure(out)
    query = None if similar is None else pixel(similar, "--similar")
    net = load(model, model_kwargs, weights, pretrained)
    x, prep = load_image(
        image, net, mean=floats(norm_mean, "--norm-mean"), std=floats(norm_std, "--norm-std"),
        resize=resize, crop=crop,
    )  # fmt: skip
    picture = prep.unnormalize(x[0])
    chosen = select(list_layers(net, prep.size), layer, input_size=prep.size)
    if (mean_hc or rf or pca or query is not None) is False and len(chosen) > 1:
        raise HypercolumnsError(
            f"--layer {layer!r} names {len(chosen)} layers; a feature map or --grid shows one "
            "(several work with --mean, --pca, --rf and --similar)"
        )
    if query is not None:
        fig = _similar(net, x, picture, chosen, query)
    elif rf:
        fig = plot.receptive_fields(picture, chosen)
    elif pca:
        from hypercolumns.probes.pca_image import fit_pca_image
        from hypercolumns.viz.pca_image import pca_figure

        names = [c.name for c in chosen]
        fitted = fit_pca_image(net, x, names)
        fig = pca_figure(
            picture, fitted.rgb(x)[0], layers=names, explained=fitted.explained_ratio.tolist()
        )
    elif mean_hc:
        from hypercolumns.features.columns import hypercolumns as compute

        result = compute(net, x, [c.name for c in chosen])
        fig = plot.mean_hypercolumn(result.features, picture, layers=chosen)
    else:
        from hypercolumns.features.maps import feature_maps

        target = chosen[0]
        if target.is_global:
            raise HypercolumnsError(
                f"layer {target.name!r} is global (shape {target.shape}): it has no spatial map; "
                "choose a spatial layer (see `hypercolumns layers`)"
            )
        maps = feature_maps(net, x, [target.name], as_maps=True)[target.name]
        if grid:
            fig = plot.channel_grid(maps, n_channels, layer=target)
        else:
            fig = plot.feature_map(maps, channel or 0, layer=target, image=picture)
    plot.save(fig, out)
    stdout.print(f"wrote {out}", highlight=False, markup=False)


def _similar(
    net: nn.Module,
    x: torch.Tensor,
    picture: torch.Tensor,
    chosen: list[Layer],
    query: tuple[int, int],
) -> Figure:
    """The ``--similar`` figure of pixel ``query`` of the image ``x``."""
    import torch

    from hypercolumns.probes.similarity import similarity
    from hypercolumns.viz import matches

    (height, width), (y, x_) = x.shape[-2:], query
    if not (0 <= y < height and 0 <= x_ < width):
        raise HypercolumnsError(
            f"--similar {y},{x_} is outside the {height}x{width} image (Y in 0..{height - 1}, "
            f"X in 0..{width - 1}; sizes after --resize/--crop)"
        )
    sim = similarity(net, x, [c.name for c in chosen], torch.tensor([query]))
    return matches.similarity_map(picture, sim[0], query, layers=chosen)
