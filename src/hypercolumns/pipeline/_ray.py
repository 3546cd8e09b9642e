"""The Ray engine of :func:`hypercolumns.pipeline.run`: the same run as a Ray Data pipeline.

::

    sources ──▶ decode: Ray tasks ──▶ model: actor pool ──▶ this process: store writer

* Every image is a row; Ray tasks read, decode and preprocess it, and sample its points, with
  :func:`~hypercolumns.pipeline.decode`, as the local engine's worker processes do.
* A pool of actors (``map_batches`` with a callable class) runs the model, one model per actor
  and one GPU per actor where the cluster has GPUs. Each actor builds the model's architecture
  from the settings and loads the weights of the model built here, which travel through the
  object store: every actor computes with the weights named in the store's configuration (by
  their SHA-256), whatever the nodes have on disk or can download.
* The results stream back to this process (the driver), which alone writes and commits them
  with the store's writer: the same atomic per-image commits, resumption and failure log as the
  local engine. Dense images too large for the memory budget come back band by band and are
  written straight into their slot, which is committed when its last band is in.

Between the stages rows are plain columns (strings and tensors) that Ray keeps in Arrow, not
pickled objects. A task that Ray retries (an actor lost with its node) may send an image again;
the driver keeps the first copy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from hypercolumns._allocator import keep_freed_memory
from hypercolumns.errors import HypercolumnsError
from hypercolumns.io.store import DenseSlot, DenseWriter, ImageResult
from hypercolumns.models import load_model, model_file
from hypercolumns.pipeline._sink import BandLayout, Sink, split_whole
from hypercolumns.pipeline.decoding import Decoded, DecodeOptions, decode
from hypercolumns.pipeline.extraction import Extraction, Failure, failure_of, reason
from hypercolumns.pipeline.settings import Settings
from hypercolumns.pipeline.sources import Source

__all__ = ["require", "run"]

Batch = dict[str, np.ndarray[Any, Any]]
Row = dict[str, Any]


def require() -> None:
    """Raise a one-line :class:`HypercolumnsError` unless Ray (with Ray Data) is installed."""
    if importlib.util.find_spec("ray") is None:
        raise HypercolumnsError(
            "the Ray engine needs Ray: install hypercolumns[ray] (pip install "
            "'hypercolumns[ray]', or uv sync --extra ray)"
        )


# -- rows between the stages -------------------------------------------------------------------


def _pack(d: Decoded) -> Row:
    """A decoded image as a row of plain columns (empty tensors where there is nothing)."""
    return {
        "key": d.source.key,
        "path": str(d.source.path),
        "mask": "" if d.source.mask is None else str(d.source.mask),
        "record": json.dumps(d.record),
        "error": d.error or "",
        "image": np.zeros((0, 0, 0), np.float32) if d.image is None else d.image.numpy(),
        "points": np.zeros((0, 2), np.int64) if d.points is None else d.points.numpy(),
        "labels": np.zeros((0,), np.int64) if d.labels is None else d.labels.numpy(),
    }


def _unpack(batch: Batch, i: int, sparse: bool) -> Decoded:
    """Row ``i`` of a batch of :func:`_pack` rows, as the :class:`Decoded` it was."""
    mask = str(batch["mask"][i])
    source = Source(str(batch["key"][i]), Path(str(batch["path"][i])), Path(mask) if mask else None)
    record = json.loads(str(batch["record"][i]))
    if batch["error"][i]:
        return Decoded(source, None, record, error=str(batch["error"][i]))
    points = torch.from_numpy(np.array(batch["points"][i])) if sparse else None
    labels = torch.from_numpy(np.array(batch["labels"][i])) if sparse and mask else None
    return Decoded(source, torch.from_numpy(np.array(batch["image"][i])), record, points, labels)


def _decode_row(row: Row, options: DecodeOptions) -> Row:
    """The decoding task: read and preprocess one image (errors are kept in the row)."""
    mask, error = row["mask"], row.get("error") or None
    source = Source(row["key"], Path(row["path"]), Path(mask) if mask else None, error)
    return _pack(decode(source, options))


def _event(
    key: str,
    kind: str,
    info: Mapping[str, Any],
    features: np.ndarray[Any, Any],
    points: np.ndarray[Any, Any] | None = None,
    labels: np.ndarray[Any, Any] | None = None,
) -> Batch:
    """One output row of the model stage: an image, a band of one, or a failure."""
    return {
        "key": np.array([key]),
        "kind": np.array([kind]),
        "info": np.array([json.dumps(info)]),
        "features": features[None],
        "points": (np.zeros((0, 2), np.int32) if points is None else points)[None],
        "labels": (np.zeros((0,), np.int32) if labels is None else labels)[None],
    }


# -- the model stage ---------------------------------------------------------------------------


class _Model:
    """A model actor: batches of decoded rows in, one output row per image (or band) out."""

    def __init__(
        self,
        settings: Settings,
        spec: str,
        model: list[Any],
        device: str,
        threads: int | None,
        max_memory: int | None,
        band_rows: int | None,
    ) -> None:
        import ray

        keep_freed_memory()  # this actor's process is ours
        if threads is not None:
            torch.set_num_threads(threads)
        shipped = ray.get(model[0])  # the driver's model, or its weights
        if isinstance(shipped, nn.Module):
            built = shipped
        else:
            built = load_model(spec, **dict(settings.model_kwargs))
            built.load_state_dict(shipped)
        self.extraction = Extraction(
            settings, device=device, max_memory=max_memory, band_rows=band_rows, model=built
        )
        self.sparse = settings.points is not None
        empty = (0, 0) if self.sparse else (0, 0, 0)
        self.nothing = np.zeros(empty, dtype=settings.dtype)

    def __call__(self, batch: Batch) -> Iterator[Batch]:
        items = [_unpack(batch, i, self.sparse) for i in range(len(batch["key"]))]
        whole, banded = split_whole(self.extraction, items)
        for result in self.extraction(whole):
            yield self._out(result)
        for item in banded:
            yield from self._bands(item)

    def _out(self, result: ImageResult | Failure) -> Batch:
        if isinstance(result, Failure):
            info = {"source": result.source, "reason": result.reason}
            return _event(result.key, "failed", info, self.nothing)
        return _event(
            result.key, "image", result.record, result.features, result.points, result.labels
        )

    def _bands(self, item: Decoded) -> Iterator[Batch]:
        try:
            layout = BandLayout.of(self.extraction, item)
        except HypercolumnsError as err:
            yield self._out(failure_of(item, err))
            return
        info = {"shape": layout.shape, "record": layout.record, "chunk_rows": layout.chunk_rows}
        try:
            for r0, band in self.extraction.bands(item):
                yield _event(item.source.key, "band", {**info, "row": r0}, band)
        except Exception as err:  # as the local engine: the image fails, the run goes on
            yield self._out(failure_of(item, err))


# -- the driver --------------------------------------------------------------------------------


def _absolute(path: Path) -> str:
    """``path`` from this process's working folder (``..`` kept, as the path was given)."""
    return os.path.join(os.getcwd(), path)


