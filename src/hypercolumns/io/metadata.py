"""The run description every output carries: what was computed, from what, and how.

One schema for single files (:mod:`hypercolumns.io.files`) and stores: ``run`` holds everything
that decides the values (model spec and kwargs, a digest of the weights, layers, points, seed,
alignment, dtype, output size, preprocessing); then a description: ``weights`` (in words),
``channels`` (each layer's ``[start, stop]``), ``geometry`` (each layer's receptive field as
``hypercolumns layers --format json`` gives it) and ``hypercolumns_version``. Each output adds
its own keys (a store its format and kind; a single file its layout and its images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hypercolumns._version import __version__
from hypercolumns.features.columns import channel_ranges
from hypercolumns.models import weights_digest
from hypercolumns.rf.layers import Layer

__all__ = ["describe_weights", "run_metadata"]


def describe_weights(
    model: str | None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    seed: int | None = None,
) -> str:
    """The weights in words: ``pretrained (SPEC)``, the file they were read from, or
    ``random (seed S)`` (``random`` when unseeded)."""
    if pretrained:
        return f"pretrained ({model})"
    if weights is not None:
        return str(weights)
    return "random" if seed is None else f"random (seed {seed})"


def run_metadata(
    model: str | None,
    net: nn.Module,
    layers: Sequence[Layer],
    slices: Mapping[str, slice],
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: str | None = None,
    points: int | None = None,
    seed: int | None = None,
    labels: bool | None = None,
    align: str = "rf",
    dtype: str = "float32",
    size: Sequence[int] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    shapes: bool = False,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """The run description of hypercolumns of ``layers`` computed by ``net``.

    Args:
        model: The model spec (``timm:NAME``, ``torchvision:NAME``, ``module:factory``...).
        net: The model as it ran: its state dict gives ``weights_sha256``.
        layers: The resolved layers, in channel order.
        slices: Layer name to its channels in the hypercolumns.
        model_kwargs: Keyword arguments the model factory got.
        weights: The weights in words (see :func:`describe_weights`).
        points: Pixels per image for sparse hypercolumns; ``None`` for dense ones.
        seed: Seed of the point sampling (recorded only with ``points``).
        labels: Whether sparse points carry mask labels; ``None`` leaves the key out.
        align: ``"rf"`` or ``"half-pixel"``.
        dtype: ``"float32"`` or ``"float16"``, as written.
        size: Dense output ``(H, W)``; ``None``: each image's own size.
        preprocessing: ``channels``, ``resize``, ``crop``, ``mean``, ``std``,
            ``interpolation`` (tuples become lists).
        shapes: Keep each layer's output ``shape`` in ``geometry`` (it holds for one input
            size only).
        weights_sha256: ``weights_digest(net)`` if already known (taken before ``net`` moved
            to a GPU, whence hashing would copy it back).

    Returns:
        ``{"run": {...}, "weights", "channels", "geometry", "hypercolumns_version"}``.
    """
    geometry = []
    for layer in layers:
        record = layer.to_dict()
        if not shapes:
            record.pop("shape", None)
        geometry.append(record)
    run: dict[str, Any] = {
        "model": model,
        "model_kwargs": dict(model_kwargs or {}),
        "weights_sha256": weights_sha256 or weights_digest(net),
        "layers": [layer.name for layer in layers],
        "points": points,
        "seed": seed if points is not None else None,
    }
    if labels is not None:
        run["labels"] = labels and points is not None
    run |= {
        "align": align,
        "dtype": dtype,
        "size": None if size is None else list(size),
        "preprocessing": {
            k: list(v) if isinstance(v, tuple) else v for k, v in (preprocessing or {}).items()
        },
    }
    return {
        "run": run,
        "weights": weights,
        "channels": channel_ranges(slices),
        "geometry": geometry,
        "hypercolumns_version": __version__,
    }
