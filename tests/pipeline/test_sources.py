"""Inputs and keys: the bugs of the adversarial run (KEY1-3, I13, I15, I18) stay fixed.

The key cases run the real command line (its entry point, in this process) and read the
store back with plain zarr, as a user would after the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError, StoreError
from hypercolumns.io.store import DenseWriter, check_key
from hypercolumns.pipeline import Settings, expand_inputs, run
from tests.cli.test_cli import run as cli
from tests.conftest import TINY
from tests.pipeline.conftest import picture

Extract = Callable[..., tuple[int, str]]


@pytest.fixture
def extract(capsys: pytest.CaptureFixture[str]) -> Extract:
    """``hypercolumns extract TINY ARGS...``: its exit code and standard error."""

    def call(*args: str | Path) -> tuple[int, str]:
        code, _, err = cli(["extract", TINY, *map(str, args)], capsys)
        return code, err

    return call


@pytest.fixture
def nested(tmp_path: Path) -> tuple[Path, Path]:
    """Folder A gives the key ``x.png`` (a file), folder B ``x.png/y.png`` (under a folder)."""
    a, b = tmp_path / "A", tmp_path / "B"
    picture(a / "x.png", (8, 8), 0)
    picture(b / "x.png" / "y.png", (8, 8), 1)
    return a, b


@pytest.mark.parametrize("order", ["folder first", "file first"])
def test_keys_that_nest_are_refused_up_front(
    nested: tuple[Path, Path], tmp_path: Path, extract: Extract, order: str
) -> None:
    """KEY1 (committing ``x.png`` deleted the committed ``x.png/y.png``, rc 0) and KEY2 (the
    other order aborted with a TypeError): both images are named, nothing is computed."""
    a, b = nested
    first, second = (b, a) if order == "folder first" else (a, b)
    out = tmp_path / "s.zarr"
    code, err = extract(first, second, "-l", "1", "-o", out)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "one a folder of the other" in lines[0]
    assert str(a / "x.png") in lines[0]
    assert str(b / "x.png" / "y.png") in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_key_that_nests_with_a_committed_one_is_refused(
    nested: tuple[Path, Path], tmp_path: Path, extract: Extract
) -> None:
    """Across runs: the committed ``x.png/y.png`` is kept, bit for bit, plain zarr reads it."""
    a, b = nested
    out = tmp_path / "s.zarr"
    assert extract(b, "-l", "1", "-o", out)[0] == 0
    before = zarr.open_group(str(out), mode="r")["x.png/y.png"][:]
    code, err = extract(a, "-l", "1", "-o", out)
    assert code == 1
    assert "already holds the image 'x.png/y.png'" in err
    group = zarr.open_group(str(out), mode="r")
    assert (group["x.png/y.png"][:] == before).all()
    assert list(hc.open_store(out)) == ["x.png/y.png"]


@pytest.mark.parametrize("how", ["list", "direct"])
def test_an_image_named_zarr_json_is_refused(tmp_path: Path, extract: Extract, how: str) -> None:
    """KEY3: it replaced the store's root metadata and the store could not be opened."""
    folder = tmp_path / "L"
    picture(folder / "zarr.png", (8, 8), 0).rename(folder / "zarr.json")
    picture(folder / "img.png", (8, 8), 1)
    (folder / "list.csv").write_text("path\nimg.png\nzarr.json\n")
    inputs = [folder / "list.csv"] if how == "list" else [folder / "zarr.json", folder / "img.png"]
    out = tmp_path / "zj.zarr"
    code, err = extract(*inputs, "-l", "1", "-o", out)
    assert code == 1
    assert "Zarr keeps its own metadata under the name 'zarr.json'" in err
    assert not out.exists()


@pytest.mark.parametrize("key", ["zarr.json", "a/zarr.json", "b/.zarray", ".zgroup"])
def test_reserved_names_are_no_keys(key: str) -> None:
    with pytest.raises(StoreError, match="Zarr keeps its own metadata"):
        check_key(key)


