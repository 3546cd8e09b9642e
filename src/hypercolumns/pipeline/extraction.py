"""Extraction: the model and the settings, batches of decoded images in, per-image
:class:`~hypercolumns.io.store.ImageResult` or :class:`Failure` out, within a memory budget.

One :class:`Extraction` per process (or Ray actor). It keeps the extractors it built for each
image size, computes dense images too large for the budget band by band (:meth:`Extraction.bands`)
and isolates failures: one bad image fails alone, with its :func:`reason`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from hypercolumns._checks import budget, size_spec
from hypercolumns.errors import HypercolumnsError, OutputTooLargeError
from hypercolumns.features.bands import BandedHypercolumns, working_set
from hypercolumns.features.columns import HypercolumnExtractor
from hypercolumns.io.metadata import describe_weights, run_metadata
from hypercolumns.io.store import FORMAT, FORMAT_VERSION, ImageResult
from hypercolumns.models import default_input_size, input_channels, load_model, weights_digest
from hypercolumns.pipeline.decoding import Decoded, DecodeOptions
from hypercolumns.pipeline.settings import Settings

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "Extraction",
    "Failure",
    "failure_of",
    "reason",
]

DEFAULT_MAX_MEMORY = 1 << 30
_BAND_QUANTUM = 16  # band rows are a multiple of this (and chunks follow the bands)
_PLANS = 8  # extractors kept for different image sizes
_Plan = TypeVar("_Plan")


@dataclass(frozen=True)
class Failure:
    """An image that could not be made, and why."""

    key: str
    source: str
    reason: str


def reason(err: BaseException) -> str:
    """Why ``err`` happened, in one line: its message, after its type unless it is one of ours."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, HypercolumnsError) else f"{type(err).__name__}: {text}"


def failure_of(item: Decoded, err: BaseException | str) -> Failure:
    """The :class:`Failure` of ``item``: ``err`` is the reason, or the error it is the
    :func:`reason` of."""
    why = err if isinstance(err, str) else reason(err)
    return Failure(item.source.key, str(item.source.path), why)


def _size(item: Decoded) -> tuple[int, int]:
    assert item.image is not None
    return item.image.shape[1], item.image.shape[2]


