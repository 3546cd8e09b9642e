"""Hypercolumns of a few images in one file: ``.npy`` (+ ``.json`` sidecar), ``.safetensors``
or ``.pt``, with the run's metadata (:mod:`hypercolumns.io.metadata`).

:func:`extract_to_file` computes and writes; its rules are those of the formats: ``.npy`` stacks
the images, so they must share one size; ``.safetensors`` and ``.pt`` key one entry per image by
its file stem, so stems must be unique. The output's size is estimated before anything runs and
refused over ``max_bytes``.

Writes are atomic: everything goes to temporary files in the destination folder, renamed over
the destination only when complete, so a failure never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from hypercolumns._atomic import check_writable, staged
from hypercolumns._checks import budget, parse_size, positive_int
from hypercolumns.errors import HypercolumnsError, OptionError, OutputTooLargeError
from hypercolumns.features.align import Align, check_align
from hypercolumns.features.columns import HypercolumnExtractor
from hypercolumns.features.points import read_points
from hypercolumns.images import (
    Preprocessing,
    check_decoded_size,
    cropped,
    load_image,
    resized_size,
)
from hypercolumns.io.metadata import describe_weights, run_metadata
from hypercolumns.models import input_channels, load_model
from hypercolumns.rf.layers import LayerSpec

__all__ = [
    "MAX_BYTES",
    "SUFFIXES",
    "Written",
    "check_stackable",
    "check_suffix",
    "extract_to_file",
    "write_npy",
    "write_tensors",
]

SUFFIXES = (".npy", ".safetensors", ".pt")
MAX_BYTES = 4 * 10**9
"""Default limit of :func:`extract_to_file` on the size of its output."""

Image = str | Path | tuple[torch.Tensor, Preprocessing]


def check_suffix(path: Path) -> str:
    """The output format of ``path`` (its lower-case suffix), or an error naming the choices."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise HypercolumnsError(
            f"cannot write features to {str(path)!r}: the extension must be one of "
            f"{', '.join(SUFFIXES)}"
        )
    if path.is_dir():
        raise OptionError(f"output {str(path)!r} is a folder; give a file name")
    check_writable(path)
    return suffix


def write_npy(path: Path, array: torch.Tensor, metadata: Mapping[str, Any]) -> list[Path]:
    """``array`` to ``path`` and ``metadata`` to the sidecar ``path.json``; both or neither."""
    sidecar = path.with_name(path.name + ".json")
    with staged(path, sidecar) as (tmp, tmp_json):
        with tmp.open("wb") as fh:
            np.save(fh, array.detach().cpu().numpy(), allow_pickle=False)
        tmp_json.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return [path, sidecar]


def write_tensors(
    path: Path,
    features: Mapping[str, torch.Tensor],
    points: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
) -> list[Path]:
    """One entry per image: ``.safetensors`` keys ``STEM`` (and ``STEM/points``), metadata as
    JSON under the header key ``hypercolumns``; ``.pt`` a dict ``{"features": {STEM: ...},
    "points": {STEM: ...}, "metadata": {...}}`` loadable with ``weights_only=True``."""
    with staged(path) as (tmp,):
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in features.items()}
            tensors.update(
                {f"{k}/points": v.detach().cpu().contiguous() for k, v in points.items()}
            )
            save_file(tensors, str(tmp), metadata={"hypercolumns": json.dumps(metadata)})
        else:
            payload = {
                "features": {k: v.detach().cpu() for k, v in features.items()},
                "points": {k: v.detach().cpu() for k, v in points.items()},
                "metadata": dict(metadata),
            }
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
    return [path]


def check_stackable(suffix: str, keys: Sequence[str], records: Sequence[Preprocessing]) -> None:
    """The images ``keys`` (with their preprocessing ``records``) fit one ``suffix`` file:
    ``.npy`` stacks them (one size), ``.safetensors``/``.pt`` key them (unique stems)."""
    if suffix == ".npy":
        if len({prep.size for prep in records}) > 1:
            listing = ", ".join(
                f"{Path(prep.path).name} {prep.size[0]}x{prep.size[1]}" for prep in records
            )
            raise HypercolumnsError(
                f"a .npy output stacks the images, but their sizes differ ({listing}); "
                "resize or crop them (--resize/--crop), or write .safetensors/.pt (one entry per "
                "image)"
            )
    elif len(set(keys)) < len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise HypercolumnsError(
            f"two images share the file stem {dup!r}, which keys their entries in "
            f"{suffix}; rename one, or write .npy"
        )


@dataclass(frozen=True)
class Written:
    """What :func:`extract_to_file` wrote.

    Attributes:
        paths: The files written (``.npy``: the array and its ``.json`` sidecar).
        shapes: Image key to the shape of its entry; ``.npy``: ``{"all": [B, ...]}``.
        metadata: The metadata written with them.
    """

    paths: list[Path]
    shapes: dict[str, list[int]]
    metadata: dict[str, Any]


