"""The Ray engine: the same stores as the local engine, on a local Ray instance started here.

All Ray tests live in this module: pytest runs it in one xdist worker (``--dist loadfile``), so
one Ray instance (2 CPUs, session files in a temporary folder of its own) serves them all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError
from hypercolumns.io import store as st
from hypercolumns.pipeline import Extraction, Settings, _ray, decode, expand_inputs, run
from hypercolumns.pipeline._sink import Sink
from tests import tiny_models
from tests.cli.test_cli import assert_one_line_error
from tests.cli.test_cli import run as cli
from tests.conftest import HERE, TINY
from tests.io.test_store import config as store_config
from tests.pipeline.conftest import picture

SIZES = [(20, 16), (24, 18), (40, 36), (17, 23), (24, 18)]
NOT_IN_ACTORS = f"{HERE / 'tiny_models.py'}:tiny_not_in_ray_actors"


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[ModuleType]:
    """A local Ray instance with 2 CPUs for this module, as the engine starts one (workers' output
    not copied here), its session files in a short temporary folder (Ray's socket paths must
    stay under 108 characters)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers run this interpreter as it is
        import ray

        temp = tempfile.mkdtemp(prefix="hc-ray-")
        for attempt in (1, 2):  # a busy machine can miss Ray's 30 s start-up deadline once
            try:
                ray.init(
                    num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp,
                    object_store_memory=128 << 20, logging_level=logging.ERROR,
                    log_to_driver=False,
                )  # fmt: skip
                break
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
        try:
            yield ray
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five images of four sizes, PNG and JPEG, one in a subfolder, and a corrupt one; a CSV
    list of them all with label masks."""
    root, masks = tmp_path / "images", tmp_path / "masks"
    masks.mkdir()
    rows = ["path,mask"]
    for i, size in enumerate(SIZES):
        name = f"sub/im{i}.jpg" if i == 3 else f"im{i}.{'png' if i % 2 else 'jpg'}"
        picture(root / name, size, i)
        labels = np.random.default_rng(i).integers(0, 3, size, dtype=np.uint8)
        Image.fromarray(labels).save(masks / f"{i}.png")
        rows.append(f"{name},../masks/{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows.append("broken.png,../masks/0.png")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


def _without_place(record: dict[str, Any]) -> dict[str, Any]:
    """A stored image's record without where it landed (Parquet part and row group), which
    depends on the order images finish in."""
    return {k: v for k, v in record.items() if k not in ("part", "row_groups")}


def assert_same_store(a: Path, b: Path, *, exact: bool = True) -> None:
    """Same configuration, keys, records and failures; equal arrays (``exact``: to the bit,
    else to float16 rounding)."""
    sa, sb = hc.open_store(a), hc.open_store(b)
    assert sa.config == sb.config
    assert sorted(sa) == sorted(sb)
    assert sorted((f["key"], f["source"], f["reason"]) for f in sa.failures) == sorted(
        (f["key"], f["source"], f["reason"]) for f in sb.failures
    )

    def same(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> None:
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)

    for key in sa:
        assert _without_place(sa.record(key)) == _without_place(sb.record(key))
        if isinstance(sa, st.DenseStore):
            xa, xb = sa[key], sb[key]
            assert (xa.dtype, xa.shape, xa.chunks) == (xb.dtype, xb.shape, xb.chunks)
            assert dict(xa.attrs) == dict(xb.attrs)
            same(xa[:], xb[:])
        else:
            assert isinstance(sb, st.SparseStore)
            ea, eb = sa[key], sb[key]
            same(ea.features, eb.features)
            np.testing.assert_array_equal(ea.points, eb.points)
            assert (ea.labels is None) == (eb.labels is None)
            if ea.labels is not None:
                np.testing.assert_array_equal(ea.labels, eb.labels)


def budget_between(folder: Path, settings: Settings) -> int:
    """A memory budget that the largest image exceeds and the others fit."""
    extraction = Extraction(settings)
    items = [decode(s, extraction.decode_options) for s in expand_inputs([folder])]
    costs = {tuple(d.image.shape): extraction.cost(d) for d in items if d.image is not None}
    largest = max(costs.values())
    assert sorted(costs.values())[-2] < largest
    return largest - 1


@pytest.mark.slow  # Ray's start and its workers' take seconds
def test_dense_store_equals_the_local_engines(
    ray_instance: ModuleType, folder: Path, tmp_path: Path, one_thread: None
) -> None:
    """Whole images, an image computed in bands, a corrupt image: the same store. The model is
    one built here (sent to the actors whole; otherwise they build it and get its weights)."""
    settings = Settings(TINY, "0,3", dtype="float16")
    budget = budget_between(folder, settings)
    options: dict[str, Any] = {
        "batch_size": 1, "max_memory": budget, "band_rows": 8, "model": tiny_models.tiny()
    }  # fmt: skip
    local = run([folder], tmp_path / "local.zarr", settings, **options)
    calls: list[tuple[int, int]] = []
    ray = run(
        [folder], tmp_path / "ray.zarr", settings, engine="ray", **options,
        progress=lambda *a: calls.append(a),
    )  # fmt: skip
    assert (ray.done, ray.banded, ray.skipped) == (local.done, local.banded, 0) == (5, 1, 0)
    assert [f.key for f in ray.failed] == [f.key for f in local.failed] == ["broken.png"]
    assert ray.failed[0].reason == local.failed[0].reason
    assert calls[0] == (0, 6)
    assert calls[-1] == (6, 6)
    assert_same_store(tmp_path / "local.zarr", tmp_path / "ray.zarr")
    assert hc.open_store(tmp_path / "ray.zarr").record("im2.jpg")["bands"] == {
        "rows": 8, "count": 5
    }  # fmt: skip


@pytest.mark.slow  # Ray's workers take seconds
def test_relative_paths_are_found_by_a_cluster_started_elsewhere(
    ray_instance: ModuleType,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    """Found in the report's rerun: joining a cluster started in another folder (``ray start``
    there, ``--ray-address auto`` here), every image given by a relative path failed, as the
    tasks looked for it in their own working folder. The instance of this module was started
    in another folder than the one the run is given from here. The same for a model file."""
    monkeypatch.chdir(folder.parent)
    relative = Path(folder.name)
    shutil.copy(HERE / "tiny_models.py", "net.py")  # built by the actors from the file
    settings = Settings("net.py:tiny", "0,3", points=5)
    ray = run([relative / "list.csv"], tmp_path / "ray.parquet", settings, engine="ray")
    local = run([relative / "list.csv"], tmp_path / "local.parquet", settings)
    assert ray.done == local.done == 5
    assert [f.key for f in ray.failed] == ["broken.png"]
    # Ray's batches group images otherwise than the local run's single images: equal to rounding
    assert_same_store(tmp_path / "local.parquet", tmp_path / "ray.parquet", exact=False)


@pytest.mark.slow  # Ray's start and its workers' take seconds
def test_sparse_store_with_labels_continued_by_ray_equals_the_local_engines(
    ray_instance: ModuleType,
    folder: Path,
    tmp_path: Path,
    one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Points stratified by masks. The local engine begins the store with two images; the Ray
    engine, from the command line, continues it: skips those, writes the others, records the
    corrupt image and exits 1."""
    settings = Settings(TINY, "0,3,7", points=9, seed=3)
    listing = folder / "list.csv"
    local = tmp_path / "local.parquet"
    run([listing], local, settings, batch_size=1)
    out = tmp_path / "ray.parquet"
    part = folder / "part.csv"
    part.write_text("\n".join(listing.read_text().splitlines()[:3]) + "\n")  # header, 2 images
    assert run([part], out, settings).done == 2
    code, stdout, stderr = cli(
        ["extract", TINY, str(listing), "--layers", "0,3,7", "--points", "9", "--seed", "3",
         "--out", str(out), "--engine", "ray", "--batch-size", "3", "--format", "json"],
        capsys,
    )  # fmt: skip
    assert code == 1, stderr
    summary = json.loads(stdout)
    assert (summary["done"], summary["skipped"]) == (3, 2)
    assert [f["key"] for f in summary["failed"]] == ["broken.png"]
    assert "1 image(s) failed" in stderr
    # batches of 3 group images otherwise than the local run's single images: equal to rounding
    assert_same_store(local, out, exact=False)
    assert hc.open_store(out)["im0.jpg"].labels is not None