def _spec_from_here(spec: str) -> str:
    """A model spec the actors can build where they run: a file spec with a relative path
    (``models/net.py:net``) made absolute from this process's working folder."""
    file = model_file(spec)
    if file is None or os.path.isabs(file):
        return spec
    return f"{_absolute(Path(file))}:{spec.partition(':')[2]}"


def _shipped(source: Source) -> Row:
    """The row a decoding task gets for ``source``. The tasks run in their node's working
    folder (a cluster's: where ``ray start`` ran), so its paths go as absolute paths."""
    mask = _absolute(source.mask) if source.mask else ""
    return {"key": source.key, "path": _absolute(source.path), "mask": mask,
            "error": source.error or ""}  # fmt: skip


class _Driver:
    """Writes the model stage's rows into the store through the run's sink, with the paths as
    they were given (records and failures as the local engine writes them)."""

    def __init__(self, sink: Sink, sparse: bool, labels: bool, todo: Sequence[Source]) -> None:
        self.sink, self.sparse, self.labels = sink, sparse, labels
        self.finished: set[str] = set()
        self.slots: dict[str, tuple[DenseSlot, set[int]]] = {}
        self.given = {
            s.key: [(_absolute(p), str(p)) for p in (s.path, s.mask) if p and not p.is_absolute()]
            for s in todo
        }

    def _as_given(self, key: str, value: Any) -> Any:
        """``value`` (a record, or text in it) with the paths shipped as they were given."""
        if not self.given.get(key):  # given absolute: nothing to rewrite
            return value
        if isinstance(value, dict):
            return {k: self._as_given(key, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._as_given(key, v) for v in value]
        if isinstance(value, str):
            for shipped, given in self.given[key]:
                value = value.replace(shipped, given)
        return value

    def take(self, row: Row) -> None:
        key, kind = str(row["key"]), str(row["kind"])
        if key in self.finished:  # sent again by a retried task
            return
        info = self._as_given(key, json.loads(row["info"]))
        if kind == "band":
            self._band(key, info, row["features"])
            return
        if kind == "failed":
            self._abort(key)
            self.sink.put(Failure(key, info["source"], info["reason"]))
        else:
            self.sink.put(
                ImageResult(
                    key, row["features"],
                    points=row["points"] if self.sparse else None,
                    labels=row["labels"] if self.labels else None,
                    record=info,
                )
            )  # fmt: skip
        self.finished.add(key)
        self.sink.advance(1)

    def _band(self, key: str, info: dict[str, Any], band: np.ndarray[Any, Any]) -> None:
        writer = self.sink.writer
        assert isinstance(writer, DenseWriter)
        if key not in self.slots:
            shape = (info["shape"][0], info["shape"][1], info["shape"][2])
            slot = writer.begin(
                key, shape, str(band.dtype), info["record"], chunk_rows=info["chunk_rows"]
            )
            self.slots[key] = (slot, set())
        slot, rows = self.slots[key]
        if info["row"] not in rows:
            rows.add(info["row"])
            slot.write(info["row"], band)
        if slot.rows_written == slot.shape[1]:
            del self.slots[key]
            writer.commit(slot)
            self.sink.committed_in_bands(info["record"])
            self.finished.add(key)
            self.sink.advance(1)

    def _abort(self, key: str) -> None:
        if key in self.slots:
            slot, _ = self.slots.pop(key)
            writer = self.sink.writer
            assert isinstance(writer, DenseWriter)
            writer.abort(slot)

    def close(self) -> None:
        """Discard images whose bands did not all come (the run stopped)."""
        for key in list(self.slots):
            self._abort(key)


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_data_quiet() -> Iterator[None]:
    """Ray Data's console messages (progress, errors, Ray's own deprecations) off while the
    engine runs: the caller reports progress, the engine errors. Ray Data's log file in the
    session's logs folder (``ray-data.log``) keeps them all."""
    console = [h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    levels = [h.level for h in console]
    for handler in console:
        handler.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
            yield
    finally:
        for handler, level in zip(console, levels, strict=True):
            handler.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _why(err: BaseException) -> str:
    """Why a Ray pipeline failed, in one line: the error that a task or an actor raised."""
    cause = getattr(err, "cause", None)  # a RayTaskError's: what the task raised
    while isinstance(cause, BaseException) and cause is not err:
        err, cause = cause, getattr(cause, "cause", None)
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    if len(lines) > 1 and not isinstance(err, HypercolumnsError):
        return lines[-1]  # a worker's traceback, as text: its last line names the error
    return reason(err)


def _pool(
    ray: ModuleType, device: str, actors: int | None
) -> tuple[int, dict[str, Any], str, int | None]:
    """Actors, their resources, their device and their PyTorch threads, for this cluster."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise HypercolumnsError(
            f"the Ray engine runs the model on 'auto', 'cpu' or 'cuda' (one GPU per actor), "
            f"got device {device!r}"
        )
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        if gpus == 0:
            raise HypercolumnsError(
                f"device {device!r}: the Ray cluster has no GPUs; use device 'cpu' or 'auto' "
                "(--device)"
            )
        n = actors or gpus
        if n > gpus:
            raise HypercolumnsError(f"{n} actors need {n} GPUs; the Ray cluster has {gpus}")
        return n, {"num_gpus": 1}, "cuda", None
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    nodes = [cpus for cpus in nodes if cpus >= 1]
    total = int(resources.get("CPU", 0))
    n = actors or max(1, len(nodes))
    # the model actors take half the CPUs, the decoding tasks the other half
    cpus = max(1, min(total // (2 * n), int(min(nodes, default=1))))
    if n * cpus >= total:
        raise HypercolumnsError(
            f"{n} model actor(s) of {cpus} CPU(s) leave no CPU for decoding; the Ray cluster "
            f"has {total} CPU(s): give fewer actors (--actors), or a cluster with more CPUs"
        )
    return n, {"num_cpus": cpus}, "cpu", cpus


#: Seconds a plain TCP connection to a cluster's address may take before the run gives up.
CONNECT_TIMEOUT = 5.0

_HOST_PORT = re.compile(r"(?:ray://)?(\[[^\]]+\]|[^:/\[\]]+):(\d+)/?")


def _reachable(address: str | None) -> None:
    """Refuse at once, in one line, a cluster address where nothing answers.

    ``ray.init`` itself retries an unreachable address for 30 s or more and prints a line per
    attempt; a plain TCP connection (at most :data:`CONNECT_TIMEOUT` seconds) says the same in
    one line. Only ``HOST:PORT`` and ``ray://HOST:PORT`` are checked (``RAY_ADDRESS`` stands in
    for ``None`` and ``"auto"``, as in ``ray.init``); ``auto`` without it is found by Ray.
    """
    if address is None or address == "auto":
        address = os.environ.get("RAY_ADDRESS") or address
    match = _HOST_PORT.fullmatch(address or "")
    if match is None:
        return
    host, port = match.group(1).strip("[]"), int(match.group(2))
    advice = (
        "start one there ('ray start --head') or check the address (ray_address, "
        "--ray-address, RAY_ADDRESS)"
    )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise HypercolumnsError(
            f"cannot join a Ray cluster at {address!r}: nothing answers at {host}:{port} "
            f"({why} within {CONNECT_TIMEOUT:g} s); {advice}"
        ) from err
    if not match.group(0).startswith("ray://"):  # a Ray Client server is no GCS
        gcs = _not_a_gcs(f"{match.group(1)}:{port}")
        if gcs:
            raise HypercolumnsError(
                f"cannot join a Ray cluster at {address!r}: {host}:{port} answers, but not as "
                f"a Ray head node ({gcs}); {advice}"
            )


def _not_a_gcs(target: str) -> str | None:
    """Why the server at ``target`` is no Ray GCS (Ray's head node service), or ``None``.

    Ray's own connection retries a server that answers otherwise (another service on that
    port, a proxy) for 30 s, a log line a second. One call of the GCS's ``GetClusterId``
    settles it: a server without that gRPC method (``UNIMPLEMENTED``), one that does not speak
    gRPC (``UNAVAILABLE``, after the TCP connection succeeded) or one silent for
    :data:`CONNECT_TIMEOUT` seconds is not Ray's; any other answer (token authentication
    among them) is left to ``ray.init``.
    """
    try:
        import grpc  # type: ignore[import-untyped]
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # a Ray installed without gRPC's Python package: Ray decides
        return None
    messages: Any = gcs_service_pb2  # generated code, untyped
    services: Any = gcs_service_pb2_grpc
    with grpc.insecure_channel(target) as channel:
        stub = services.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(messages.GetClusterIdRequest(), timeout=CONNECT_TIMEOUT)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no reply within {CONNECT_TIMEOUT:g} s"
            if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                return f"{code.name}: {err.details()}"
    return None


def _verbose() -> bool:
    """Whether Ray may speak: its INFO lines and its workers' output (tracebacks included)
    reach this terminal only when the ``hypercolumns`` logger is at DEBUG (the CLI's
    ``--debug``); otherwise they stay in the session's log files."""
    return logging.getLogger("hypercolumns").isEnabledFor(logging.DEBUG)


