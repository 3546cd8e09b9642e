"""Feature maps of any layers, computed with only the part of the network that is needed.

Forward hooks on the requested modules capture each one's output the first time it runs; once
the last of them has run, a private exception ends the forward pass, so only the prefix of the
network that the requested layers depend on is computed. Values are those the module produced:
an output that a later in-place op (``ReLU(inplace=True)``) would overwrite is cloned in the
hook, and only then (a run on meta tensors finds out which, and every real run checks the
tensors' version counters, running again with a clone should the model behave differently).
On a CPU, 2-D max pooling in these passes takes a faster route with equal results
(:mod:`hypercolumns.features._pooling`); the model itself is never changed.

Streaming on a CPU (:meth:`FeatureExtractor.stream` with ``channels_last=True``, what sparse
hypercolumns use) runs a model with convolutions on a channels-last copy of the input: oneDNN's
convolutions then skip reordering every map (sparse hypercolumns up to vgg16's ``features.8``
1.4-1.5x faster, resnet18's ``layer2`` 1.2x; ``benchmarks/layout.py``), and the maps come out
channels-last, which suits sampling at points. Values differ from the plain layout's by
rounding only (a few units in the last place). A model that fails on such an input (a ``view``
that its strides do not allow; meta tensors cannot tell, their convolutions ignore the layout)
is run again on the input as given, and so from then on.

Vision transformers: a token output ``(B, 1 + N, C)`` is read as a ``(B, C, H/p, W/p)`` map with
the class (and any register) tokens dropped. The class token itself is the pseudo-layer
``"NAME:cls"`` (e.g. ``"blocks.11:cls"``, see :func:`~hypercolumns.rf.layers.select`): the first
token of layer ``NAME``'s output, a global ``(B, C)`` feature that hypercolumns broadcast to every
pixel.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from hypercolumns._checks import image_batch, parse_size
from hypercolumns._forward import StopForward, evaluating, first_tensor, hooked
from hypercolumns.errors import HypercolumnsError, InputSizeError, ModelError
from hypercolumns.features._pooling import FastMaxPool
from hypercolumns.models import input_channels
from hypercolumns.rf.layers import CLS, Layer, LayerSpec, select
from hypercolumns.rf.layers import layers as list_layers

__all__ = ["CLS", "FeatureExtractor", "feature_maps", "resolve"]


def resolve(
    available: Sequence[Layer], spec: LayerSpec, input_size: tuple[int, int]
) -> list[Layer]:
    """The layers named by ``spec``: :func:`~hypercolumns.rf.layers.select` (the one layer
    grammar, ``"NAME:cls"`` class tokens included) for layers listed at ``input_size``."""
    return select(available, spec, input_size=input_size)


def _source(layer: Layer) -> str:
    return layer.name[: -len(CLS)] if layer.name.endswith(CLS) else layer.name


class _ToMeta(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Runs every op on meta tensors (shapes and version counters only, no arithmetic)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def meta(a: Any) -> Any:
            return a.to("meta") if isinstance(a, torch.Tensor) and not a.is_meta else a

        args, kwargs = tree_map(meta, (args, kwargs or {}))
        return func(*args, **kwargs)


class FeatureExtractor:
    """Captures the outputs of chosen layers, planned once and reused for every batch.

    Planning lists the model's layers (one run on meta tensors), resolves ``layers`` and finds
    out, on meta tensors too, which captured outputs a later in-place op would overwrite.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images.
        layers: Names, indices, globs, ``"all"``, ``"3,8"``, or ``"NAME:cls"`` class tokens.
        input_size: ``H`` or ``(H, W)`` of the images this extractor will see.
        in_channels: Input channels; by default those of the model's first convolution.
        available: The model's layers at this input size when the caller already has them.

    Attributes:
        layers: The resolved layers, in the order given.
        available: Every layer of the model at ``input_size``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec,
        input_size: int | str | Sequence[int],
        *,
        in_channels: int | None = None,
        available: Sequence[Layer] | None = None,
    ) -> None:
        self._model: nn.Module | None = model
        self._model_ref = weakref.ref(model)
        self.input_size = parse_size(input_size)
        self.in_channels = input_channels(model) if in_channels is None else int(in_channels)
        if in_channels is not None:
            _check_channels(model, self.in_channels)
        if available is None:
            available = list_layers(model, self.input_size, in_channels=self.in_channels)
        self.available = list(available)
        self.layers = resolve(self.available, layers, self.input_size)
        self._sources = list(dict.fromkeys(_source(layer) for layer in self.layers))
        self._modules = {name: model.get_submodule(name) for name in self._sources}
        self._of_source = {
            name: [layer for layer in self.layers if _source(layer) == name]
            for name in self._sources
        }
        self._clone: set[str] = self._probe()
        self._channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())

    @property
    def model(self) -> nn.Module:
        """The model this extractor runs."""
        model = self._model if self._model is not None else self._model_ref()
        if model is None:
            raise ModelError("the model of this extractor no longer exists")
        return model

    def _hold_weakly(self) -> None:
        """Keep only a weak reference to the model (for plans kept by the one-shot functions,
        which must not keep a model alive)."""
        self._model = None

    def _probe(self) -> set[str]:
        """Captured outputs that a later in-place op changes (found on meta tensors)."""
        shape = (1, self.in_channels, *self.input_size)
        try:
            with _ToMeta():  # type: ignore[no-untyped-call]
                captured = self._capture(torch.empty(shape, device="meta"), clone=set())
        except Exception:  # a model that needs real values: clone all but the last one
            return set(self._sources)
        return {name for name, (t, version) in captured.items() if t._version != version}

    def _run(
        self,
        x: torch.Tensor,
        on_output: Callable[[str, torch.Tensor], None],
        *,
        channels_last: bool = False,
    ) -> None:
        """Run the model on ``x`` (a channels-last copy of it when ``channels_last``) until every
        source module has run, handing each one's first output to ``on_output`` inside its
        forward hook."""
        done: set[str] = set()
        total = len(self._sources)
        caller = threading.get_ident()

        def make_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if name in done or threading.get_ident() != caller:
                    return  # a module that runs again (a reused ReLU): its first call counts
                t = first_tensor(output)
                if t is None:
                    return
                done.add(name)
                on_output(name, t)
                if len(done) == total:
                    raise StopForward

            return hook

        with (
            hooked(self._modules, make_hook),
            evaluating(self.model),
            torch.no_grad(),
            nullcontext() if channels_last else FastMaxPool(),  # channels-last: PyTorch's is fast
            suppress(StopForward),
        ):
            self.model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        missing = [n for n in self._sources if n not in done]
        if missing:
            raise ModelError(
                f"layers {missing} did not produce a tensor when the model ran on a "
                f"{tuple(x.shape)} input (they run on some inputs only?); choose layers that "
                "`hypercolumns layers` lists for this input size"
            )

    def _capture(self, x: torch.Tensor, clone: set[str]) -> dict[str, tuple[torch.Tensor, int]]:
        """Each source's output and its version counter when captured (cloned when in
        ``clone``, unless it is the last to run, which nothing can change after)."""
        captured: dict[str, tuple[torch.Tensor, int]] = {}

        def keep(name: str, t: torch.Tensor) -> None:
            if name in clone and len(captured) + 1 < len(self._sources):
                t = t.clone()
            captured[name] = (t, t._version)

        self._run(x, keep)
        return captured

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`InputSizeError` unless ``x`` is a ``(B, C, H, W)`` batch of this size."""
        expected = (self.in_channels, *self.input_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputSizeError(
                f"expected an image batch of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {got}; build the extractor for this input size"
            )

    def __call__(self, x: torch.Tensor, *, as_maps: bool = False) -> dict[str, torch.Tensor]:
        """The requested layers' outputs for the batch ``x``.

        Args:
            x: Images ``(B, C, H, W)`` of the planned size, on the model's device.
            as_maps: Return spatial layers as ``(B, C, h, w)`` maps (token outputs reshaped,
                extra tokens dropped) and global layers as ``(B, C)``.

        Returns:
            Layer name to tensor, in the order the layers were given: the module's output as it
            was when the module ran (class tokens ``(B, C)``).
        """
        self.check(x)
        captured = self._capture(x, self._clone)
        changed = {n for n, (t, v) in captured.items() if n not in self._clone and t._version != v}
        if changed:  # an in-place op the meta run did not see: run again with clones
            self._clone |= changed
            captured = self._capture(x, self._clone)
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            t = captured[_source(layer)][0]
            out[layer.name] = self._value(layer, t, as_maps)
        return out

    def stream(
        self,
        x: torch.Tensor,
        consume: Callable[[Layer, torch.Tensor], None],
        *,
        channels_last: bool = False,
    ) -> None:
        """Run the needed prefix on ``x``, handing each requested layer's value to ``consume``
        the moment its module has produced it, before any later op runs.

        Nothing is captured or cloned: ``consume`` reads each value while it is fresh (and hot
        in cache) and must copy what it keeps, since a later in-place op may change it.

        Args:
            x: Images ``(B, C, H, W)`` of the planned size, on the model's device.
            consume: Called with each layer and its value as :meth:`__call__` with
                ``as_maps=True`` gives it, in the order the layers run.
            channels_last: On a CPU, run a model with convolutions on a channels-last copy of
                ``x`` (see the module's docstring): maps then come channels-last. Should the
                model fail on it, it runs again on ``x``, and ``consume`` may see a layer twice.
        """
        self.check(x)

        def hand_over(name: str, t: torch.Tensor) -> None:
            for layer in self._of_source[name]:
                consume(layer, self._value(layer, t, as_maps=True))

        if channels_last and self._channels_last and x.device.type == "cpu":
            try:
                self._run(x, hand_over, channels_last=True)
                return
            except Exception:  # e.g. a `view` its strides do not allow: run it as given
                self._run(x, hand_over)  # (the model's own error, if it fails this way too)
                self._channels_last = False
                return
        self._run(x, hand_over)

    def _value(self, layer: Layer, t: torch.Tensor, as_maps: bool) -> torch.Tensor:
        if layer.name.endswith(CLS):
            base = next(a for a in self.available if a.name == _source(layer))
            assert base.layout is not None
            return t.select(base.layout.y, 0).reshape(t.shape[0], -1)
        if not as_maps:
            return t
        if layer.layout is not None:
            return layer.layout.to_map(t)
        if layer.rf is not None and layer.rf.is_global:
            return t.reshape(t.shape[0], -1)
        raise HypercolumnsError(
            f"the geometry of layer {layer.name!r} is unknown (see the GeometryWarning of "
            "`hypercolumns layers`), so its output cannot be read as a map; use as_maps=False "
            "for the raw output"
        )


def feature_maps(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec,
    *,
    as_maps: bool = False,
) -> dict[str, torch.Tensor]:
    """Outputs of the chosen layers for the images ``x``, running only the needed prefix.

    To extract many batches of one size, build a :class:`FeatureExtractor` once instead.

    Args:
        model: Any ``nn.Module`` taking ``(B, C, H, W)`` images; left as found (hooks removed,
            ``training`` flags restored, no gradients).
        x: Images ``(B, C, H, W)``.
        layers: Names, indices (negative from the end), globs, ``"all"``, ``"3,8"``, or
            ``"NAME:cls"`` for the class token of a vision-transformer layer.
        as_maps: Spatial layers as ``(B, C, h, w)``, global layers as ``(B, C)``.

    Returns:
        Layer name to tensor, in the order given.

    Raises:
        LayerNotFoundError: A layer is unknown or given twice (the message lists near names).
        InputSizeError: ``x`` is not a ``(B, C, H, W)`` batch.
    """
    image_batch(x)
    extractor = FeatureExtractor(model, layers, tuple(x.shape[-2:]), in_channels=x.shape[1])
    return extractor(x, as_maps=as_maps)


def _check_channels(model: nn.Module, channels: int) -> None:
    """Refuse images whose channels the model's first convolution cannot take."""
    try:
        expected = input_channels(model)
    except ModelError:  # no convolution to tell: the model's own error will say
        return
    if channels != expected:
        raise InputSizeError(
            f"the images have {channels} channel(s) but {type(model).__name__} takes "
            f"{expected} (its first convolution); give (B, {expected}, H, W) images"
        )
