"""Hypercolumns of whole data sets, into resumable on-disk stores (:mod:`hypercolumns.io.store`).

A run has three stages, kept apart so that another engine can drive them:

1. :func:`decode` turns a :class:`Source` (an image file, and a label mask for sparse points)
   into a :class:`Decoded` image: read, preprocessed, and for sparse stores its points sampled.
   It never raises: a file that cannot be read gives a ``Decoded`` with its ``error``.
2. An :class:`Extraction` (the model and the settings; one per process) turns a batch of decoded
   images into per-image :class:`~hypercolumns.io.store.ImageResult` or :class:`Failure`. Dense
   images too large for memory go to :meth:`Extraction.bands` instead, band by band.
3. A :class:`~hypercolumns.io.store.StoreWriter` takes the results and commits them one by one.

:func:`run` drives them with one of two engines and gives a :class:`RunSummary` at the end.
The local engine decodes in ``torch.utils.data.DataLoader`` worker processes while the model
runs in this one, batches grouped by image size. The Ray engine (:mod:`hypercolumns.pipeline._ray`)
decodes in Ray tasks and runs the model in a pool of Ray actors. Either way this process alone
writes and commits the store.

Points are sampled per image from a seed derived from the run's seed and the image's key, so
an image gets the same points whatever batch it lands in, in this run or a resumed one.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hypercolumns._checks import size_spec
from hypercolumns._version import __version__
from hypercolumns.errors import HypercolumnsError, ImageError, StoreError
from hypercolumns.features.align import Align
from hypercolumns.features.bands import BandedHypercolumns, working_set
from hypercolumns.features.columns import HypercolumnExtractor
from hypercolumns.features.points import sample_points
from hypercolumns.images import cropped, load_image, per_channel, read_image, resized
from hypercolumns.io.store import (
    FORMAT,
    FORMAT_VERSION,
    TILE,
    ImageResult,
    Kind,
    StoreWriter,
    check_key,
    open_writer,
    store_kind,
)
from hypercolumns.models import (
    default_input_size,
    input_channels,
    load_model,
    normalization,
    weights_digest,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodeOptions",
    "Decoded",
    "Extraction",
    "Failure",
    "RunSummary",
    "Settings",
    "Source",
    "decode",
    "expand_inputs",
    "run",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k"})  # fmt: skip
DEFAULT_MAX_MEMORY = 1 << 30
_BAND_QUANTUM = 16  # band rows are a multiple of this (and chunks follow the bands)
_PLANS = 8  # extractors kept for different image sizes

Engine = Literal["local", "ray"]


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input image.

    Attributes:
        key: Its key in the store: the path relative to the folder, glob base or list file it
            came from (``cats/001.jpg``), or the file name of an image given directly.
        path: The image file.
        mask: An integer label image of the same size, from a list file's ``mask`` column.
    """

    key: str
    path: Path
    mask: Path | None = None


def _images_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(root) / f
            for f in sorted(files)
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
        ]
    return found


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = list(parts[: next(i for i, p in enumerate(parts) if _is_pattern(p))])
    return Path(*fixed) if fixed else Path()


def _list_key(written: str, path: Path, base: Path) -> str:
    rel = os.path.normpath(written).replace(os.sep, "/")
    if Path(written).is_absolute() or rel.split("/")[0] == "..":
        try:
            rel = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            rel = "/".join(path.resolve().parts[1:])
    return rel


def _read_list(listing: Path) -> list[tuple[Path, str, Path | None]]:
    base = listing.parent
    entries: list[tuple[str, str | None]] = []
    try:
        with listing.open(newline="", encoding="utf-8") as fh:
            if listing.suffix.lower() == ".csv":
                reader = csv.DictReader(fh)
                columns = {c.strip().lower(): c for c in reader.fieldnames or []}
                if "path" not in columns:
                    raise HypercolumnsError(
                        f"{str(listing)!r} needs a header row with a 'path' column (and "
                        f"optionally 'mask'); its columns are {list(reader.fieldnames or [])}"
                    )
                for row in reader:
                    path = (row.get(columns["path"]) or "").strip()
                    mask = (row.get(columns["mask"]) or "").strip() if "mask" in columns else ""
                    if path:
                        entries.append((path, mask or None))
            else:
                for line in fh:
                    text = line.strip()
                    if text and not text.startswith("#"):
                        entries.append((text, None))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HypercolumnsError(f"cannot read the list of images {str(listing)!r}: {err}") from err
    out = []
    for written, mask in entries:
        path = base / written
        out.append((path, _list_key(written, path, base), None if mask is None else base / mask))
    return out