def test_the_writer_never_buries_or_replaces_a_committed_image(tmp_path: Path) -> None:
    """The last line of defence, below the checks of inputs: a commit that would replace a
    committed array, or nest with one, is refused and the committed one stays."""
    import numpy as np

    config = {"format": "hypercolumns-store", "format_version": 1, "kind": "dense", "run": {}}
    with DenseWriter(tmp_path / "w.zarr", config, overwrite=False) as writer:
        writer.write(hc.io.store.ImageResult("x.png/y.png", np.ones((2, 4, 4), np.float32), {}))
        for key in ("x.png", "x.png/y.png", "x.png/y.png/z.png"):
            with pytest.raises(StoreError, match=r"holds the committed image 'x\.png/y\.png'"):
                writer.write(hc.io.store.ImageResult(key, np.zeros((2, 4, 4), np.float32), {}))
    assert (zarr.open_group(str(tmp_path / "w.zarr"), mode="r")["x.png/y.png"][:] == 1).all()


def test_a_glob_over_symlink_loops_follows_each_folder_once(tmp_path: Path) -> None:
    """I13: ``glob(recursive=True)`` followed both loops, its matches growing exponentially."""
    root = tmp_path / "loopdir"
    picture(root / "a.png", (4, 4), 0)
    picture(root / "sub" / "b.png", (4, 4), 1)
    (root / "sub" / "up").symlink_to("..")
    (root / "self").symlink_to(".")
    found = expand_inputs([f"{root}/**/*.png"])
    assert sorted(s.key for s in found) == ["a.png", "sub/b.png"]


def test_globs_match_like_the_shell(tmp_path: Path) -> None:
    for name in ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.png", ".hidden.png", "ab1.png"]:
        picture(tmp_path / name, (4, 4), 0)

    def keys(pattern: str) -> list[str]:
        return sorted(s.key for s in expand_inputs([f"{tmp_path}/{pattern}"]))

    assert keys("*.png") == ["a.png", "ab1.png"]
    assert keys("**/*.png") == ["a.png", "ab1.png", "sub/c.png", "sub/deep/d.png"]
    assert keys("sub/**/*.png") == ["c.png", "deep/d.png"]
    assert keys("a?1.png") == ["ab1.png"]
    assert keys("[ab]*.*") == ["a.png", "ab1.png", "b.jpg"]
    with pytest.raises(HypercolumnsError, match="matches no image files"):
        keys("*.tif")


def test_a_symlink_loop_file_is_one_failed_image(tmp_path: Path) -> None:
    """I15: ``Path.resolve`` raised on the loop and the whole run stopped before any image."""
    folder = tmp_path / "in"
    picture(folder / "ok.png", (8, 8), 0)
    (folder / "l1.png").symlink_to("l2.png")
    (folder / "l2.png").symlink_to("l1.png")
    summary = run([folder], tmp_path / "s.parquet", Settings(model=TINY, layers=(1,), points=4))
    assert summary.done == 1
    assert sorted(f.key for f in summary.failed) == ["l1.png", "l2.png"]
    assert all("ymbolic links" in f.reason or "loop" in f.reason for f in summary.failed)


def test_an_unreadable_subfolder_is_a_failed_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I18: ``os.walk`` skipped it silently. Root ignores permissions, so listing the folder is
    made to fail as it does for other users (``PermissionError``)."""
    folder = tmp_path / "in"
    picture(folder / "ok.png", (8, 8), 0)
    picture(folder / "locked" / "x.png", (8, 8), 1)
    scandir = os.scandir

    def guarded(path: int | str | os.PathLike[str] = ".") -> object:
        if not isinstance(path, int) and Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    summary = run([folder], tmp_path / "s.parquet", Settings(model=TINY, layers=(1,), points=4))
    assert summary.done == 1
    assert [f.key for f in summary.failed] == ["locked"]
    assert "cannot be listed, so its images are left out" in summary.failed[0].reason