def _batch(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tensors`` stacked (one alone is not copied)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(list(tensors))


def _reference_size(settings: Settings, model: nn.Module) -> tuple[int, int]:
    for spec in (settings.crop.partition(":")[2] if settings.crop else None, settings.resize):
        if spec:
            parts = size_spec(spec, "size")
            if len(parts) == 2 or spec is not settings.resize:
                return parts[0], parts[-1]
    return default_input_size(model)


class _PlanCache(Generic[_Plan]):
    """The planners built for the last few image sizes, the least recently used dropped first.

    It holds no builder (an :class:`Extraction`'s would hold the extraction and its model in a
    reference cycle); :meth:`get` takes one.
    """

    def __init__(self, capacity: int = _PLANS) -> None:
        self._capacity = capacity
        self._plans: OrderedDict[tuple[int, int], _Plan] = OrderedDict()

    def __contains__(self, size: tuple[int, int]) -> bool:
        return size in self._plans

    def get(self, size: tuple[int, int], build: Callable[[tuple[int, int]], _Plan]) -> _Plan:
        """The planner for ``size``, from ``build(size)`` when there is none (an error in
        ``build`` leaves nothing behind)."""
        if size not in self._plans:
            self._plans[size] = build(size)
            if len(self._plans) > self._capacity:
                self._plans.popitem(last=False)
        self._plans.move_to_end(size)
        return self._plans[size]


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
        self.max_memory = budget(max_memory, "max_memory") or DEFAULT_MAX_MEMORY
        if band_rows is not None and band_rows < 1:
            raise HypercolumnsError(f"band rows must be positive, got {band_rows}")
        self.band_rows = band_rows
        self._digest: str | None = None
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = load_model(
                    settings.model,
                    pretrained=settings.pretrained,
                    weights=settings.weights,
                    **dict(settings.model_kwargs),
                )
            if self.device.type != "cpu":  # hashed here: on a GPU, hashing copies them back
                self._digest = weights_digest(model)  # (vgg16 on an H200: 1.03 s, then 0.5)
        self.model = model.to(self.device).eval()
        channels = input_channels(self.model)
        reference = HypercolumnExtractor(
            self.model, settings.layers, _reference_size(settings, self.model),
            in_channels=channels, align=settings.align,
        )  # fmt: skip
        self.layers = [layer.name for layer in reference.layers]
        self._reference = reference
        self.decode_options = DecodeOptions.for_model(
            self.model, settings, max_bytes=self.max_memory
        )
        self._plans: _PlanCache[HypercolumnExtractor] = _PlanCache()
        self._bands: _PlanCache[BandedHypercolumns] = _PlanCache()
        self._costs: dict[tuple[tuple[int, int], int | None], int] = {}  # see cost
        self._banding: str | None = None  # why bands cannot be used ("": they can)

    def config(self, *, labels: bool = False) -> dict[str, Any]:
        """The store configuration of this run (``labels``: sparse points carry mask labels)."""
        s, opts, ref = self.settings, self.decode_options, self._reference
        metadata = run_metadata(
            s.model,
            self.model,
            ref.layers,
            ref.slices,
            model_kwargs=s.model_kwargs,
            weights=describe_weights(s.model, s.weights, s.pretrained, seed=0),
            points=s.points,
            seed=s.seed,
            labels=labels,
            align=s.align,
            dtype=s.dtype,
            size=s.size,
            weights_sha256=self._digest,
            preprocessing={
                "channels": opts.channels,
                "resize": s.resize,
                "crop": s.crop,
                "mean": opts.mean,
                "std": opts.std,
                "interpolation": opts.interpolation,
            },
        )
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": s.kind, **metadata}

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, size: tuple[int, int]) -> HypercolumnExtractor:
        return self._plans.get(size, self._new_plan)

    def _banded(self, size: tuple[int, int]) -> BandedHypercolumns:
        return self._bands.get(size, self._new_banded)

    def _new_plan(self, size: tuple[int, int]) -> HypercolumnExtractor:
        """The extractor of whole ``size`` images."""
        return HypercolumnExtractor(
            self.model, self.layers, size, in_channels=self.decode_options.channels,
            align=self.settings.align, size=self.settings.size,
            dtype=self.settings.torch_dtype, max_bytes=self.max_memory,
        )  # fmt: skip

    def _new_banded(self, size: tuple[int, int]) -> BandedHypercolumns:
        """The extractor of ``size`` images in bands."""
        if self.settings.size is not None and tuple(self.settings.size) != size:
            out_h, out_w = self.settings.size
            raise HypercolumnsError(
                f"a {size[0]}x{size[1]} image with a {out_h}x{out_w} output (size, --size) is too "
                f"large to compute whole within {self._budget()}, and bands need the output at "
                "the input size (no size); give a smaller size, fewer layers, dtype float16 or a "
                "larger max_memory (--size, --layers, --dtype, --max-memory)"
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
        return banded

    def planned(self, batch: Sequence[Decoded]) -> bool:
        """Whether the sizes of ``batch`` are planned already, so that computing it plans
        nothing. Planning runs the model with hooks on every module: in threads that run the
        model at once (:class:`~hypercolumns.pipeline._lanes.Lanes`), it must run alone."""
        return all(d.image is None or _size(d) in self._plans for d in batch)

    def cost(self, item: Decoded) -> int:
        """The working set of computing ``item`` whole, in bytes (its size is planned here).

        Raises:
            HypercolumnsError: It cannot be computed (e.g. too small for the model).
        """
        size, n = _size(item), None if item.points is None else len(item.points)
        ext = self._plan(size)
        cost = self._costs.get((size, n))  # a few calls per image, each walking the layers
        if cost is None:
            cost = working_set(ext, ext.input_size[0], points=n)
            if n is None and ext.size != ext.input_size:  # the output has --size rows, not H
                item_bytes = (ext.dtype or torch.float32).itemsize
                cost += (2 * ext.channels * item_bytes * (ext.size[0] - ext.input_size[0])
                         * ext.size[1])  # fmt: skip
            self._costs[(size, n)] = cost
        return cost

    def fits_within(self, batch: Sequence[Decoded], budget: int) -> bool:
        """Plan the sizes of ``batch`` (here, now) and tell whether :meth:`__call__` with this
        ``budget`` computes it whole, planning nothing more."""
        try:
            return all(d.image is None or self.cost(d) <= budget for d in batch)
        except HypercolumnsError:  # e.g. too small for the model: it fails where it is planned
            return False

    def fits(self, item: Decoded) -> bool:
        """Whether ``item`` can be computed whole within the memory budget (also true when it
        cannot be computed at all: :meth:`__call__` then says why)."""
        try:
            return self.cost(item) <= self.max_memory
        except HypercolumnsError:
            return True

    def _budget(self) -> str:
        """The run's memory budget, as messages name it."""
        return f"the run's memory budget of {self.max_memory / 2**30:.2f} GiB (--max-memory)"

    def band_rows_for(self, item: Decoded) -> int:
        """Output rows per band for ``item``: ``band_rows``, or the most the budget allows."""
        if self.band_rows is not None:
            return self.band_rows
        banded = self._banded(_size(item))
        return banded.rows_for(self.max_memory, _BAND_QUANTUM)

    def dense_shape(self, item: Decoded) -> tuple[int, int, int]:
        """The ``(C, H, W)`` of ``item``'s dense hypercolumns."""
        ext = self._plan(_size(item))
        return ext.channels, ext.size[0], ext.size[1]

    # -- computing -----------------------------------------------------------------------------

    def bands(self, item: Decoded) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
        """Dense hypercolumns of one image band by band: ``(first row, (C, rows, W) array)``."""
        assert item.image is not None
        banded = self._banded(_size(item))
        x = item.image[None].to(self.device)
        for r0, band in banded(x, self.band_rows_for(item)):
            yield r0, band.cpu().numpy()

    def _sparse_in_bands(self, item: Decoded) -> ImageResult:
        assert item.image is not None
        assert item.points is not None
        banded = self._banded(_size(item))
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
        ext = self._plan(_size(items[0]))
        x = _batch([d.image for d in items if d.image is not None]).to(self.device)
        points = None
        if self.settings.points is not None:
            points = _batch([d.points for d in items if d.points is not None])
        features = ext(x, points).features.cpu().numpy()
        return [self._result(d, features[i]) for i, d in enumerate(items)]

    def __call__(
        self, batch: Sequence[Decoded], *, budget: int | None = None
    ) -> list[ImageResult | Failure]:
        """Hypercolumns of each image of ``batch``, or why it failed.

        Images of one size are computed together, as many at a time as the memory budget
        (``budget``, or the run's) allows; an error in a group is retried image by image to
        find the image at fault. Sparse images beyond the budget are computed in bands; dense
        ones are computed whole here (send them to :meth:`bands` instead when :meth:`fits`
        says no).
        """
        limit = self.max_memory if budget is None else budget
        out: dict[str, ImageResult | Failure] = {}
        groups: dict[tuple[int, ...], list[Decoded]] = {}
        for item in batch:
            if item.image is None:
                out[item.source.key] = failure_of(item, item.error or "not decoded")
            else:
                groups.setdefault(tuple(item.image.shape), []).append(item)
        for items in groups.values():
            try:
                cost = self.cost(items[0])
            except HypercolumnsError as err:  # e.g. too small for the model
                out.update((item.source.key, failure_of(item, err)) for item in items)
                continue
            if self.settings.points is not None and cost > limit:
                for item in items:
                    out[item.source.key] = self._guarded([item], bands=True)[0]
                continue
            per = max(1, limit // max(cost, 1))
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
        except OutputTooLargeError as err:
            if len(items) > 1:
                return [r for item in items for r in self._guarded([item], bands=bands)]
            return [failure_of(items[0], f"{err.detail} need {err.need / 2**30:.2f} GiB, more "
                    f"than {self._budget()}; sample points, give fewer layers, dtype float16, a "
                    "smaller size, or a larger max_memory (--points, --layers, --dtype, --size, "
                    "--max-memory)")]  # fmt: skip
        except Exception as err:
            if len(items) == 1:
                return [failure_of(items[0], err)]
            return [r for item in items for r in self._guarded([item], bands=bands)]