@pytest.mark.slow  # Ray's start and its workers' take seconds
def test_errors_are_one_line(
    ray_instance: ModuleType, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["extract", TINY, str(folder), "--layers", "0,3"]
    code, _, err = cli([*base, "--out", str(tmp_path / "a.zarr"), "--device", "cuda",
                        "--engine", "ray"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "the Ray cluster has no GPUs")
    code, _, err = cli([*base, "--out", str(tmp_path / "a.zarr"), "--actors", "2",
                        "--engine", "ray"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "leave no CPU for decoding")
    code, _, err = cli([*base, "--out", str(tmp_path / "a.zarr"), "--ray-address", "auto"],
                       capsys)  # fmt: skip
    assert_one_line_error(code, err, "--ray-address and --actors apply to --engine ray")
    code, _, err = cli([*base, "--out", str(tmp_path / "a.npy"), "--engine", "ray"], capsys)
    assert_one_line_error(code, err, "--engine apply to stores")


@pytest.mark.slow  # Ray's start and its workers' take seconds
def test_a_failing_actor_stops_the_run_with_one_line(
    ray_instance: ModuleType, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model cannot be built in the actors (say, its file is missing on the nodes): the run
    stops with the reason in one line, and the store keeps what it had."""
    out = tmp_path / "a.zarr"
    code, _, err = cli(["extract", NOT_IN_ACTORS, str(folder), "--layers", "0,3", "--out",
                        str(out), "--engine", "ray"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "the Ray pipeline failed: ")
    assert "not in a Ray actor" in err
    assert len(hc.open_store(out)) == 0


def _command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real command line in a process of its own (where Ray is not yet connected)."""
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "hypercolumns", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


@pytest.mark.slow  # a driver of its own joins the module's instance: Ray's start, its actors'
@pytest.mark.parametrize("debug", [False, True])
def test_actors_failing_on_a_cluster_print_no_worker_tracebacks(
    ray_instance: ModuleType, folder: Path, tmp_path: Path, debug: bool
) -> None:
    """RY4: the model builds here but not in the actors of a cluster the command joins: without
    --debug, neither Ray's INFO lines nor the workers' tracebacks reach the terminal, and the
    last line is ours; --debug shows them."""
    address = ray_instance.get_runtime_context().gcs_address
    out = tmp_path / "a.parquet"
    res = _command(*(["--debug"] if debug else []), "extract", NOT_IN_ACTORS, str(folder),
                   "--layers", "0,3", "--points", "5", "--out", str(out), "--engine", "ray",
                   "--ray-address", address)  # fmt: skip
    assert res.returncode == 1
    both = res.stdout + res.stderr
    if debug:
        assert "Traceback" in both
        return
    assert "Traceback" not in both, both
    assert " INFO " not in both, both
    lines = both.strip().splitlines()
    # Ray's own warnings may remain (token authentication, issue 53727), never a traceback
    assert len(lines) <= 4, both
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Ray pipeline failed: "), both
    assert "not in a Ray actor" in last
    assert len(hc.open_store(out)) == 0


def _free_port() -> int:
    """A local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow  # a command of its own: imports Ray and PyTorch
def test_an_unreachable_cluster_is_one_line_at_once(folder: Path, tmp_path: Path) -> None:
    """RY6: nothing answers at --ray-address: one line, not Ray's 30 s of retries."""
    address = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "a.parquet"
    res = _command("extract", TINY, str(folder), "--layers", "0,3", "--points", "5", "--out",
                   str(out), "--engine", "ray", "--ray-address", address)  # fmt: skip
    assert res.returncode == 1
    assert res.stdout == ""
    assert_one_line_error(1, res.stderr, f"cannot join a Ray cluster at '{address}'")
    assert "nothing answers" in res.stderr


@pytest.mark.parametrize("form", ["{}", "ray://{}", "RAY_ADDRESS={}", "auto+RAY_ADDRESS={}"])
def test_reachability_is_checked_in_seconds(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = f"127.0.0.1:{_free_port()}"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address: str | None = form.format(target)
    if "RAY_ADDRESS=" in form:
        monkeypatch.setenv("RAY_ADDRESS", target)
        address = "auto" if form.startswith("auto") else None
    start = time.monotonic()
    with pytest.raises(HypercolumnsError, match=r"nothing answers at 127\.0\.0\.1:\d+"):
        _ray._reachable(address)
    assert time.monotonic() - start < _ray.CONNECT_TIMEOUT + 1


def test_a_server_that_is_no_ray_head_is_one_line_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """RY6 again: where another service answers at the address (here a gRPC server without
    Ray's services, and a server that accepts and says nothing), Ray retried for 30 s with a log
    line a second."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(HypercolumnsError, match=r"answers, but not as a Ray head node "
                                                    r"\(UNIMPLEMENTED"):  # fmt: skip
            _ray._reachable(f"127.0.0.1:{port}")
    finally:
        server.stop(None)
    monkeypatch.setattr(_ray, "CONNECT_TIMEOUT", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(HypercolumnsError, match=r"not as a Ray head node \(no reply within"):
            _ray._reachable(f"127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - start < 3


def test_a_ray_head_passes_the_check(ray_instance: ModuleType) -> None:
    _ray._reachable(ray_instance.get_runtime_context().gcs_address)  # no error


@pytest.mark.parametrize("address", [None, "auto", "local", "ray://", "not an address"])
def test_addresses_ray_resolves_are_left_to_it(
    address: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _ray._reachable(address)  # no connection tried, no error


def test_without_ray_installed_or_another_engine(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(HypercolumnsError, match="unknown engine 'spark'"):
        run([folder], tmp_path / "a.zarr", Settings(TINY, "0"), engine="spark")  # type: ignore[arg-type]
    monkeypatch.setattr(_ray.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HypercolumnsError, match=r"install hypercolumns\[ray\]"):
        run([folder], tmp_path / "a.zarr", Settings(TINY, "0"), engine="ray")
    assert not (tmp_path / "a.zarr").exists()


def _row(batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    return {name: column[0] for name, column in batch.items()}


def test_the_driver_keeps_the_first_copy_of_what_a_retried_task_sends_again(
    tmp_path: Path,
) -> None:
    """Ray may run a task again (its actor lost with a node) after part of its output came:
    every image is still committed once, bands written once, failures recorded once."""
    rng = np.random.default_rng(0)
    whole = rng.standard_normal((5, 4, 3)).astype(np.float16)
    big = rng.standard_normal((5, 6, 3)).astype(np.float16)
    layout = {"shape": [5, 6, 3], "record": {"source": "b.png"}, "chunk_rows": 2}
    events = [
        _ray._event("a.png", "image", {"source": "a.png"}, whole),
        _ray._event("b.png", "band", {**layout, "row": 0}, big[:, :4]),
        _ray._event("b.png", "band", {**layout, "row": 0}, big[:, :4]),  # again
        _ray._event("a.png", "image", {"source": "a.png"}, whole),  # again
        _ray._event("c.png", "failed", {"source": "c.png", "reason": "broken"}, whole[:0]),
        _ray._event("b.png", "band", {**layout, "row": 4}, big[:, 4:]),
        _ray._event("b.png", "band", {**layout, "row": 4}, big[:, 4:]),  # after its commit
        _ray._event("c.png", "failed", {"source": "c.png", "reason": "broken"}, whole[:0]),
    ]
    calls: list[tuple[int, int]] = []
    with st.open_writer(tmp_path / "d.zarr", store_config()) as writer:
        sink = Sink(writer, 3, lambda *a: calls.append(a))
        driver = _ray._Driver(sink, sparse=False, labels=False, todo=[])
        for event in events:
            driver.take(_row(event))
    assert (sink.done, sink.banded, [f.key for f in sink.failed]) == (2, 1, ["c.png"])
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    store = hc.open_store(tmp_path / "d.zarr")
    np.testing.assert_array_equal(store["a.png"][:], whole)
    np.testing.assert_array_equal(store["b.png"][:], big)
    manifest = (tmp_path / "d.zarr" / st.BOOK / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 2


def test_a_band_that_fails_discards_its_image(tmp_path: Path) -> None:
    big = np.ones((5, 6, 3), np.float16)
    layout = {"shape": [5, 6, 3], "record": {}, "chunk_rows": 2}
    with st.open_writer(tmp_path / "d.zarr", store_config()) as writer:
        driver = _ray._Driver(Sink(writer, 1, None), sparse=False, labels=False, todo=[])
        driver.take(_row(_ray._event("b", "band", {**layout, "row": 0}, big[:, :2])))
        driver.take(_row(_ray._event("b", "failed", {"source": "b", "reason": "no"}, big[:0])))
        driver.take(_row(_ray._event("c", "band", {**layout, "row": 0}, big[:, :2])))
        driver.close()  # the run stopped before c's other bands came
        assert not any((tmp_path / "d.zarr" / st.BOOK / "staging").iterdir())
    store = hc.open_store(tmp_path / "d.zarr")
    assert len(store) == 0
    assert [f["key"] for f in store.failures] == ["b"]


def _cluster(cpus: list[int], gpus: int = 0) -> SimpleNamespace:
    nodes = [{"Alive": True, "Resources": {"CPU": float(c)}} for c in cpus]
    nodes.append({"Alive": False, "Resources": {"CPU": 64.0}})  # a dead node does not count
    resources = {"CPU": float(sum(cpus)), **({"GPU": float(gpus)} if gpus else {})}
    return SimpleNamespace(cluster_resources=lambda: resources, nodes=lambda: nodes)


@pytest.mark.parametrize(
    ("cpus", "gpus", "device", "actors", "expected"),
    [
        ([2], 0, "auto", None, (1, {"num_cpus": 1}, "cpu", 1)),
        ([16, 16], 0, "auto", None, (2, {"num_cpus": 8}, "cpu", 8)),
        ([16, 8], 0, "cpu", None, (2, {"num_cpus": 6}, "cpu", 6)),
        ([16], 0, "auto", 4, (4, {"num_cpus": 2}, "cpu", 2)),
        ([32, 32], 8, "auto", None, (8, {"num_gpus": 1}, "cuda", None)),
        ([32, 32], 8, "cuda:1", 2, (2, {"num_gpus": 1}, "cuda", None)),
        ([32, 32], 8, "cpu", None, (2, {"num_cpus": 16}, "cpu", 16)),
    ],
)
def test_actor_pool_from_the_cluster(
    cpus: list[int], gpus: int, device: str, actors: int | None, expected: tuple[Any, ...]
) -> None:
    assert _ray._pool(_cluster(cpus, gpus), device, actors) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpus", "gpus", "device", "actors", "match"),
    [
        ([8], 0, "cuda", None, "the Ray cluster has no GPUs"),
        ([8], 2, "auto", 3, "3 actors need 3 GPUs; the Ray cluster has 2"),
        ([2], 0, "auto", 2, "leave no CPU for decoding; the Ray cluster has 2 CPU"),
        ([1], 0, "auto", None, "leave no CPU for decoding"),
        ([8], 0, "mps", None, "runs the model on 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_actor_pool_errors(
    cpus: list[int], gpus: int, device: str, actors: int | None, match: str
) -> None:
    with pytest.raises(HypercolumnsError, match=match):
        _ray._pool(_cluster(cpus, gpus), device, actors)  # type: ignore[arg-type]


class _TaskError(Exception):
    """Like ray.exceptions.RayTaskError: what the task raised is its ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::task failed\n  File x.py, line 1\nwhatever")
        self.cause = cause


@pytest.mark.parametrize(
    ("err", "why"),
    [
        (_TaskError(ValueError("bad value")), "ValueError: bad value"),
        (_TaskError(HypercolumnsError("no such layer\nmore")), "no such layer"),
        (
            RuntimeError(
                "The actor died ... \x1b[36mray::Map.__init__()\x1b[39m\n  File m.py\n"
                "ModelError: cannot build\n"
            ),
            "ModelError: cannot build",
        ),
        (ConnectionError("no cluster at x"), "ConnectionError: no cluster at x"),
    ],
)
def test_why_a_pipeline_failed_in_one_line(err: BaseException, why: str) -> None:
    assert _ray._why(err) == why
