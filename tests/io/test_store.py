"""On-disk stores: round trips with and without this package, commits, recovery, refusals."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

import hypercolumns as hc
from hypercolumns.errors import StoreError
from hypercolumns.io import store as st
from hypercolumns.io.store import _book

CHANNELS = {"a": [0, 3], "b": [3, 5]}


def config(kind: str = "dense", **run: Any) -> dict[str, Any]:
    return {
        "format": st.FORMAT,
        "format_version": st.FORMAT_VERSION,
        "kind": kind,
        "run": {"model": "m", "layers": ["a", "b"], "dtype": "float16", "labels": False, **run},
        "channels": CHANNELS,
    }


def dense(key: str, h: int = 70, w: int = 9, seed: int = 0) -> st.ImageResult:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((5, h, w)).astype(np.float16)
    return st.ImageResult(key, features, record={"source": f"/data/{key}"})


def sparse(key: str, n: int = 6, seed: int = 0, labels: bool = False) -> st.ImageResult:
    rng = np.random.default_rng(seed)
    return st.ImageResult(
        key,
        rng.standard_normal((n, 5)).astype(np.float16),
        points=rng.integers(0, 50, (n, 2)).astype(np.int32),
        labels=rng.integers(0, 3, n).astype(np.int32) if labels else None,
        record={"source": f"/data/{key}"},
    )


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (but the lock) and its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def test_dense_round_trip_with_and_without_the_package(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    results = [dense("a.png"), dense("sub/b.jpg", h=3, w=130, seed=1), dense("sub/deep/c", seed=2)]
    with st.open_writer(path, config()) as writer:
        for r in results:
            writer.write(r)
    store = hc.open_store(path)
    assert isinstance(store, st.DenseStore)
    assert list(store) == [r.key for r in results]
    assert store.slices == {"a": slice(0, 3), "b": slice(3, 5)}
    for r in results:
        np.testing.assert_array_equal(store[r.key][:], r.features)
        assert store.record(r.key)["source"] == f"/data/{r.key}"
        assert store.record(r.key)["shape"] == list(r.features.shape)
    # zarr alone: the run configuration, one array per key with its record
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["hypercolumns"]["run"]["layers"] == ["a", "b"]
    for r in results:
        array = group[r.key]
        assert isinstance(array, zarr.Array)
        np.testing.assert_array_equal(array[:], r.features)
        assert array.attrs["hypercolumns"]["key"] == r.key
        assert array.chunks[1:] == (min(r.features.shape[1], 64), min(r.features.shape[2], 64))
    with pytest.raises(KeyError):
        store["missing"]


def test_sparse_round_trip_with_and_without_the_package(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    cfg = config("sparse", labels=True)
    results = [sparse(f"k{i}", n=4 + i, seed=i, labels=True) for i in range(5)]
    with st.open_writer(path, cfg, part_images=2) as writer:
        for r in results:
            writer.write(r)
    assert sorted(p.name for p in path.glob("*.parquet")) == [
        "part-000000.parquet", "part-000001.parquet", "part-000002.parquet"
    ]  # fmt: skip
    store = hc.open_store(path)
    assert isinstance(store, st.SparseStore)
    assert len(store) == 5
    for r in results:
        entry = store[r.key]
        np.testing.assert_array_equal(entry.features, r.features)
        assert entry.features.dtype == np.float16
        np.testing.assert_array_equal(entry.points, r.points)
        assert entry.labels is not None
        np.testing.assert_array_equal(entry.labels, r.labels)
    # pyarrow alone: the data set, one row group per image, configuration in the metadata
    table = pq.read_table(path)
    assert table.column_names == ["key", "y", "x", "label", "features"]
    assert table.num_rows == sum(len(r.features) for r in results)
    meta = pq.read_schema(path / "part-000001.parquet").metadata
    assert json.loads(meta[b"hypercolumns"])["run"]["labels"] is True
    assert [i["key"] for i in json.loads(meta[b"hypercolumns.images"])] == ["k2", "k3"]
    assert pq.ParquetFile(path / "part-000001.parquet").metadata.num_row_groups == 2
    # pandas alone
    frame = pd.read_parquet(path)
    for r in results:
        rows = frame[frame["key"] == r.key]
        np.testing.assert_array_equal(np.stack(rows["features"].to_list()), r.features)
        np.testing.assert_array_equal(rows[["y", "x"]].to_numpy(), r.points)


def test_sparse_parts_are_written_without_pyarrows_converters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pa.array`` (and ``pa.table``, ``pa.scalar``) import pandas on their first call: about
    2 s of CPU in every run's writing thread, beside the model. Parts are built from buffers."""
    import pyarrow as pa

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a pyarrow converter was called")

    for name in ("array", "table", "scalar", "repeat", "chunked_array"):
        monkeypatch.setattr(pa, name, refused)
    results = [sparse("ü/ключ.png", labels=True), sparse("b", n=3, seed=1, labels=True)]
    with st.open_writer(tmp_path / "s.parquet", config("sparse", labels=True)) as writer:
        for r in results:
            writer.write(r)
    monkeypatch.undo()
    store = hc.open_store(tmp_path / "s.parquet")
    for r in results:
        np.testing.assert_array_equal(store[r.key].features, r.features)
        np.testing.assert_array_equal(store[r.key].points, r.points)
        np.testing.assert_array_equal(store[r.key].labels, r.labels)
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column("key").to_pylist() == ["ü/ключ.png"] * 6 + ["b"] * 3


