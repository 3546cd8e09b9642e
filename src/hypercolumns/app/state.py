"""The explorer's state: a model planned once per image size, and the image on show.

:class:`Explorer` holds what lives as long as the app: the model (chosen when the app starts,
never from the page), the images offered, the upload limits, and the plans made for it: the
layer table (:func:`hypercolumns.layers`) and a
:class:`~hypercolumns.features.linear.LinearMapper` per ``(image size, layers)``. Every model
call goes through :meth:`Explorer.running`, one at a time (forward hooks are per model).

:class:`State` is one image on show with its chosen layers and their maps at each layer's own
resolution (:class:`~hypercolumns.features.linear.LayerMaps`), computed once when the image or
the layers change, so that a click only reads them. A state is immutable: the page keeps one
per browser session and replaces it; handlers (:mod:`hypercolumns.app.handlers`) are plain
functions of a state and a pixel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from hypercolumns.app.uploads import Limits, check_upload, model_size
from hypercolumns.errors import LayerNotFoundError
from hypercolumns.features.linear import LayerMaps, LinearMapper
from hypercolumns.images import load_image
from hypercolumns.models import input_channels
from hypercolumns.rf.layers import Layer, LayerSpec, layers, select

__all__ = ["MAX_LAYERS", "Explorer", "State", "default_layers"]

MAX_LAYERS = 8
"""Most layers a hypercolumn (and the receptive-field view) may stack in the explorer."""


def default_layers(found: Sequence[Layer], count: int = 5) -> list[Layer]:
    """The last spatial leaf layer at each stride, the deepest ``count`` of them: one layer per
    resolution, as the hypercolumn papers stack them."""
    last: dict[tuple[float, float], Layer] = {}
    for layer in found:
        rf = layer.rf
        if layer.index is None or rf is None or rf.is_global or layer.layout is None:
            continue
        last[rf.stride] = layer
    chosen = sorted(last.values(), key=lambda layer: layer.index or 0)
    return chosen[-count:]


class Explorer:
    """The model side of the app, planned once per image size.

    Args:
        model: The network (eval mode is set while it runs; it is left as found).
        name: How the page names it (``"torchvision:vgg16"``).
        weights: What its weights are, in words (``"random (seed 0)"``).
        images: Images offered on the page; the first is shown first.
        layers: The hypercolumn's layers (as for :func:`hypercolumns.select`); by default one
            per resolution (:func:`default_layers`).
        limits: Upload limits and the size images are run at.
        record: How the model was built, for probes saved from the page to rebuild it
            (``model``, ``model_kwargs``, ``weights_seed``, ``weights_file``, ``pretrained``,
            as :func:`hypercolumns.fit_probe` records a spec); ``None`` when it cannot be
            rebuilt by name (the probe then records "weights as given").
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        *,
        weights: str,
        images: Sequence[str | Path],
        layers: LayerSpec | None = None,
        limits: Limits | None = None,
        record: dict[str, object] | None = None,
    ) -> None:
        if not images:
            raise ValueError("the explorer needs at least one image to show")
        self.model = model
        self.name = name
        self.weights = weights
        self.images = tuple(Path(p) for p in images)
        self.layer_spec = layers
        self.limits = limits or Limits()
        self.record = record
        self.in_channels = input_channels(model)
        self._lock = threading.RLock()
        self._layers: dict[tuple[int, int], list[Layer]] = {}
        self._mappers: dict[tuple[tuple[int, int], tuple[str, ...]], LinearMapper] = {}

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the model: one forward (or backward) pass at a time."""
        with self._lock:
            yield

    def layers(self, size: tuple[int, int]) -> list[Layer]:
        """Every layer of the model at input ``size``, listed once per size."""
        with self._lock:
            if size not in self._layers:
                self._layers[size] = layers(self.model, size, in_channels=self.in_channels)
            return self._layers[size]

    def choose(self, size: tuple[int, int], spec: LayerSpec | None) -> tuple[Layer, ...]:
        """The layers ``spec`` names at ``size`` (the app's default when ``None``).

        Raises:
            LayerNotFoundError: ``spec`` names no layer, a layer of unknown geometry, or more
                than :data:`MAX_LAYERS` layers.
        """
        found = self.layers(size)
        spec = self.layer_spec if spec is None else spec
        chosen = default_layers(found) if spec is None else select(found, spec, input_size=size)
        if not chosen:
            raise LayerNotFoundError("choose at least one layer for the hypercolumn")
        if len(chosen) > MAX_LAYERS:
            raise LayerNotFoundError(
                f"{len(chosen)} layers chosen; the explorer stacks at most {MAX_LAYERS}"
            )
        for layer in chosen:
            if layer.rf is None:
                raise LayerNotFoundError(
                    f"the geometry of layer {layer.name!r} is unknown, so its units cannot be "
                    "located; choose another layer"
                )
        return tuple(chosen)

    def mapper(self, size: tuple[int, int], chosen: Sequence[Layer]) -> LinearMapper:
        """The planned mapper of ``chosen`` layers at ``size``, made once."""
        key = (size, tuple(layer.name for layer in chosen))
        with self._lock:
            if key not in self._mappers:
                self._mappers[key] = LinearMapper(
                    self.model, list(key[1]), size, in_channels=self.in_channels
                )
            return self._mappers[key]

    def open(self, path: str | Path, spec: LayerSpec | None = None) -> State:
        """The state showing the image file ``path`` (checked against the limits, resized).

        Raises:
            ImageError, OutputTooLargeError: The file is not an image, or is too large.
        """
        size = model_size(check_upload(path, self.limits), self.limits)
        x, prep = load_image(
            path, self.model, channels=self.in_channels, resize=f"{size[0]},{size[1]}"
        )
        return self.show(x, prep.unnormalize(x[0]), Path(path).name, spec)

    def show(
        self, x: torch.Tensor, pixels: torch.Tensor, name: str, spec: LayerSpec | None = None
    ) -> State:
        """The state showing the model input ``x`` ``(1, C, H, W)`` whose pixels in ``[0, 1]``
        are ``pixels`` ``(C, H, W)``, with the layers ``spec`` names."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        chosen = self.choose(size, spec)
        return State(self, name, x, pixels, chosen, *self.maps(size, chosen, x))

    def maps(
        self, size: tuple[int, int], chosen: Sequence[Layer], x: torch.Tensor
    ) -> tuple[LayerMaps, torch.Tensor]:
        """The layers' maps of ``x`` and the norms ``(H, W)`` of its hypercolumns (what every
        click's similarity reads, computed once here)."""
        with self.running(), torch.no_grad():
            maps = self.mapper(size, chosen).maps(x)
            norms = maps.sq_norms()[0].sqrt_()
        return maps, norms


@dataclass(frozen=True, eq=False)
class State:
    """One image on show and what was computed for it.

    Attributes:
        explorer: The model side.
        name: The image's name (its file name).
        x: The model input ``(1, C, H, W)``.
        pixels: The image ``(C, H, W)`` in ``[0, 1]``.
        layers: The chosen layers, in the hypercolumn's order.
        maps: Their maps of ``x`` at their own resolution.
        norms: ``(H, W)`` the norm of the hypercolumn at every pixel (for similarities).
        target: The second image (similarity and correspondence), with the same layers and
            its own maps, or ``None``.
    """

    explorer: Explorer
    name: str
    x: torch.Tensor = field(repr=False)
    pixels: torch.Tensor = field(repr=False)
    layers: tuple[Layer, ...]
    maps: LayerMaps = field(repr=False)
    norms: torch.Tensor = field(repr=False)
    target: State | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return (int(self.x.shape[-2]), int(self.x.shape[-1]))

    @property
    def all_layers(self) -> list[Layer]:
        """Every layer of the model at this image's size (the layer table)."""
        return self.explorer.layers(self.size)

    def with_layers(self, spec: LayerSpec) -> State:
        """The same image with the layers ``spec`` names (their maps computed once)."""
        chosen = self.explorer.choose(self.size, spec)
        maps, norms = self.explorer.maps(self.size, chosen, self.x)
        return replace(self, layers=chosen, maps=maps, norms=norms).with_target(self.target)

    def with_target(self, target: State | None) -> State:
        """This image with ``target`` as its second image (its maps recomputed with this
        image's layers when they differ; ``None`` removes it)."""
        if target is not None:
            target = replace(target, target=None)
            names = [layer.name for layer in self.layers]
            if [layer.name for layer in target.layers] != names:
                target = target.with_layers(names)
        return replace(self, target=target)
