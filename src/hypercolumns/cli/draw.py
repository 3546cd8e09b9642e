"""``hypercolumns draw``: the diagram commands (``rf``, ``conv``, ``growth``), one group."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from hypercolumns.cli._options import (
    Crop,
    InChannels,
    InputSize,
    Layer1,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    UnitOpt,
    Weights,
    cell,
    check_figure,
    load,
    unit,
)
from hypercolumns.cli._render import progress, stdout, tracker
from hypercolumns.errors import HypercolumnsError

__all__ = ["app"]

app = typer.Typer(
    name="draw",
    help="Diagrams: convolution arithmetic, receptive-field growth, receptive fields over an image.",  # noqa: E501
    no_args_is_help=True,
)


@app.command("rf")
def draw_rf(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.", show_default=False)],
    layer: Layer1,
    unit_: UnitOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FIG", help="Figure file: .png, .pdf or .svg.")
    ] = Path("rf.png"),
    resize: Resize = None,
    crop: Crop = None,
    in_channels: InChannels = None,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Draw a unit's theoretical receptive field and its effective receptive field (ERF)
    over the image.

    The ERF here is that of this one image: the absolute gradient of the unit (summed over
    its channels) with respect to the image, as a heat overlay; the box is the exact
    theoretical receptive field (it may reach past the image: padding). The image is
    preprocessed as for extract.

    Example: hypercolumns draw rf torchvision:vgg16 cat.jpg --layer 22 --out rf.png
    """
    from hypercolumns.images import load_image
    from hypercolumns.rf.erf import erf as measure
    from hypercolumns.viz import plot

    check_figure(out)
    net = load(model, model_kwargs, weights, pretrained)
    x, prep = load_image(image, net, channels=in_channels, resize=resize, crop=crop)
    result = measure(
        net, layer, prep.size, unit=unit(unit_), inputs=x, samples=1, in_channels=prep.channels
    )
    result = dataclasses.replace(result, inputs="images")
    plot.save(plot.erf_on_image(result, prep.unnormalize(x[0])), out)
    stdout.print(f"wrote {out}", highlight=False, markup=False)


@app.command("conv")
def draw_conv(
    kernel: Annotated[int, typer.Option("--kernel", "-k", help="Kernel size.")] = 3,
    stride: Annotated[int, typer.Option("--stride", "-S", help="Stride.")] = 1,
    padding: Annotated[int, typer.Option("--padding", "-p", help="Padding on each side.")] = 0,
    dilation: Annotated[int, typer.Option("--dilation", "-d", help="Dilation.")] = 1,
    transposed: Annotated[
        bool,
        typer.Option(
            "--transposed", help="Transposed convolution (fractional stride, zeros inserted)."
        ),
    ] = False,
    output_padding: Annotated[
        int,
        typer.Option(
            "--output-padding",
            help="Transposed only: cells added at the bottom and right of the output.",
        ),
    ] = 0,
    size: Annotated[
        int, typer.Option("--input", "-n", metavar="N", help="Input cells per side.")
    ] = 5,
    unit_: Annotated[
        str | None,
        typer.Option(
            "--unit",
            metavar="I,J",
            help="Output cell to highlight [default: the middle one]; not with --animate.",
        ),
    ] = None,
    animate: Annotated[
        bool, typer.Option("--animate", help="An animated GIF: one frame per output cell.")
    ] = False,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second of the GIF.")] = 2,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help=".png, .pdf or .svg; .gif with --animate [default: conv.png, or conv.gif].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw which input cells feed which output cells of one 2-D convolution.

    The input grid (padding cells dashed), the kernel footprint of one output cell (dots:
    the kernel taps, so dilation shows as gaps) and the output grid, with the output-size
    formula. A transposed convolution is drawn beside the direct convolution it equals:
    stride - 1 zeros inserted between the input cells, dilation*(kernel-1) - padding cells
    of implicit padding, stride 1. --animate slides the kernel over every output cell.

    Examples: hypercolumns draw conv --kernel 3 --stride 2 --padding 1 --out strided.png;
    hypercolumns draw conv -k 3 -S 2 -p 1 --transposed --output-padding 1 --input 3 --animate
    """
    from hypercolumns.viz import draw

    spec = draw.ConvSpec(kernel, stride, padding, dilation, transposed, output_padding)
    path = draw.check_path(out or ("conv.gif" if animate else "conv.png"), animated=animate)
    if animate and unit_ is not None:
        raise HypercolumnsError("--unit picks one output cell; --animate shows them all")
    if fps < 1:
        raise HypercolumnsError(f"--fps must be at least 1, got {fps}")
    if not animate:
        chosen = cell(unit_) if unit_ is not None else None
        draw.save(draw.conv_diagram(spec, size, unit=chosen), path)
        stdout.print(f"wrote {path}", highlight=False, markup=False)
        return
    animation = draw.conv_animation(spec, size)
    frames = draw.conv_arithmetic(spec, size).output_size ** 2
    with progress(frames, "drawing frames") as bar:
        draw.save(animation, path, dpi=80, fps=fps, progress=tracker(bar, frames))
    stdout.print(f"wrote {path} ({frames} frames)", highlight=False, markup=False)


@app.command("growth")
def draw_growth(
    model: ModelArg,
    input_size: InputSize,
    in_channels: InChannels = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="FILE", help="Figure file: .png, .pdf or .svg."),
    ] = Path("growth.png"),
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
) -> None:
    """Plot the receptive-field size and stride of every layer along the network.

    Log scale, by layer index (the order modules run): stacking adds to the receptive field,
    strided convolutions and pooling multiply the stride (marked), dilated convolutions are
    marked; both axes are drawn when they differ. Global layers and layers with an unknown
    receptive field are shaded and listed in the legend.

    Example: hypercolumns draw growth torchvision:resnet50 --input-size 224 --out growth.png
    """
    from hypercolumns._checks import parse_size
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.viz import draw

    draw.check_path(out, animated=False)
    size = parse_size(input_size)
    net = load(model, model_kwargs, weights, False)
    found = list_layers(net, size, in_channels=in_channels)
    title = f"{model} at {size[0]}" + (f"x{size[1]}" if size[1] != size[0] else "")
    draw.save(draw.growth(found, size, model=net, title=title), out)
    stdout.print(f"wrote {out}", highlight=False, markup=False)