def test_sparse_without_labels_has_no_label_column(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    with st.open_writer(path, config("sparse")) as writer:
        writer.write(sparse("a"))
        with pytest.raises(StoreError, match="has point labels, but this store has no"):
            writer.write(sparse("b", labels=True))
    assert pq.read_table(path).column_names == ["key", "y", "x", "features"]
    assert hc.open_store(path)["a"].labels is None


def test_reopening_continues_and_keeps_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    with st.open_writer(path, config()) as writer:
        writer.write(dense("a"))
        writer.fail("bad", "/data/bad", "broken")
    before = tree_bytes(path)
    with st.open_writer(path, config()) as writer:
        assert writer.done == {"a"}
    assert tree_bytes(path) == before
    with st.open_writer(path, config()) as writer:
        writer.write(dense("bad"))
    store = hc.open_store(path)
    assert list(store) == ["a", "bad"]
    assert store.failures == []  # the image failed once, then made it


def test_failures_are_recorded_until_the_image_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    with st.open_writer(path, config()) as writer:
        writer.fail("x.png", "/data/x.png", "cannot read")
        writer.fail("x.png", "/data/x.png", "still cannot read")
    failures = hc.open_store(path).failures
    assert [(f["key"], f["reason"]) for f in failures] == [("x.png", "still cannot read")]


def test_torn_manifest_line_is_no_commit(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    with st.open_writer(path, config()) as writer:
        writer.write(dense("a"))
    manifest = path / st.BOOK / "manifest.jsonl"
    line = manifest.read_bytes()
    with manifest.open("ab") as fh:
        fh.write(line.replace(b'"a"', b'"b"')[:-20])  # a crash in the middle of a commit
    assert list(hc.open_store(path)) == ["a"]
    with st.open_writer(path, config()) as writer:
        assert writer.done == {"a"}
        writer.write(dense("b", seed=5))
    assert manifest.read_bytes().count(b"\n") == 2
    np.testing.assert_array_equal(hc.open_store(path)["b"][:], dense("b", seed=5).features)


def test_leftovers_of_a_crash_are_ignored_then_replaced(tmp_path: Path) -> None:
    """What a run killed between writing and committing leaves: staging files, a dense array
    moved into place without its commit, a Parquet part without its commit."""
    path = tmp_path / "d.zarr"
    writer = st.open_writer(path, config())
    writer.write(dense("a"))
    slot = writer.begin("b", (5, 70, 9), "float16", {})
    slot.write(0, dense("b", seed=9).features)
    os.rename(slot.dir, path / "b")  # killed after moving the array into place, before the commit
    (path / st.BOOK / "staging" / "junk").mkdir()
    writer._release()  # the process is gone: nothing else is cleaned
    assert list(hc.open_store(path)) == ["a"]
    with st.open_writer(path, config()) as writer:
        assert writer.done == {"a"}
        assert list((path / st.BOOK / "staging").iterdir()) == []
        writer.write(dense("b"))
    np.testing.assert_array_equal(hc.open_store(path)["b"][:], dense("b").features)

    spath = tmp_path / "s.parquet"
    with st.open_writer(spath, config("sparse"), part_images=1) as writer:
        writer.write(sparse("a"))
    shutil.copy(spath / "part-000000.parquet", spath / "part-000001.parquet")  # uncommitted
    assert list(hc.open_store(spath)) == ["a"]
    with st.open_writer(spath, config("sparse"), part_images=1) as writer:
        assert not (spath / "part-000001.parquet").exists()  # removed: pyarrow sees no duplicate
        writer.write(sparse("b"))
    assert pq.read_table(spath).column("key").to_pylist().count("a") == len(sparse("a").features)
    assert list(hc.open_store(spath)) == ["a", "b"]


def test_a_failed_write_leaves_the_store_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.zarr"
    real = _book.fsync_tree
    calls = {"n": 0}

    def disk_full(root: Path) -> None:
        calls["n"] += "staging" in root.parts
        if calls["n"] == 2:  # the second image
            raise OSError(errno.ENOSPC, "No space left on device")
        real(root)

    def write_two() -> None:
        with st.open_writer(path, config()) as writer:
            writer.write(dense("a"))
            writer.write(dense("b"))

    monkeypatch.setattr(_book, "fsync_tree", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_two()
    monkeypatch.undo()
    assert list(hc.open_store(path)) == ["a"]
    assert not (path / st.BOOK / "staging").exists()
    with st.open_writer(path, config()) as writer:  # the lock was released
        writer.write(dense("b"))
    assert list(hc.open_store(path)) == ["a", "b"]


def test_another_configuration_is_refused_with_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    with st.open_writer(path, config()) as writer:
        writer.write(dense("a"))
    with pytest.raises(StoreError, match=r"layers: \[\"a\", \"b\"\] in the store, \[\"a\"\] now"):
        st.open_writer(path, config(layers=["a"]))
    differ = r'\(model: "m" in the store, "n" now; dtype: "float16" in the store, "float32" now\)'
    with pytest.raises(StoreError, match=differ):
        st.open_writer(path, config(dtype="float32", model="n"))
    with st.open_writer(path, config(layers=["a"]), overwrite=True) as writer:
        assert writer.done == set()
    assert len(hc.open_store(path)) == 0
    assert hc.open_store(path).config["run"]["layers"] == ["a"]


def test_only_stores_are_written_or_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "x.zarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="exists and is not a hypercolumns store"):
            st.open_writer(folder, config(), overwrite=overwrite)
    assert (folder / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "e.zarr"
    empty.mkdir()
    st.open_writer(empty, config()).close()
    assert hc.open_store(empty).kind == "dense"
    with pytest.raises(StoreError, match=r"a sparse store is a folder named NAME\.parquet"):
        st.open_writer(tmp_path / "s.zarr", config("sparse"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot write store"):
        st.open_writer(blocker / "d.zarr", config())


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    with st.open_writer(path, config()):
        with pytest.raises(StoreError, match="another run is writing"):
            st.open_writer(path, config())
        with pytest.raises(StoreError, match="another run is writing"):
            st.open_writer(path, config(), overwrite=True)
    st.open_writer(path, config()).close()


def test_open_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"name it \.zarr or \.parquet"):
        hc.open_store(tmp_path / "x.h5")
    with pytest.raises(StoreError, match="does not exist"):
        hc.open_store(tmp_path / "x.zarr")
    (tmp_path / "y.zarr").mkdir()
    with pytest.raises(StoreError, match="not a hypercolumns store"):
        hc.open_store(tmp_path / "y.zarr")
    # a part file of a store (the report's RB4: "store '...part-000000.parquet' does not exist")
    path = tmp_path / "s.parquet"
    with st.open_writer(path, config("sparse")) as writer:
        writer.write(sparse("a"))
    part = next(path.glob("*.parquet"))
    with pytest.raises(StoreError) as err:
        hc.open_store(part)
    assert str(err.value) == (
        f"{str(part)!r} is a file inside the store {str(path)!r}; open the store itself, whose "
        "listing holds committed images only"
    )


@pytest.mark.parametrize("key", ["", "a//b", "../a", "a/./b", "_hypercolumns/x", "a\\b"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(StoreError, match="cannot be an image key"):
        st.check_key(key)


def test_writes_check_shapes(tmp_path: Path) -> None:
    with st.open_writer(tmp_path / "d.zarr", config()) as writer:
        with pytest.raises(StoreError, match=r"takes \(C, H, W\)"):
            writer.write(sparse("a"))
        slot = writer.begin("a", (5, 4, 4), "float32", {})
        with pytest.raises(StoreError, match="does not fit image"):
            slot.write(2, np.zeros((5, 3, 4), np.float32))
        with pytest.raises(StoreError, match="0 of 4 rows written"):
            writer.commit(slot)
    with (
        st.open_writer(tmp_path / "s.parquet", config("sparse")) as writer,
        pytest.raises(StoreError, match=r"takes \(N, C\)"),
    ):
        writer.write(dense("a"))
