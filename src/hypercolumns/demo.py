"""The offline tour behind ``hypercolumns demo``: VGG-16 on a bundled public-domain photo.

Weights: ImageNet weights are used when they are already in the torch hub cache
(``torch.hub.get_dir()/checkpoints``), which needs no network. Otherwise the demo does not wait
on a model hub: it notes that it uses random weights (seeded, so figures are reproducible) and
carries on; ``download=True`` tries to download them first. Random-weight figures still show
the geometry (receptive fields, shapes) exactly; only the activation patterns differ.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypercolumns._version import __version__
from hypercolumns.errors import ModelError

__all__ = [
    "HYPERCOLUMN_LAYERS",
    "IMAGE",
    "MODEL",
    "RF_LAYERS",
    "image_path",
    "load_demo_model",
    "run",
]

MODEL = "torchvision:vgg16"
IMAGE = "astronaut.jpg"
HYPERCOLUMN_LAYERS = (3, 8)
RF_LAYERS = (3, 8, 15, 22, 29)
FEATURE_LAYER = 3
ERF_LAYER = 22


def image_path() -> Path:
    """The bundled demo image (see ``hypercolumns/data/README.md`` for source and licence)."""
    return Path(str(resources.files("hypercolumns") / "data" / IMAGE))


def _weights_cached(name: str) -> bool:
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    file = Path(urlparse(url).path).name
    return (Path(torch.hub.get_dir()) / "checkpoints" / file).is_file()


def load_demo_model(
    download: bool = False, note: Callable[[str], None] = print
) -> tuple[nn.Module, str]:
    """The demo's model and a description of its weights: ImageNet weights when cached (or
    downloaded with ``download=True``), else random weights (seed 0) with a one-line ``note``."""
    from hypercolumns.models import load_model

    name = MODEL.partition(":")[2]
    if download or _weights_cached(name):
        try:
            return load_model(MODEL, pretrained=True), "pretrained (ImageNet, torchvision DEFAULT)"
        except ModelError as err:
            note(f"{err}")
    note(
        "note: VGG-16 ImageNet weights are not in the torch hub cache, so the demo uses random "
        "weights (seed 0); geometry is exact, activations are not those of a trained network "
        "(run with --download where a network is available)"
    )
    torch.manual_seed(0)
    return load_model(MODEL), "random (seed 0)"


def run(
    out: Path,
    *,
    download: bool = False,
    note: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the tour, write figures and ``summary.json`` into ``out``; return the summary.

    Figures: ``feature_map.png`` (one channel of layer 3), ``grid.png`` (16 channels of layer
    3), ``mean_hypercolumn.png`` (layers 3 and 8, beside the image), ``receptive_fields.png``
    (centre units of layers 3, 8, 15, 22, 29), ``growth.png`` (receptive field and stride
    along the network), ``erf_on_image.png`` (the effective receptive field of the centre unit
    of layer 22 on the image, with its theoretical box) and ``conv_transposed.png`` (which input
    cells feed each output cell of a stride-2 transposed convolution).
    """
    from hypercolumns.features.columns import hypercolumns
    from hypercolumns.features.maps import feature_maps
    from hypercolumns.images import load_image
    from hypercolumns.rf.erf import erf
    from hypercolumns.rf.layers import layers, select
    from hypercolumns.viz import draw, plot

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model, weights = load_demo_model(download, note)
    x, prep = load_image(image_path(), model)
    image = prep.unnormalize(x[0])
    found = layers(model, prep.size)
    feat_layer = select(found, FEATURE_LAYER)[0]
    hc_layers = select(found, list(HYPERCOLUMN_LAYERS))
    rf_layers = select(found, list(RF_LAYERS))

    maps = feature_maps(model, x, [feat_layer.name], as_maps=True)[feat_layer.name]
    hc = hypercolumns(model, x, [layer.name for layer in hc_layers])
    channel = int(maps[0].flatten(1).std(dim=1).argmax())
    figures = {
        "feature_map.png": plot.feature_map(maps, channel, layer=feat_layer, image=image),
        "grid.png": plot.channel_grid(maps, 16, layer=feat_layer),
        "mean_hypercolumn.png": plot.mean_hypercolumn(hc.features, image, layers=hc_layers),
        "receptive_fields.png": plot.receptive_fields(image, rf_layers),
        "growth.png": draw.growth(found, prep.size, model=model, title=f"{MODEL}"),
        "erf_on_image.png": plot.erf_on_image(
            erf(model, select(found, ERF_LAYER)[0].name, prep.size, inputs=x), image
        ),
        "conv_transposed.png": draw.conv_diagram(
            draw.ConvSpec(3, stride=2, padding=1, transposed=True, output_padding=1), 3
        ),
    }
    for name, fig in figures.items():
        plot.save(fig, out / name)

    summary: dict[str, Any] = {
        "version": __version__,
        "model": MODEL,
        "weights": weights,
        "image": prep.to_dict() | {"path": f"hypercolumns/data/{IMAGE}"},
        "layers": [layer.to_dict() for layer in rf_layers],
        "feature_map": {
            "layer": feat_layer.name,
            "channel": channel,
            "shape": list(maps.shape),
        },
        "hypercolumns": {
            "layers": [layer.name for layer in hc_layers],
            "shape": list(hc.features.shape),
            "channels": hc.channel_ranges(),
        },
        "figures": sorted(figures),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