def expand_inputs(inputs: Iterable[str | Path], *, check_keys: bool = True) -> list[Source]:
    """The images named by ``inputs``, each with its key.

    Each input is an image file; a folder (searched recursively for image extensions, hidden
    files skipped); a glob pattern (``"data/**/*.png"``); or a ``.txt`` list (one path per line,
    ``#`` comments) or ``.csv`` list (a header with ``path`` and optionally ``mask``, the label
    image that stratifies sparse points). Paths in lists are relative to the list's folder.
    An image named twice is kept once. ``check_keys=False`` skips the checks of keys (for
    outputs that do not use them).

    Raises:
        HypercolumnsError: An input does not exist or matches nothing, or two images would get
            the same key.
    """
    sources: list[Source] = []
    keys: dict[str, Path] = {}
    seen: set[Path] = set()
    for item in inputs:
        text = str(item)
        path = Path(text)
        found: list[tuple[Path, str, Path | None]]
        if path.is_dir():
            found = [(p, p.relative_to(path).as_posix(), None) for p in _images_under(path)]
            what = f"folder {text!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        elif path.is_file() and path.suffix.lower() in (".txt", ".csv"):
            found = _read_list(path)
            what = f"list {text!r} names no images"
        elif path.is_file():
            found = [(path, path.name, None)]
            what = ""
        elif _is_pattern(text):
            base = _glob_base(text)
            found = [
                (Path(p), Path(p).relative_to(base).as_posix(), None)
                for p in sorted(glob.glob(text, recursive=True))
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
            ]
            what = f"pattern {text!r} matches no image files"
        else:
            raise HypercolumnsError(
                f"input {text!r} does not exist (give image files, folders, glob patterns or "
                ".txt/.csv lists of paths)"
            )
        if not found:
            raise HypercolumnsError(what)
        for p, key, mask in found:
            real = p.resolve()
            if real in seen:
                continue
            seen.add(real)
            sources.append(Source(key, p, mask))
            if not check_keys:
                continue
            try:
                check_key(key)
            except StoreError as err:
                raise HypercolumnsError(f"image {str(p)!r}: {err}") from None
            if key in keys:
                raise HypercolumnsError(
                    f"two images get the key {key!r}: {str(keys[key])!r} and {str(p)!r} (keys "
                    "are paths relative to the folder, pattern or list they come from); pass "
                    "their common folder instead, or rename one"
                )
            keys[key] = p
    if not sources:
        raise HypercolumnsError("no input images given")
    return sources