def extract_to_file(
    model: nn.Module | str,
    images: Sequence[Image],
    layers: LayerSpec,
    out: str | Path,
    *,
    points: int | torch.Tensor | str | Path | None = None,
    seed: int | None = 0,
    align: Align = "rf",
    dtype: Literal["float32", "float16"] = "float32",
    size: int | Sequence[int] | None = None,
    max_bytes: int = MAX_BYTES,
    resize: str | int | None = None,
    crop: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Written:
    """Hypercolumns of ``images`` written to the one file ``out``, with their metadata.

    Nothing is written unless every image succeeded.

    Args:
        model: A model spec (``timm:NAME``, ``torchvision:NAME``, ``module:factory``...),
            loaded with ``model_kwargs``, ``weights`` and ``pretrained``; or a module, which
            those then only describe in the metadata.
        images: Image files (read with :func:`~hypercolumns.images.load_image` and ``resize``,
            ``crop``, ``mean``, ``std``), or ``(x, prep)`` pairs as ``load_image`` returns them.
            Entries are keyed by file stem.
        layers: Names, indices, globs, ``"all"``, ``"3,8"`` or ``"NAME:cls"``.
        out: ``.npy`` (one ``(B, C, H, W)`` or ``(B, N, C)`` array; metadata in ``out.json``),
            ``.safetensors`` (one tensor per image, points under ``STEM/points``; metadata as
            JSON under the header key ``hypercolumns``) or ``.pt`` (a dict of ``features``,
            ``points`` and ``metadata``).
        points: ``None`` for dense hypercolumns; ``N`` pixels to sample per image; an ``(N, 2)``
            tensor of ``(y, x)`` pixels; or a file of them (see
            :func:`~hypercolumns.features.points.read_points`).
        seed: Seed of ``points=N``; ``None`` for fresh pixels each image.
        align: ``"rf"`` or ``"half-pixel"``.
        dtype: ``"float32"`` or ``"float16"``, as written.
        size: Dense output ``H`` or ``(H, W)``; by default each image's size.
        max_bytes: Refuse outputs estimated larger than this.
        progress: Called with ``(done, total)`` images: ``done=0`` when the computing starts,
            then after each image.

    Returns:
        :class:`Written`: the paths, each entry's shape and the metadata.

    Raises:
        OutputTooLargeError: The output would be larger than ``max_bytes``.
        HypercolumnsError: An unknown extension, mixed sizes for ``.npy``, repeated stems for
            ``.safetensors``/``.pt``, points outside an image, unknown layers, unreadable images.
    """
    out = Path(out)
    suffix = check_suffix(out)
    if dtype not in ("float32", "float16"):
        raise HypercolumnsError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    check_align(align)
    budget(max_bytes, "max_bytes")
    out_size = None if size is None else parse_size(size)
    spec = model if isinstance(model, str) else f"{type(model).__module__}:{type(model).__name__}"
    if isinstance(model, str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights are seeded, as stores seed them
            net = load_model(
                model, pretrained=pretrained, weights=weights, **dict(model_kwargs or {})
            )
        random = weights is None and not pretrained
        weights_text = describe_weights(spec, weights, pretrained, 0 if random else None)
    else:
        net = model
        given = weights is not None or pretrained
        weights_text = describe_weights(spec, weights, pretrained) if given else "as given"
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    for image in images:  # before decoding any: refuse what would not fit max_bytes
        if not isinstance(image, tuple):
            _check_decoding(Path(image), net, layers, points, resize, crop, align, out_size,
                            torch_dtype, max_bytes)  # fmt: skip
    loaded = [
        image
        if isinstance(image, tuple)
        else load_image(image, net, mean=mean, std=std, resize=resize, crop=crop)
        for image in images
    ]
    if not loaded:
        raise HypercolumnsError("no images given")
    records = [prep for _, prep in loaded]
    keys = [Path(prep.path).stem for prep in records]
    check_stackable(suffix, keys, records)

    plans: dict[tuple[int, int], HypercolumnExtractor] = {}

    def plan(x: torch.Tensor) -> HypercolumnExtractor:
        key = (int(x.shape[-2]), int(x.shape[-1]))
        if key not in plans:
            plans[key] = HypercolumnExtractor(
                net, layers, key, in_channels=x.shape[1], align=align, size=out_size,
                dtype=torch_dtype, max_bytes=max_bytes,
            )  # fmt: skip
        return plans[key]

    first = plan(loaded[0][0])
    sample: int | torch.Tensor | None
    if isinstance(points, str | Path):
        sample = read_points(points, records[0].size)
    elif isinstance(points, int):
        sample = positive_int(points, "points")
    else:
        sample = points
    _check_size(first, [r.size for r in records], sample, out_size, torch_dtype, max_bytes)

    features: dict[str, torch.Tensor] = {}
    coords: dict[str, torch.Tensor] = {}
    if progress is not None:
        progress(0, len(loaded))
    for done, (key, (x, _)) in enumerate(zip(keys, loaded, strict=True), start=1):
        result = plan(x)(x, sample, seed=seed)
        features[key] = result.features[0].to(torch_dtype)
        if result.points is not None:
            coords[key] = result.points[0]
        if progress is not None:
            progress(done, len(loaded))

    n_points = sample if isinstance(sample, int) or sample is None else int(sample.shape[-2])
    first_prep = records[0]
    metadata = run_metadata(
        spec, net, first.layers, first.slices, model_kwargs=model_kwargs, weights=weights_text,
        points=n_points, seed=seed if isinstance(sample, int) else None, align=align,
        dtype=dtype, size=out_size, shapes=True,
        preprocessing={
            "channels": first_prep.channels, "resize": first_prep.resize,
            "crop": first_prep.crop, "mean": first_prep.mean, "std": first_prep.std,
            "interpolation": first_prep.interpolation,
        },
    )  # fmt: skip
    metadata["layout"] = "(B, N, C)" if coords else "(B, C, H, W)"
    metadata["points"] = None if points is None else {"spec": _spec(points)}
    metadata["images"] = [
        {"key": key, **prep.to_dict()} for key, prep in zip(keys, records, strict=True)
    ]
    if suffix == ".npy":
        if coords:
            metadata["points"]["coordinates"] = [coords[k].tolist() for k in keys]
        stacked = torch.stack([features[k] for k in keys])
        return Written(write_npy(out, stacked, metadata), {"all": list(stacked.shape)}, metadata)
    written = write_tensors(out, features, coords, metadata)
    return Written(written, {k: list(v.shape) for k, v in features.items()}, metadata)


def _spec(points: int | torch.Tensor | str | Path) -> str:
    """How the points were given, in words: the count, the file, or ``"given"``."""
    return "given" if isinstance(points, torch.Tensor) else str(points)


def _check_decoding(
    path: Path,
    net: nn.Module,
    layers: LayerSpec,
    points: int | torch.Tensor | str | Path | None,
    resize: str | int | None,
    crop: str | None,
    align: Align,
    out_size: tuple[int, int] | None,
    dtype: torch.dtype,
    max_bytes: int,
) -> None:
    """Refuse, from its header, an image whose decoded tensor would be over ``max_bytes``; when
    its output would be too, that is the error (the output is what ``max_bytes`` bounds)."""
    channels = input_channels(net)
    resize_s = None if resize is None else str(resize)
    try:
        check_decoded_size(path, channels, resize_s, max_bytes)
    except OutputTooLargeError as too_large:
        if isinstance(points, int) or points is None:
            size = ext = None
            with contextlib.suppress(Exception):  # the decoding error then stands alone
                with PILImage.open(path) as img:
                    w, h = img.size
                size = (h, w) if resize_s is None else resized_size((h, w), resize_s)
                if crop is not None and crop != "none":
                    shape = cropped(torch.empty((0, *size), device="meta"), crop).shape
                    size = (int(shape[-2]), int(shape[-1]))
                ext = HypercolumnExtractor(net, layers, size, in_channels=channels,
                                           align=align, size=out_size, dtype=dtype)  # fmt: skip
            if ext is not None and size is not None:
                _check_size(ext, [size], points, out_size, dtype, max_bytes)
        raise too_large from None


def _check_size(
    extractor: HypercolumnExtractor,
    sizes: Sequence[tuple[int, int]],
    points: int | torch.Tensor | None,
    size: tuple[int, int] | None,
    dtype: torch.dtype,
    max_bytes: int,
) -> None:
    """Refuse an output over ``max_bytes``: channels times pixels (or points) over the images
    (of input ``sizes``)."""
    item = torch.finfo(dtype).bits // 8
    if isinstance(points, int):
        pixels = [points] * len(sizes)
    elif points is not None:
        pixels = [int(points.shape[-2])] * len(sizes)
    else:
        pixels = [(size or hw)[0] * (size or hw)[1] for hw in sizes]
    need = extractor.channels * item * sum(pixels)
    if need > max_bytes:
        detail = f"{len(sizes)} image(s), {extractor.channels} channels, {item}-byte values"
        raise OutputTooLargeError(
            f"the output would take about {need / 1e9:.2f} GB ({detail}), over the "
            f"{max_bytes / 1e9:.2f} GB allowed (max_bytes); sample points, use dtype float16, "
            "fewer layers or a larger max_bytes",
            need=need,
            limit=max_bytes,
            detail=detail,
        )
