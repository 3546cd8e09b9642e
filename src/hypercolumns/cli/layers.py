"""``hypercolumns layers``: every layer of a model with its output shape and receptive field."""

from __future__ import annotations

import json

from hypercolumns.cli._options import (
    Format,
    FormatOpt,
    InChannels,
    InputSize,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Weights,
    load,
)
from hypercolumns.cli._render import layer_table, stdout

__all__ = ["layers"]


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
    from hypercolumns._checks import parse_size
    from hypercolumns.rf.layers import layers as list_layers

    net = load(model, model_kwargs, weights, pretrained)
    records = [
        layer.to_dict()
        for layer in list_layers(net, parse_size(input_size), in_channels=in_channels)
    ]
    if fmt is Format.json:
        lines = ",\n  ".join(json.dumps(record) for record in records)
        print(f"[\n  {lines}\n]" if lines else "[]")
        return
    stdout.print(layer_table(records, f"{model} at {input_size}"))