#: Ray's switch for the raylet's report of every failed task it will retry, a worker's
#: traceback that the driver prints whatever ``log_to_driver`` says; read when Ray starts.
_RETRY_LOG = "RAY_enable_output_error_log_if_still_retry"


@contextlib.contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in the environment (where it holds no value of its own), then as before."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _connected(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected: to the instance this process already uses, else to the cluster at
    ``address``, else (no ``address``, no ``RAY_ADDRESS``) to a new local instance, which is
    shut down at the end. Ray speaks only at warnings, and its workers' output stays in the
    session's logs, unless :func:`_verbose`; an instance this process already uses is left as
    its caller set it."""
    if address is None and "ray" not in sys.modules:
        # A local instance runs this interpreter: Ray's copy of a `uv run` environment for its
        # workers (a new virtual environment per session) would only cost time.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray
    import ray.data

    if ray.is_initialized():
        yield ray
        return
    _reachable(address)
    verbose = _verbose()
    # workers' output (their tracebacks) stays in the session's logs: errors come as one line
    quiet: dict[str, Any] = {} if verbose else {"log_to_driver": False}
    try:
        with _env({} if verbose else {_RETRY_LOG: "0"}):
            if address is None:
                level = logging.INFO if verbose else logging.ERROR
                ray.init(include_dashboard=False, logging_level=level, **quiet)
            else:
                level = logging.INFO if verbose else logging.WARNING
                ray.init(address=address, logging_level=level, **quiet)
    except Exception as err:
        where = f"at {address!r}" if address else "here"
        raise HypercolumnsError(f"cannot start or join a Ray cluster {where}: {_why(err)}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def run(
    todo: Sequence[Source],
    extraction: Extraction,
    sink: Sink,
    *,
    address: str | None,
    device: str,
    actors: int | None,
    batch_size: int,
    workers: int,
    ship_model: bool,
) -> None:
    """Compute ``todo`` with Ray and write the results through ``sink``.

    ``extraction`` is the driver's: its settings, decoding options and model weights go to the
    tasks and actors. ``ship_model``: send the model itself (one the caller built), not only
    its weights (the actors then build it from the settings).
    """
    labels = bool(sink.writer.config["run"].get("labels"))
    driver = _Driver(sink, sparse=extraction.settings.points is not None, labels=labels, todo=todo)
    with _connected(address) as ray, _ray_data_quiet():
        n, resources, actor_device, threads = _pool(ray, device, actors)
        model = extraction.model if ship_model else extraction.model.state_dict()
        model_ref = ray.put(model)
        items = [_shipped(s) for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // batch_size))
        ds = ds.map(
            _decode_row,
            fn_kwargs={"options": extraction.decode_options},
            concurrency=workers or None,
        )
        ds = ds.map_batches(
            _Model,
            fn_constructor_kwargs={
                "settings": extraction.settings, "model": [model_ref], "device": actor_device,
                "spec": _spec_from_here(extraction.settings.model),
                "threads": threads, "max_memory": extraction.max_memory,
                "band_rows": extraction.band_rows,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n),
            **resources,
        )  # fmt: skip
        ds.context.enable_progress_bars = False  # the caller shows progress
        ds.context.print_on_execution_start = False
        try:
            for row in ds.iter_rows():
                driver.take(row)
        except ray.exceptions.RayError as err:
            raise HypercolumnsError(f"the Ray pipeline failed: {_why(err)}") from err
        finally:
            driver.close()
