"""``hypercolumns explore``: the browser explorer (:mod:`hypercolumns.app`), served locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hypercolumns.cli._options import ModelKwargs, Pretrained, Weights, load, parse_kwargs
from hypercolumns.cli._render import stderr
from hypercolumns.errors import HypercolumnsError

__all__ = ["explore"]


def explore(
    model: Annotated[
        str,
        typer.Argument(
            metavar="[MODEL]",
            help="timm:NAME, torchvision:NAME, package.module:factory or path/to/file.py:factory "
            "(chosen here, never from the page).",
        ),
    ] = "torchvision:vgg16",
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[IMAGES]...",
            help="Images to offer on the page [default: the bundled photo].",
            show_default=False,
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            "-l",
            metavar="L1,L2",
            help="The hypercolumn's layers: names, indices or globs [default: for the default "
            "model 3,8,15,22,29; else the last layer of each resolution, at most 5].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", min=1, max=65535, help="Port [default: 7860 or the next free]."
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind; another than 127.0.0.1 lets other machines reach the page.",
        ),
    ] = "127.0.0.1",
    size: Annotated[
        int, typer.Option("--size", min=16, help="Shorter side images are shown and run at.")
    ] = 224,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Explore a model on your images in the browser: click a pixel to see its receptive
    fields, its effective receptive field and its hypercolumn.

    Serves a local Gradio page (the `app` extra) on http://127.0.0.1:PORT until Ctrl-C.
    Uploads are images only, up to 20 MiB and 50 megapixels. See docs/explore.md.

    Example: hypercolumns explore torchvision:resnet50 photo.jpg --layers layer1,layer2,layer3
    """
    from hypercolumns import demo
    from hypercolumns.app.page import launch, missing_gradio
    from hypercolumns.app.state import Explorer
    from hypercolumns.app.uploads import Limits

    missing = missing_gradio()
    if missing is not None:
        raise HypercolumnsError(missing)

    def note(message: str) -> None:
        stderr.print(message, highlight=False)

    default = model == demo.MODEL and weights is None and not model_kwargs
    if default:
        net, described = demo.load_demo_model(pretrained, note)
    else:
        if weights is None and not pretrained:
            import torch

            torch.manual_seed(0)
            note(f"note: {model} runs with random weights (seed 0); pass --weights or --pretrained")
            described = "random (seed 0)"
        else:
            described = f"from {weights}" if weights is not None else "pretrained"
        net = load(model, model_kwargs, weights, pretrained)
    random = described.startswith("random")
    record: dict[str, object] = {  # how probes saved from the page rebuild the model
        "model": model,
        "model_kwargs": parse_kwargs(model_kwargs),
        "weights": described,
        "weights_seed": 0 if random else None,
        "weights_file": None if weights is None else str(weights),
        "pretrained": not random and weights is None,
    }
    spec: str | tuple[int, ...] | None = layers
    if spec is None and default:
        spec = demo.RF_LAYERS
    shown = [str(p) for p in images] if images else [str(demo.image_path())]
    explorer = Explorer(
        net,
        model,
        weights=described,
        images=shown,
        layers=None if spec is None else list(spec) if isinstance(spec, tuple) else spec,
        limits=Limits(side=size, longest=2 * size),
        record=record,
    )
    launch(explorer, host=host, port=port)
