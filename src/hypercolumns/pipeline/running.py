"""The run: every input image into a store, with one of two engines, and a
:class:`RunSummary` at the end.

:func:`run` checks the settings, lists the inputs, opens the store's writer, leaves out the
images already in it, and hands the rest to an engine through one signature,
``engine.run(todo, extraction, sink, **options)``: the local engine
(:mod:`hypercolumns.pipeline._local`) or the Ray engine (:mod:`hypercolumns.pipeline._ray`).
Either way this process alone writes and commits the store, through the :class:`Sink`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hypercolumns._checks import budget
from hypercolumns._checks import device as check_device
from hypercolumns.errors import HypercolumnsError, StoreError, StoreWarning
from hypercolumns.io.store import Kind, folders_of, nesting, open_writer, store_kind
from hypercolumns.pipeline import _local
from hypercolumns.pipeline._sink import Sink
from hypercolumns.pipeline.decoding import file_stat
from hypercolumns.pipeline.extraction import Extraction, Failure
from hypercolumns.pipeline.settings import Settings
from hypercolumns.pipeline.sources import Source, expand_inputs

__all__ = ["Engine", "Interrupted", "RunSummary", "run"]

Engine = Literal["local", "ray"]


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
        setup_seconds: Of ``seconds``, the time before the first image: the model built (its
            library imported), its weights hashed, the inputs listed and the store opened.
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
    setup_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def images_per_second(self) -> float:
        """Images made or failed per second of the whole run."""
        return (self.done + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0

    @property
    def computing_images_per_second(self) -> float:
        """Images made or failed per second after the set-up: the rate a longer run keeps."""
        computing = self.seconds - self.setup_seconds
        return (self.done + len(self.failed)) / computing if computing > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "kind": self.kind, "images": self.images, "done": self.done,
            "skipped": self.skipped, "banded": self.banded, "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3), "setup_seconds": round(self.setup_seconds, 3),
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


def _engine(engine: Engine) -> Callable[..., None]:
    """The ``run(todo, extraction, sink, **options)`` of an engine, whose options are
    ``workers`` and ``batch_size``, and for Ray ``address``, ``device``, ``actors`` and
    ``ship_model``; the Ray engine only when Ray is installed."""
    if engine == "ray":
        from hypercolumns.pipeline import _ray

        _ray.require()
        return _ray.run
    return _local.run


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or a signal the caller turned into one) after committing what
    was complete: ``summary.done`` images of this run are in the store; rerun to continue.

    Attributes:
        summary: What the run did before it stopped.
    """

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(summary.store)
        self.summary = summary


def _check_nesting(todo: list[Source], done: set[str]) -> None:
    """Refuse images whose keys would nest with committed ones (a key a folder of another):
    a dense store cannot hold both, and committing one must never delete the other."""
    folders = {f for key in done for f in folders_of(key)}
    for source in todo:
        other = nesting(source.key, done, folders)
        if other is not None:
            raise HypercolumnsError(
                f"image {str(source.path)!r} gets the key {source.key!r}, and the store "
                f"already holds the image {other!r}: one key would be a folder of the other; "
                "rename the file, or write another store"
            )


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _warn_about_committed(out: Path, sources: list[Source], writer: Any) -> None:
    """Warn about committed images removed from the store by hand, and about images whose
    files changed (size or modification time) since they were committed: neither is
    recomputed into this store, which never replaces a committed image."""
    missing = writer.missing()
    if missing:
        warnings.warn(
            f"store {str(out)!r}: {len(missing)} committed image(s) are missing from it "
            f"(removed by hand?): {_listing(missing)}; they are not recomputed (a store never "
            "replaces a committed image); rerun with --overwrite (overwrite=True) to recompute "
            "the store",
            StoreWarning,
            stacklevel=3,
        )
    changed = []
    for source in sources:
        stored = writer.records.get(source.key, {}).get("source_stat")
        if stored is None or source.error is not None:
            continue
        try:
            now = file_stat(source.path)
        except OSError:
            continue
        if now != stored:
            changed.append(source.key)
    if changed:
        warnings.warn(
            f"store {str(out)!r}: {len(changed)} image file(s) changed since they were "
            f"committed (size or modification time): {_listing(changed)}; the store keeps "
            "their earlier hypercolumns; rerun with --overwrite (overwrite=True) to recompute "
            "the store, or write another one",
            StoreWarning,
            stacklevel=3,
        )


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
    budget(max_memory, "max_memory")
    if engine == "local" and str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) != "auto":  # Ray: the cluster's devices, not this machine's
        check_device(device, here=engine == "local")
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
    engine_run = _engine(engine)
    options: dict[str, Any] = {"workers": workers, "batch_size": batch_size}
    if engine == "ray":
        options.update(
            address=ray_address, device=str(device), actors=actors, ship_model=model is not None
        )
    sources = expand_inputs(inputs)
    kind = _check_out(out, settings)
    masked = next((s for s in sources if s.mask is not None), None)
    bare = next((s for s in sources if s.mask is None), None)
    if masked and bare:
        raise HypercolumnsError(
            f"the inputs give masks for some images only ({str(masked.path)!r} has "
            f"{str(masked.mask)!r}, {str(bare.path)!r} none); give a mask for every image or "
            "for none (a list's 'mask' column on every row)"
        )
    extraction = Extraction(
        settings,
        device=device if engine == "local" else "cpu",  # Ray: here for the configuration only
        max_memory=max_memory,
        band_rows=band_rows,
        model=model,
    )
    config = extraction.config(labels=masked is not None)
    writer = open_writer(out, config, overwrite=overwrite, **dict(writer_options or {}))
    todo = [s for s in sources if s.key not in writer.done]
    _warn_about_committed(out, sources, writer)
    sink = Sink(writer, len(todo), progress)
    skipped = len(sources) - len(todo)
    set_up: list[float] = []  # when the first image could start

    def summary(done: int) -> RunSummary:
        seconds = time.perf_counter() - start
        return RunSummary(
            store=str(out), kind=kind, images=len(sources), done=done, skipped=skipped,
            failed=tuple(sink.failed), banded=sink.banded, bytes_written=writer.bytes_written,
            seconds=seconds, setup_seconds=set_up[0] - start if set_up else seconds,
        )  # fmt: skip

    try:
        with writer:
            _check_nesting(todo, writer.done)
            if todo:
                set_up.append(time.perf_counter())
                engine_run(todo, extraction, sink, **options)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM where the caller made it one
        raise Interrupted(summary(len(writer.done) - skipped)) from err
    except OSError as err:
        raise StoreError(
            f"writing store {str(out)!r} failed: {err.strerror or err}; it keeps the "
            f"{len(writer.done)} images committed before; free space (or fix the folder) and "
            "rerun the same command to continue"
        ) from err
    return summary(sink.done)