# -- settings and decoding ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What a run computes; all of it but the weights' file name must match to continue a store.

    Attributes:
        model: Model spec (``timm:NAME``, ``torchvision:NAME``, ``module:factory``,
            ``file.py:factory``).
        layers: Layer spec: names, indices, globs, ``"3,8"``.
        model_kwargs: Keyword arguments of the model factory.
        weights: Local state dict to load (its SHA-256 is recorded, not its name).
        pretrained: Use the library's pretrained weights.
        points: ``None`` for dense hypercolumns (``.zarr``), else pixels sampled per image
            (``.parquet``).
        seed: Seed of the point sampling (combined with each image's key).
        align: ``"rf"`` or ``"half-pixel"``.
        dtype: ``"float32"`` or ``"float16"``, as stored.
        size: Dense output ``(H, W)``; ``None``: each image's own input size.
        resize: ``"S"`` or ``"H,W"`` (see :func:`~hypercolumns.images.load_image`).
        crop: ``"center:S"`` or ``"center:H,W"``.
        mean: Normalisation mean; ``None``: the model's.
        std: Normalisation std; ``None``: the model's.
    """

    model: str
    layers: str | Sequence[str | int]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    pretrained: bool = False
    points: int | None = None
    seed: int = 0
    align: Align = "rf"
    dtype: Literal["float32", "float16"] = "float32"
    size: tuple[int, int] | None = None
    resize: str | None = None
    crop: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise HypercolumnsError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.align not in ("rf", "half-pixel"):
            raise HypercolumnsError(f"align must be 'rf' or 'half-pixel', got {self.align!r}")
        if self.points is not None and (isinstance(self.points, bool) or self.points < 1):
            raise HypercolumnsError(f"points must be a positive count, got {self.points!r}")
        if self.points is not None and self.size is not None:
            raise HypercolumnsError(
                "size sets the grid of dense hypercolumns; sparse points are input pixels, so "
                "give one or the other"
            )

    @property
    def kind(self) -> Kind:
        return "dense" if self.points is None else "sparse"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self.dtype == "float16" else torch.float32


@dataclass(frozen=True)
class DecodeOptions:
    """Everything :func:`decode` needs, without the model (it runs in worker processes)."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    normalization: str
    resize: str | None = None
    crop: str | None = None
    points: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Decoded:
    """A decoded image, ready for the model (or the reason it is not).

    Attributes:
        source: Where it came from.
        image: ``(C, H, W)`` float32 normalised input, or ``None`` after an error.
        record: JSON-ready facts stored with the image (source, mask, preprocessing).
        points: Sparse: ``(N, 2)`` int64 ``(y, x)`` pixels to sample.
        labels: Sparse with a mask: ``(N,)`` int64 label of each point.
        error: Why the image cannot be used, or ``None``.
    """

    source: Source
    image: torch.Tensor | None
    record: dict[str, Any]
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    error: str | None = None


def _image_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _mask(
    path: Path, original: tuple[int, int], size: tuple[int, int], options: DecodeOptions
) -> torch.Tensor:
    """The ``(H, W)`` int64 labels of ``path``, resized and cropped as the image was."""
    img = read_image(path)
    if img.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ImageError(
            f"mask {str(path)!r} has mode {img.mode}; masks are single-channel label images "
            "(8- or 16-bit grey or palette PNG)"
        )
    labels = np.asarray(img).astype(np.int64)
    if labels.shape != original:
        raise ImageError(
            f"mask {str(path)!r} is {labels.shape[0]}x{labels.shape[1]}, its image "
            f"{original[0]}x{original[1]}"
        )
    t = torch.from_numpy(labels)[None, None].double()
    if options.resize is not None:
        t = resized(t, options.resize, "nearest")
    if options.crop is not None:
        t = cropped(t, options.crop)
    out = t[0, 0].long()
    assert tuple(out.shape) == size
    return out


def decode(source: Source, options: DecodeOptions) -> Decoded:
    """Read and preprocess one image, and sample its points; errors become ``Decoded.error``."""
    record: dict[str, Any] = {"source": str(source.path)}
    if source.mask is not None:
        record["mask"] = str(source.mask)
    try:
        x, prep = load_image(
            source.path,
            channels=options.channels,
            mean=options.mean,
            std=options.std,
            resize=options.resize,
            crop=options.crop,
            interpolation=options.interpolation,
        )
        prep = replace(prep, normalization=options.normalization)
        record["preprocessing"] = prep.to_dict()
        points = labels = None
        if options.points is not None:
            mask = None
            if source.mask is not None:
                mask = _mask(source.mask, prep.original_size, prep.size, options)
            seed = _image_seed(options.seed, source.key)
            pts = sample_points(
                options.points, 1, prep.size, None if mask is None else mask[None], seed
            )
            points = pts[0].long()
            if mask is not None:
                labels = mask[points[:, 0], points[:, 1]]
        return Decoded(source, x[0], record, points, labels)
    except Exception as err:  # one bad file must not stop the run: record why
        reason = str(err) if isinstance(err, HypercolumnsError) else f"{type(err).__name__}: {err}"
        return Decoded(source, None, record, error=reason)


class _Decoding(torch.utils.data.Dataset[Decoded]):
    def __init__(self, sources: Sequence[Source], options: DecodeOptions) -> None:
        self.sources, self.options = list(sources), options

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Decoded:
        return decode(self.sources[i], self.options)


def _keep(item: Any) -> Any:
    return item


def _yield_to_the_model(worker: int) -> None:
    """Decoding workers run at a lower priority than the model: when the cores are busy, an
    image decoded a little later costs less than every thread of a forward pass waiting for
    the one a worker pre-empted."""
    with contextlib.suppress(OSError):
        os.nice(5)


def decoded(sources: Sequence[Source], options: DecodeOptions, workers: int) -> Iterator[Decoded]:
    """Decode ``sources`` in order, in ``workers`` DataLoader processes (0: in this one)."""
    if workers == 0:
        for source in sources:
            yield decode(source, options)
        return
    loader = torch.utils.data.DataLoader(
        _Decoding(sources, options),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        prefetch_factor=2,
        worker_init_fn=_yield_to_the_model,
    )
    yield from loader


def batches(
    items: Iterable[Decoded], batch_size: int, *, hold: int = 4, max_bytes: int | None = None
) -> Iterator[list[Decoded]]:
    """Group decoded images into batches of one size. At most ``hold * batch_size`` images, and
    ``max_bytes`` of them, wait for their batch to fill; beyond, the fullest batch goes as it
    is. Failed images come alone."""
    buckets: dict[tuple[int, ...], list[Decoded]] = {}
    limit = math.inf if max_bytes is None else max_bytes
    waiting = waiting_bytes = 0
    for item in items:
        if item.image is None:
            yield [item]
            continue
        shape = tuple(item.image.shape)
        buckets.setdefault(shape, []).append(item)
        waiting += 1
        waiting_bytes += item.image.nbytes
        while buckets and (
            len(buckets.get(shape, ())) >= batch_size
            or waiting >= hold * batch_size
            or waiting_bytes >= limit
        ):
            full = shape if len(buckets.get(shape, ())) >= batch_size else None
            done = buckets.pop(full or max(buckets, key=lambda s: len(buckets[s])))
            waiting -= len(done)
            waiting_bytes -= sum(d.image.nbytes for d in done if d.image is not None)
            yield done
    yield from buckets.values()


# -- extraction --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """An image that could not be made, and why."""

    key: str
    source: str
    reason: str


def _reference_size(settings: Settings, model: nn.Module) -> tuple[int, int]:
    for spec in (settings.crop.partition(":")[2] if settings.crop else None, settings.resize):
        if spec:
            parts = size_spec(spec, "size")
            if len(parts) == 2 or spec is not settings.resize:
                return parts[0], parts[-1]
    return default_input_size(model)


class Extraction:
    """The model and the settings: batches of decoded images in, per-image results out.

    Build one per process (or per actor); the model is built from ``settings`` (random weights
    are seeded, so every process builds the same model) and moved to ``device``.

    Args:
        settings: What to compute.
        device: Where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        max_memory: Working set of one batch, in bytes; images beyond it are computed in
            bands (dense: with :meth:`bands`; sparse: inside :meth:`__call__`).
        band_rows: Output rows per band, instead of the most that ``max_memory`` allows.
        model: An already built model, instead of building it from ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        device: str | torch.device = "cpu",
        max_memory: int | None = None,
        band_rows: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.max_memory = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
        if band_rows is not None and band_rows < 1:
            raise HypercolumnsError(f"band rows must be positive, got {band_rows}")
        self.band_rows = band_rows
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = load_model(
                    settings.model,
                    pretrained=settings.pretrained,
                    weights=settings.weights,
                    **dict(settings.model_kwargs),
                )
        self.model = model.to(self.device).eval()
        norm = normalization(self.model)
        channels = input_channels(self.model)
        user = settings.mean is not None or settings.std is not None
        reference = HypercolumnExtractor(
            self.model, settings.layers, _reference_size(settings, self.model),
            in_channels=channels, align=settings.align,
        )  # fmt: skip
        self.layers = [layer.name for layer in reference.layers]
        self._reference = reference
        self.decode_options = DecodeOptions(
            channels=channels,
            mean=per_channel(
                norm.mean if settings.mean is None else settings.mean, channels, "mean"
            ),
            std=per_channel(norm.std if settings.std is None else settings.std, channels, "std"),
            interpolation=norm.interpolation,
            normalization="user" if user else norm.source,
            resize=settings.resize,
            crop=settings.crop,
            points=settings.points,
            seed=settings.seed,
        )
        self._plans: OrderedDict[tuple[int, int], HypercolumnExtractor] = OrderedDict()
        self._bands: OrderedDict[tuple[int, int], BandedHypercolumns] = OrderedDict()
        self._banding: str | None = None  # why bands cannot be used ("": they can)

    def config(self, *, labels: bool = False) -> dict[str, Any]:
        """The store configuration of this run (``labels``: sparse points carry mask labels)."""
        s, opts, ref = self.settings, self.decode_options, self._reference
        geometry = []
        for layer in ref.layers:
            record = layer.to_dict()
            record.pop("shape", None)
            geometry.append(record)
        weights = f"pretrained ({s.model})" if s.pretrained else s.weights or "random (seed 0)"
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": s.kind,
            "run": {
                "model": s.model,
                "model_kwargs": dict(s.model_kwargs),
                "weights_sha256": weights_digest(self.model),
                "layers": list(self.layers),
                "points": s.points,
                "seed": s.seed if s.points is not None else None,
                "labels": labels and s.points is not None,
                "align": s.align,
                "dtype": s.dtype,
                "size": None if s.size is None else list(s.size),
                "preprocessing": {
                    "channels": opts.channels,
                    "resize": s.resize,
                    "crop": s.crop,
                    "mean": list(opts.mean),
                    "std": list(opts.std),
                    "interpolation": opts.interpolation,
                },
            },
            "weights": weights,
            "channels": {k: [v.start, v.stop] for k, v in ref.slices.items()},
            "geometry": geometry,
            "hypercolumns_version": __version__,
        }

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, size: tuple[int, int]) -> HypercolumnExtractor:
        if size not in self._plans:
            self._plans[size] = HypercolumnExtractor(
                self.model, self.layers, size, in_channels=self.decode_options.channels,
                align=self.settings.align, size=self.settings.size,
                dtype=self.settings.torch_dtype, max_bytes=None,
            )  # fmt: skip
            if len(self._plans) > _PLANS:
                self._plans.popitem(last=False)
        self._plans.move_to_end(size)
        return self._plans[size]

    def _banded(self, size: tuple[int, int]) -> BandedHypercolumns:
        if size not in self._bands:
            if self.settings.size is not None and tuple(self.settings.size) != size:
                raise HypercolumnsError(
                    f"a {size[0]}x{size[1]} image is too large to compute whole within "
                    f"{self.max_memory / 2**30:.2f} GiB, and bands need the output at the input "
                    "size (no --size); raise the memory budget or --resize the images"
                )
            banded = BandedHypercolumns(
                self.model, self.layers, size, in_channels=self.decode_options.channels,
                align=self.settings.align, dtype=self.settings.torch_dtype,
            )  # fmt: skip
            if self._banding is None:  # once per run: does this model allow bands at all?
                try:
                    banded.check()
                    self._banding = ""
                except HypercolumnsError as err:
                    self._banding = str(err)
            if self._banding:
                raise HypercolumnsError(self._banding)
            self._bands[size] = banded
            if len(self._bands) > _PLANS:
                self._bands.popitem(last=False)
        return self._bands[size]

    def fits(self, item: Decoded) -> bool:
        """Whether ``item`` can be computed whole within the memory budget (also true when it
        cannot be computed at all: :meth:`__call__` then says why)."""
        assert item.image is not None
        try:
            ext = self._plan((item.image.shape[1], item.image.shape[2]))
        except HypercolumnsError:
            return True
        return self._cost(ext, item) <= self.max_memory

    def _cost(self, ext: HypercolumnExtractor, item: Decoded) -> int:
        n = None if item.points is None else len(item.points)
        return working_set(ext, ext.input_size[0], points=n)

    def band_rows_for(self, item: Decoded) -> int:
        """Output rows per band for ``item``: ``band_rows``, or the most the budget allows."""
        assert item.image is not None
        if self.band_rows is not None:
            return self.band_rows
        banded = self._banded((item.image.shape[1], item.image.shape[2]))
        return banded.rows_for(self.max_memory, _BAND_QUANTUM)

    def dense_shape(self, item: Decoded) -> tuple[int, int, int]:
        """The ``(C, H, W)`` of ``item``'s dense hypercolumns."""
        assert item.image is not None
        ext = self._plan((item.image.shape[1], item.image.shape[2]))
        return ext.channels, ext.size[0], ext.size[1]

    # -- computing -----------------------------------------------------------------------------

    def bands(self, item: Decoded) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
        """Dense hypercolumns of one image band by band: ``(first row, (C, rows, W) array)``."""
        assert item.image is not None
        banded = self._banded((item.image.shape[1], item.image.shape[2]))
        x = item.image[None].to(self.device)
        for r0, band in banded(x, self.band_rows_for(item)):
            yield r0, band.cpu().numpy()

    def _sparse_in_bands(self, item: Decoded) -> ImageResult:
        assert item.image is not None
        assert item.points is not None
        banded = self._banded((item.image.shape[1], item.image.shape[2]))
        x = item.image[None].to(self.device)
        pts = item.points
        out = torch.empty((len(pts), banded.channels), dtype=self.settings.torch_dtype)
        for r0, band in banded(x, self.band_rows_for(item)):
            inside = (pts[:, 0] >= r0) & (pts[:, 0] < r0 + band.shape[1])
            y, xx = pts[inside, 0] - r0, pts[inside, 1]
            out[inside] = band[:, y.to(band.device), xx.to(band.device)].T.cpu()
        return self._result(item, out.numpy())

    def _result(self, item: Decoded, features: np.ndarray[Any, Any]) -> ImageResult:
        return ImageResult(
            key=item.source.key,
            features=features,
            points=None if item.points is None else item.points.numpy().astype(np.int32),
            labels=None if item.labels is None else item.labels.numpy().astype(np.int32),
            record=item.record,
        )

    def _run(self, items: Sequence[Decoded]) -> list[ImageResult]:
        first = items[0].image
        assert first is not None
        ext = self._plan((first.shape[1], first.shape[2]))
        x = torch.stack([d.image for d in items if d.image is not None]).to(self.device)
        points = None
        if self.settings.points is not None:
            points = torch.stack([d.points for d in items if d.points is not None])
        features = ext(x, points).features.cpu().numpy()
        return [self._result(d, features[i]) for i, d in enumerate(items)]

    def __call__(self, batch: Sequence[Decoded]) -> list[ImageResult | Failure]:
        """Hypercolumns of each image of ``batch``, or why it failed.

        Images of one size are computed together, as many at a time as the memory budget
        allows; an error in a group is retried image by image to find the image at fault.
        Sparse images beyond the budget are computed in bands; dense ones are computed whole
        here (send them to :meth:`bands` instead when :meth:`fits` says no).
        """
        out: dict[str, ImageResult | Failure] = {}
        groups: dict[tuple[int, ...], list[Decoded]] = {}
        for item in batch:
            if item.image is None:
                out[item.source.key] = self._failure(item, item.error or "not decoded")
            else:
                groups.setdefault(tuple(item.image.shape), []).append(item)
        for items in groups.values():
            first = items[0].image
            assert first is not None
            try:
                cost = self._cost(self._plan((first.shape[1], first.shape[2])), items[0])
            except HypercolumnsError as err:  # e.g. too small for the model
                out.update((item.source.key, self._failure(item, _reason(err))) for item in items)
                continue
            if self.settings.points is not None and cost > self.max_memory:
                for item in items:
                    out[item.source.key] = self._guarded([item], bands=True)[0]
                continue
            per = max(1, self.max_memory // max(cost, 1))
            for k in range(0, len(items), per):
                for r in self._guarded(items[k : k + per]):
                    out[r.key] = r
        return [out[item.source.key] for item in batch]

    def _guarded(
        self, items: Sequence[Decoded], *, bands: bool = False
    ) -> list[ImageResult | Failure]:
        """Results of ``items`` computed together; after an error, of each image alone, to
        find the one at fault."""
        try:
            if bands:
                return [self._sparse_in_bands(item) for item in items]
            return list(self._run(items))
        except Exception as err:
            if len(items) == 1:
                return [self._failure(items[0], _reason(err))]
            return [r for item in items for r in self._guarded([item], bands=bands)]

    @staticmethod
    def _failure(item: Decoded, reason: str) -> Failure:
        return Failure(item.source.key, str(item.source.path), reason)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, HypercolumnsError) else f"{type(err).__name__}: {text}"


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a run did.

    Attributes:
        store: The store written.
        kind: ``"dense"`` or ``"sparse"``.
        images: Input images.
        done: Images written by this run.
        skipped: Images already in the store, not computed again.
        failed: Images that could not be made, with the reasons.
        banded: Images of ``done`` computed in bands.
        bytes_written: Bytes of data this run committed.
        seconds: Wall time of the run.
    """

    store: str
    kind: Kind
    images: int
    done: int
    skipped: int
    failed: tuple[Failure, ...]
    banded: int
    bytes_written: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def images_per_second(self) -> float:
        return (self.done + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "kind": self.kind, "images": self.images, "done": self.done,
            "skipped": self.skipped, "banded": self.banded, "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "failed": [{"key": f.key, "source": f.source, "reason": f.reason} for f in self.failed],
        }  # fmt: skip


def _check_out(out: Path, settings: Settings) -> Kind:
    kind = store_kind(out)
    if kind is None:
        raise HypercolumnsError(
            f"a store is a folder named NAME.zarr (dense) or NAME.parquet (sparse), got "
            f"{str(out)!r}"
        )
    if kind != settings.kind:
        raise HypercolumnsError(
            "a .parquet store holds sparse hypercolumns: give points (--points N)"
            if kind == "sparse"
            else "a .zarr store holds dense hypercolumns: leave out points, or write .parquet"
        )
    existing = next(p for p in (out, *out.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        raise StoreError(f"cannot write store {str(out)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write store {str(out)!r}: {str(existing)!r} is not writable")
    return kind


def run(
    inputs: Iterable[str | Path],
    out: str | Path,
    settings: Settings,
    *,
    workers: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    max_memory: int | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    writer_options: Mapping[str, Any] | None = None,
    engine: Engine = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    model: nn.Module | None = None,
) -> RunSummary:
    """Hypercolumns of every input image into the store ``out``; resumable.

    Images already committed to ``out`` are skipped; unreadable images are recorded in the
    store's failure log and skipped, and the run goes on. Dense images whose working set
    exceeds ``max_memory`` are computed and written in horizontal bands.

    Two engines make the same store. ``"local"``: images decoded in ``workers`` DataLoader
    processes while the model runs in this one. ``"ray"`` (``pip install hypercolumns[ray]``):
    a Ray Data pipeline, images read and decoded in Ray tasks and the model run by an actor
    pool, one model per actor (one GPU each where the cluster has GPUs); this process writes
    the store (see :mod:`hypercolumns.pipeline._ray` and ``docs/ray.md``).

    Args:
        inputs: Image files, folders, glob patterns, ``.txt``/``.csv`` lists (see
            :func:`expand_inputs`).
        out: ``NAME.zarr`` for dense hypercolumns, ``NAME.parquet`` for sparse ones.
        settings: What to compute (see :class:`Settings`).
        workers: Local: DataLoader processes decoding images (0: decode in this process).
            Default: 2 with a GPU, 0 on a CPU, where the model's threads already use every
            core and workers only take cores from it (vgg16 at 320x240 ran about 1.15x faster
            with none on 2 cores; see docs/benchmarks.md). Ray: the most decoding tasks at a
            time (default 0: as many as Ray schedules).
        batch_size: Images computed together (local: of one size; Ray: per actor call,
            grouped by size inside). Default: 8, or 1 for the local engine on a CPU, where
            batching gains nothing and makes every layer's maps outgrow the caches (vgg16 at
            320x240 ran about 1.35x faster per image one at a time; see docs/benchmarks.md).
        device: Where the model runs; ``"auto"`` for CUDA when available (Ray: GPU actors
            when the cluster has GPUs).
        overwrite: Replace an existing store at ``out`` (only ever a store).
        max_memory: Working set of one batch in bytes (default 1 GiB).
        band_rows: Output rows per band for images computed in bands.
        progress: Called as ``progress(processed, total)`` with this run's images.
        writer_options: Options of the store writer (e.g. ``part_images`` for Parquet).
        engine: ``"local"`` or ``"ray"``.
        ray_address: Ray: the cluster to join (``"auto"``, ``"ray://host:10001"``); by default
            the one ``ray.init()`` finds (``RAY_ADDRESS``), else a new local instance.
        actors: Ray: model actors (default: one per GPU, or one per node on CPU clusters).
        model: An already built model to use instead of building ``settings.model`` (which
            then only names it); the store records the digest of its weights either way. Ray:
            it is sent to the actors, so it must pickle (its classes importable on the nodes).

    Returns:
        A :class:`RunSummary`.

    Raises:
        HypercolumnsError: Bad inputs or settings, Ray not installed or its pipeline failed;
            :class:`StoreError` when ``out`` cannot be written or belongs to another
            configuration. A store that fails while written (a full disk) keeps every image
            committed before; rerun to continue.
    """
    start = time.perf_counter()
    out = Path(out)
    if engine not in ("local", "ray"):
        raise HypercolumnsError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    if engine == "local" and (ray_address is not None or actors is not None):
        raise HypercolumnsError("a Ray address and actors apply to the Ray engine (engine='ray')")
    if engine == "local" and str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cpu = engine == "local" and torch.device(device).type == "cpu"
    if batch_size is None:
        batch_size = 1 if on_cpu else 8
    if workers is None:
        workers = 0 if on_cpu or engine == "ray" else 2
    if batch_size < 1 or workers < 0 or (actors is not None and actors < 1):
        raise HypercolumnsError(
            f"batch size and actors must be >= 1 and workers >= 0, got {batch_size}, "
            f"{actors}, {workers}"
        )
    if engine == "ray":
        from hypercolumns.pipeline import _ray

        _ray.require()
    sources = expand_inputs(inputs)
    kind = _check_out(out, settings)
    with_masks = {s.mask is not None for s in sources}
    if len(with_masks) > 1:
        raise HypercolumnsError("give a mask for every image or for none")
    extraction = Extraction(
        settings,
        device=device if engine == "local" else "cpu",  # Ray: here for the configuration only
        max_memory=max_memory,
        band_rows=band_rows,
        model=model,
    )
    config = extraction.config(labels=with_masks == {True})
    writer = open_writer(out, config, overwrite=overwrite, **dict(writer_options or {}))
    todo = [s for s in sources if s.key not in writer.done]
    sink = _Sink(writer, len(todo), progress)
    try:
        with writer:
            if engine == "ray" and todo:
                _ray.run(
                    todo, extraction, sink, address=ray_address, device=str(device),
                    actors=actors, batch_size=batch_size, workers=workers,
                    ship_model=model is not None,
                )  # fmt: skip
            elif todo:
                _run_local(todo, extraction, sink, workers=workers, batch_size=batch_size)
    except OSError as err:
        raise StoreError(
            f"writing store {str(out)!r} failed: {err.strerror or err}; it keeps the "
            f"{len(writer.done)} images committed before; free space (or fix the folder) and "
            "rerun the same command to continue"
        ) from err
    return RunSummary(
        store=str(out), kind=kind, images=len(sources), done=sink.done,
        skipped=len(sources) - len(todo), failed=tuple(sink.failed), banded=sink.banded,
        bytes_written=writer.bytes_written, seconds=time.perf_counter() - start,
    )  # fmt: skip


class _Sink:
    """The writing end of a run, whatever the engine: results into the store, failures into its
    log, counts, progress."""

    def __init__(
        self, writer: StoreWriter, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.writer, self.total, self.progress = writer, total, progress
        self.done = self.banded = self.processed = 0
        self.failed: list[Failure] = []
        if progress is not None:
            progress(0, total)

    def put(self, result: ImageResult | Failure) -> None:
        """Write and commit one image, or record why it failed."""
        if isinstance(result, Failure):
            self.writer.fail(result.key, result.source, result.reason)
            self.failed.append(result)
        else:
            self.writer.write(result)
            self.done += 1

    def committed_in_bands(self) -> None:
        """Count an image the engine wrote in bands and committed."""
        self.done += 1
        self.banded += 1

    def advance(self, images: int) -> None:
        """Report ``images`` more images processed."""
        self.processed += images
        if self.progress is not None:
            self.progress(self.processed, self.total)


def _run_local(
    todo: Sequence[Source], extraction: Extraction, sink: _Sink, *, workers: int, batch_size: int
) -> None:
    """The local engine: decoding in DataLoader workers, the model in this process."""
    items = decoded(todo, extraction.decode_options, workers)
    for batch in batches(items, batch_size, max_bytes=extraction.max_memory // 2):
        whole, banded = _split_whole(extraction, batch)
        for result in extraction(whole):
            sink.put(result)
        for item in banded:
            failure = _write_banded(extraction, sink.writer, item)
            if failure is None:
                sink.committed_in_bands()
            else:
                sink.put(failure)
        sink.advance(len(batch))


def _split_whole(
    extraction: Extraction, batch: Sequence[Decoded]
) -> tuple[list[Decoded], list[Decoded]]:
    """The images of ``batch`` that :class:`Extraction` computes whole (with those that failed
    to decode), and the dense images too large for its memory budget, to compute in bands."""
    whole: list[Decoded] = []
    banded: list[Decoded] = []
    for d in batch:
        fits = d.image is None or extraction.settings.points is not None or extraction.fits(d)
        (whole if fits else banded).append(d)
    return whole, banded


@dataclass(frozen=True)
class _BandLayout:
    """How a dense image computed in bands is stored: its ``(C, H, W)`` shape, its record
    (with the band rows and count) and the rows of its chunks."""

    shape: tuple[int, int, int]
    record: dict[str, Any]
    chunk_rows: int

    @staticmethod
    def of(extraction: Extraction, item: Decoded) -> _BandLayout:
        """The layout of ``item``'s bands; raises :class:`HypercolumnsError` when it cannot be
        computed in bands."""
        rows = extraction.band_rows_for(item)
        shape = extraction.dense_shape(item)
        bands = {"rows": rows, "count": math.ceil(shape[1] / rows)}
        return _BandLayout(shape, {**item.record, "bands": bands}, math.gcd(rows, TILE))


def _write_banded(extraction: Extraction, writer: Any, item: Decoded) -> Failure | None:
    """Compute a dense image band by band straight into its store slot; a failure to compute
    (not to write) is returned."""
    try:
        layout = _BandLayout.of(extraction, item)
    except HypercolumnsError as err:
        return Extraction._failure(item, _reason(err))
    slot = writer.begin(
        item.source.key, layout.shape, extraction.settings.dtype, layout.record,
        chunk_rows=layout.chunk_rows,
    )  # fmt: skip
    try:
        for r0, band in extraction.bands(item):
            slot.write(r0, band)
    except OSError:
        writer.abort(slot)
        raise
    except Exception as err:
        writer.abort(slot)
        return Extraction._failure(item, _reason(err))
    except BaseException:
        writer.abort(slot)
        raise
    writer.commit(slot)
    return None
