"""The run into stores: inputs, results against the library, resumption, failures, bands."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from PIL import Image
from torch import nn

import hypercolumns as hc
from hypercolumns.errors import HypercolumnsError, StoreError
from hypercolumns.features.bands import BandedHypercolumns
from hypercolumns.features.columns import Align, HypercolumnExtractor
from hypercolumns.io import store as st
from hypercolumns.io.store import _book
from hypercolumns.models import weights_digest
from hypercolumns.pipeline import (
    Decoded,
    Settings,
    Source,
    _local,
    batches,
    expand_inputs,
    image_files,
    is_image_file,
    run,
)
from tests.cli.test_cli import assert_one_line_error
from tests.cli.test_cli import run as cli
from tests.conftest import HERE, TINY
from tests.io.test_store import tree_bytes
from tests.pipeline.conftest import SLOW, model_of, picture
from tests.tiny_models import tiny_hourglass, tiny_resnet, tiny_se, tiny_vgg

# -- inputs --------------------------------------------------------------------------------------


def test_expand_folders_globs_and_lists(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ["a.png", "UPPER.PNG", "sub/b.jpg", ".hidden.png", ".git/c.png", "sub/deep/d.tif"]:
        picture(data / name, (4, 4), 0)
    (data / "notes.md").write_text("not an image")
    keys = [s.key for s in expand_inputs([data])]
    assert keys == ["UPPER.PNG", "a.png", "sub/b.jpg", "sub/deep/d.tif"]
    found = expand_inputs([str(data / "**" / "*.jpg"), str(data / "sub" / "deep" / "*")])
    assert [(s.key, s.path) for s in found] == [
        ("sub/b.jpg", data / "sub" / "b.jpg"),
        ("d.tif", data / "sub" / "deep" / "d.tif"),
    ]
    listing = data / "list.txt"
    listing.write_text(f"# train split\n\nsub/b.jpg\n./a.png\n{data / 'UPPER.PNG'}\n")
    assert [(s.key, s.path.resolve()) for s in expand_inputs([listing])] == [
        ("sub/b.jpg", (data / "sub" / "b.jpg").resolve()),
        ("a.png", (data / "a.png").resolve()),
        ("UPPER.PNG", (data / "UPPER.PNG").resolve()),
    ]
    table = data / "list.csv"
    table.write_text(" Path ,mask\nsub/b.jpg,masks/b.png\na.png,\n")
    assert [(s.key, s.mask) for s in expand_inputs([table])] == [
        ("sub/b.jpg", data / "masks" / "b.png"),
        ("a.png", None),
    ]
    # the same file twice is one image
    assert len(expand_inputs([data / "a.png", data, str(data / "*.png")])) == 4


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "does not exist"),
        ("empty-glob", "matches no image files"),
        ("empty-folder", "holds no images"),
        ("csv-header", "needs a header row with a 'path' column"),
        ("same-key", "two images get the key 'a.png'"),
    ],
)
def test_expand_errors(tmp_path: Path, case: str, match: str) -> None:
    picture(tmp_path / "one" / "a.png", (4, 4), 0)
    picture(tmp_path / "two" / "a.png", (4, 4), 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("file,label\na.png,1\n")
    inputs = {
        "missing": [tmp_path / "nope.png"],
        "empty-glob": [str(tmp_path / "*.gif")],
        "empty-folder": [tmp_path / "empty"],
        "csv-header": [tmp_path / "bad.csv"],
        "same-key": [tmp_path / "one" / "a.png", tmp_path / "two" / "a.png"],
    }[case]
    with pytest.raises(HypercolumnsError, match=match):
        expand_inputs(inputs)


def test_what_an_image_file_is() -> None:
    assert is_image_file("a/B.JPEG")
    assert not is_image_file("notes.md")


def test_the_image_lister_can_stay_in_one_folder(tmp_path: Path) -> None:
    for name in ["b.png", "a.TIF", ".hidden.png", "sub/c.jpg"]:
        picture(tmp_path / name, (4, 4), 0)
    (tmp_path / "notes.md").write_text("not an image")
    assert image_files(tmp_path, recursive=False) == [tmp_path / "a.TIF", tmp_path / "b.png"]
    assert image_files(tmp_path)[-1] == tmp_path / "sub" / "c.jpg"


def test_settings_are_hashable_and_keep_their_own_kwargs() -> None:
    kwargs = {"img_size": [32, 32], "num_classes": 0}
    a = Settings(TINY, ["1", "4"], model_kwargs=kwargs, size=(8, 8))
    b = Settings(TINY, ["1", "4"], model_kwargs=dict(kwargs), size=(8, 8))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, Settings(TINY, "1,4")}) == 2
    kwargs["num_classes"] = 10
    assert a.model_kwargs == {"img_size": [32, 32], "num_classes": 0}
    with pytest.raises(TypeError):
        a.model_kwargs["num_classes"] = 1  # type: ignore[index]


def test_batches_group_by_size_and_bound_what_waits() -> None:
    def item(key: str, h: int) -> Decoded:
        return Decoded(Source(key, Path(key)), torch.zeros(3, h, 4), {})

    failed = Decoded(Source("x", Path("x")), None, {}, error="broken")
    items = [item("a", 1), item("b", 2), failed, item("c", 1), item("d", 2), item("e", 1)]
    keys = [[d.source.key for d in b] for b in batches(items, 2)]
    assert keys == [["x"], ["a", "c"], ["b", "d"], ["e"]]
    # at most hold * batch_size images wait: then the fullest batch goes as it is
    sizes = [item(str(i), h) for i, h in enumerate([1, 1, 2, 3, 1])]
    keys = [[d.source.key for d in b] for b in batches(sizes, 3, hold=1)]
    assert keys == [["0", "1"], ["2"], ["3"], ["4"]]
    # and at most max_bytes of images (each of these holds 3 * h * 4 float32 values)
    sized = [item("a", 1), item("b", 2), item("c", 1)]
    keys = [[d.source.key for d in b] for b in batches(sized, 8, max_bytes=150)]
    assert keys == [["a", "c"], ["b"]]


# -- runs ----------------------------------------------------------------------------------------


def test_dense_store_equals_the_library_and_resumes(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "hc.zarr"
    settings = Settings(TINY, "0,3,7", dtype="float16")
    calls: list[tuple[int, int]] = []
    summary = run([folder], out, settings, batch_size=2, progress=lambda *a: calls.append(a))
    assert (summary.done, summary.skipped, summary.failed, summary.banded) == (5, 0, (), 0)
    assert calls[0] == (0, 5)
    assert calls[-1] == (5, 5)
    store = hc.open_store(out)
    assert sorted(store) == ["im0.jpg", "im1.png", "im2.jpg", "im4.jpg", "sub/im3.jpg"]
    model = model_of(settings)
    for key in store:
        x, _ = hc.load_image(folder / key, model)
        expected = hc.hypercolumns(model, x, "0,3,7", dtype=torch.float16).features[0]
        np.testing.assert_allclose(store[key][:], expected.numpy(), rtol=2e-3, atol=2e-3)
        assert store.record(key)["preprocessing"]["size"] == list(x.shape[-2:])
    assert store.slices == {"0": slice(0, 4), "3": slice(4, 10), "7": slice(10, 12)}
    assert store.config["run"]["weights_sha256"] == weights_digest(model)

    before = tree_bytes(out)
    again = run([folder], out, settings, batch_size=3)
    assert (again.done, again.skipped, again.bytes_written) == (0, 5, 0)
    assert tree_bytes(out) == before
    # more inputs later: only the new ones are computed
    picture(folder / "late.png", (16, 16), 9)
    more = run([folder], out, settings)
    assert (more.done, more.skipped) == (1, 5)
    assert len(hc.open_store(out)) == 6


def test_sparse_points_do_not_depend_on_batches_or_workers(folder: Path, tmp_path: Path) -> None:
    settings = Settings(TINY, "1,4", points=7, seed=3)
    one = run([folder], tmp_path / "a.parquet", settings, batch_size=1)
    four = run([folder], tmp_path / "b.parquet", settings, batch_size=4, workers=2)
    assert one.done == four.done == 5
    a, b = hc.open_store(tmp_path / "a.parquet"), hc.open_store(tmp_path / "b.parquet")
    model = model_of(settings)
    for key in a:
        np.testing.assert_array_equal(a[key].points, b[key].points)
        np.testing.assert_allclose(a[key].features, b[key].features, rtol=1e-5, atol=1e-6)
        x, _ = hc.load_image(folder / key, model)
        pts = torch.as_tensor(a[key].points)
        expected = hc.hypercolumns(model, x, "1,4", points=pts[None]).features[0]
        np.testing.assert_allclose(a[key].features, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert len({tuple(p) for p in a[key].points.tolist()}) == 7  # distinct pixels
    other = run([folder], tmp_path / "c.parquet", Settings(TINY, "1,4", points=7, seed=4))
    assert other.done == 5
    c = hc.open_store(tmp_path / "c.parquet")
    assert any(not np.array_equal(a[k].points, c[k].points) for k in a)


def test_defaults_on_a_cpu_decode_here_one_image_at_a_time(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []

    def record(
        todo: object, extraction: object, sink: object, *, workers: int, batch_size: int
    ) -> None:
        seen.append((workers, batch_size))

    monkeypatch.setattr(_local, "run", record)
    settings = Settings(TINY, "1,4", points=7)
    run([folder], tmp_path / "a.parquet", settings, device="cpu")
    run([folder], tmp_path / "b.parquet", settings, device="cpu", workers=2, batch_size=4)
    assert seen == [(0, 1), (2, 4)]


def test_the_summary_gives_the_rate_after_the_set_up(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's rate counted the model's import and build: a short run of a small torchvision
    model reported 3.2 img/s where it keeps 20. The set-up is now counted apart."""
    model = f"{HERE / 'tiny_models.py'}:slow_to_build"
    args = [
        "extract",
        model,
        str(folder),
        "-l",
        "1,4",
        "-p",
        "5",
        "-o",
        str(tmp_path / "a.parquet"),
    ]
    code, stdout, err = cli([*args, "-f", "json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert 1.2 <= summary["setup_seconds"] < summary["seconds"]
    code, stdout, err = cli([*args[:-1], str(tmp_path / "b.parquet")], capsys)
    assert code == 0, err
    assert re.search(r"in [0-9.]+ s \(set-up [0-9.]+ s, then [0-9.]+ img/s\)$", stdout.strip())
    code, stdout, err = cli(args, capsys)  # nothing to compute: no rate
    assert stdout.strip().endswith(" s"), stdout


def test_masks_stratify_points_and_fill_the_label_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = ["path,mask"]
    for i in range(3):
        picture(data / f"im{i}.png", (24, 20), i)
        labels = np.zeros((24, 20), np.uint8)
        labels[:4] = 1  # a small label
        labels[12:, 10:] = 2
        labels[0, :] = 255  # big values are labels too
        Image.fromarray(labels).save(data / f"mask{i}.png")
        rows.append(f"im{i}.png,mask{i}.png")
    picture(data / "odd.png", (10, 10), 7)
    Image.fromarray(np.zeros((9, 10), np.uint8)).save(data / "odd_mask.png")
    rows.append("odd.png,odd_mask.png")
    (data / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "l.parquet"
    summary = run([data / "list.csv"], out, Settings(TINY, "1", points=40))
    assert summary.done == 3
    assert [(f.key, f.reason) for f in summary.failed] == [
        ("odd.png", f"mask {str(data / 'odd_mask.png')!r} is 9x10, its image 10x10")
    ]
    store = hc.open_store(out)
    for i in range(3):
        entry = store[f"im{i}.png"]
        mask = np.asarray(Image.open(data / f"mask{i}.png"))
        assert entry.labels is not None
        np.testing.assert_array_equal(entry.labels, mask[entry.points[:, 0], entry.points[:, 1]])
        assert Counter(entry.labels.tolist()) == {0: 10, 1: 10, 2: 10, 255: 10}
    assert pq.read_table(out).column_names == ["key", "y", "x", "label", "features"]
    assert store.config["run"]["labels"] is True


def test_mask_errors_name_the_mask_and_the_rows(tmp_path: Path) -> None:
    """The report's CSV3: a missing mask file was reported as a missing *image*, and a list with
    masks on some rows only said "give a mask for every image or for none", naming no row."""
    for i in range(2):
        picture(tmp_path / f"im{i}.png", (24, 20), i)
    Image.fromarray(np.zeros((24, 20), np.uint8)).save(tmp_path / "m1.png")
    (tmp_path / "gone.csv").write_text("path,mask\nim0.png,lost.png\nim1.png,m1.png\n")
    summary = run([tmp_path / "gone.csv"], tmp_path / "a.parquet", Settings(TINY, "1", points=5))
    assert [(f.key, f.reason) for f in summary.failed] == [
        ("im0.png", f"mask {str(tmp_path / 'lost.png')!r} does not exist or is not a file")
    ]
    (tmp_path / "some.csv").write_text("path,mask\nim0.png,\nim1.png,m1.png\n")
    with pytest.raises(HypercolumnsError) as err:
        run([tmp_path / "some.csv"], tmp_path / "b.parquet", Settings(TINY, "1", points=5))
    assert str(err.value) == (
        f"the inputs give masks for some images only ({str(tmp_path / 'im1.png')!r} has "
        f"{str(tmp_path / 'm1.png')!r}, {str(tmp_path / 'im0.png')!r} none); give a mask for "
        "every image or for none (a list's 'mask' column on every row)"
    )
    assert not (tmp_path / "b.parquet").exists()


def test_bad_images_are_recorded_and_skipped(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = picture(tmp_path / "full.jpg", (64, 64), 0)
    (folder / "cut.jpg").write_bytes(full.read_bytes()[:900])
    (folder / "text.png").write_text("hello")
    picture(folder / "dot.png", (1, 1), 0)  # decodes, but too small for the model
    out = tmp_path / "hc.zarr"
    args = ["extract", TINY, str(folder), "-l", "1,4", "-o", str(out), "--workers", "0"]
    code, stdout, err = cli(args, capsys)
    assert code == 1
    assert "5 image(s) written" in stdout
    assert "failed: cut.jpg: cannot read image" in err
    assert "failed: text.png: cannot read" in err
    assert "failed: dot.png:" in err
    assert err.strip().splitlines()[-1].startswith("error: 3 image(s) failed")
    store = hc.open_store(out)
    assert len(store) == 5
    assert sorted(f["key"] for f in store.failures) == ["cut.jpg", "dot.png", "text.png"]
    code, stdout, _ = cli([*args, "--format", "json"], capsys)
    summary = json.loads(stdout)
    assert (code, summary["done"], summary["skipped"], len(summary["failed"])) == (1, 0, 5, 3)


def test_unwritable_or_full_store(
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli(["extract", TINY, str(folder), "-l", "1", "-o", str(blocker / "x.zarr")],
                       capsys)  # fmt: skip
    assert_one_line_error(code, err, "is not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="is not writable"):
            run([folder], locked / "x.zarr", Settings(TINY, "1"))
    # the disk fills up at the third image: the first two stay, a rerun completes the store
    out = tmp_path / "full.zarr"
    real, seen = _book.fsync_tree, {"n": 0}

    def disk_full(root: Path) -> None:
        seen["n"] += "staging" in root.parts
        if seen["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(root)

    monkeypatch.setattr(_book, "fsync_tree", disk_full)
    with pytest.raises(StoreError, match="No space left on device; it keeps the 2 images"):
        run([folder], out, Settings(TINY, "1"), batch_size=1)
    monkeypatch.undo()
    assert len(hc.open_store(out)) == 2
    assert not (out / st.BOOK / "staging").exists()
    summary = run([folder], out, Settings(TINY, "1"))
    assert (summary.done, summary.skipped) == (3, 2)


def test_another_configuration_is_refused_unless_overwritten(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hc.zarr"
    base = ["extract", TINY, str(folder), "-o", str(out), "--workers", "0"]
    assert cli([*base, "-l", "1,4"], capsys)[0] == 0
    code, _, err = cli([*base, "-l", "1", "--dtype", "float16"], capsys)
    assert_one_line_error(code, err, 'layers: ["1", "4"] in the store, ["1"] now')
    assert 'dtype: "float32" in the store, "float16" now' in err
    assert "--overwrite" in err
    code, stdout, _ = cli([*base, "-l", "1", "--dtype", "float16", "--overwrite"], capsys)
    assert code == 0
    assert "5 image(s) written" in stdout
    assert hc.open_store(out)["im0.jpg"].dtype == np.float16


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["-o", "x.parquet"], "holds sparse hypercolumns: give points"),
        (["-o", "x.zarr", "--points", "5"], "holds dense hypercolumns"),
        (["-o", "x.parquet", "--points", "pts.csv"], "a file of points"),
        (["-o", "x.parquet", "--points", "0"], "points must be a positive count"),
        (["-o", "x.parquet", "--points", "3", "--size", "8,8"], "size sets the grid"),
        (
            ["-o", "x.npy", "--workers", "2", "--overwrite"],
            "--workers, --overwrite apply to stores",
        ),
    ],
)
def test_store_option_errors(
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    match: str,
) -> None:
    paths = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    code, _, err = cli(["extract", TINY, str(folder), "-l", "1", *paths], capsys)
    assert_one_line_error(code, err, match)


# -- bands ---------------------------------------------------------------------------------------


LAYERS = {tiny_vgg: "1,4,9", tiny_resnet: "relu,block1,block2,block3", tiny_hourglass: "1,4"}
STEPS = {tiny_vgg: 4, tiny_resnet: 16, tiny_hourglass: 4}


@pytest.mark.parametrize("factory", [tiny_vgg, tiny_resnet, tiny_hourglass])
@pytest.mark.parametrize("align", ["rf", "half-pixel"])
def test_bands_equal_the_whole_image(factory: Callable[[], nn.Module], align: Align) -> None:
    torch.manual_seed(0)
    model = factory()
    size = (83, 29)
    x = torch.randn(1, 3, *size)
    whole = HypercolumnExtractor(model, LAYERS[factory], size, align=align)(x).features[0]
    banded = BandedHypercolumns(model, LAYERS[factory], size, align=align)
    assert banded.step == STEPS[factory]
    for rows in (3, 16, 1000):
        out = torch.full_like(whole, float("nan"))
        for r0, band in banded(x, rows):
            out[:, r0 : r0 + band.shape[1]] = band
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)
    banded.check()


def test_band_starts_must_follow_the_total_stride() -> None:
    """The equality above needs slab starts on the total stride of every layer on the way,
    not only of the layers asked for: here the output has stride 1, the layers before it 4."""
    torch.manual_seed(0)
    model = tiny_hourglass()
    x = torch.randn(1, 3, 83, 29)
    whole = HypercolumnExtractor(model, "4", (83, 29))(x).features[0]
    banded = BandedHypercolumns(model, "4", (83, 29))
    banded.step = 1
    worst = max(
        float((band - whole[:, r0 : r0 + band.shape[1]]).abs().max()) for r0, band in banded(x, 16)
    )
    assert worst > 0.01


def test_bands_refuse_what_they_cannot_compute() -> None:
    torch.manual_seed(0)
    with pytest.raises(HypercolumnsError, match="pools context over the whole image"):
        BandedHypercolumns(tiny_se(), "2", (64, 32)).check()
    with pytest.raises(HypercolumnsError, match="'7' sees the whole image"):
        BandedHypercolumns(hc.load_model(TINY), "1,7", (32, 32))


@pytest.mark.parametrize("points", [None, 9])
def test_runs_compute_large_images_in_bands(tmp_path: Path, points: int | None) -> None:
    picture(tmp_path / "big.png", (150, 40), 0)
    picture(tmp_path / "small.png", (12, 12), 1)
    factory = f"{HERE / 'tiny_models.py'}:tiny_resnet"
    settings = Settings(factory, "relu,block1,block3", points=points)
    out = tmp_path / ("b.zarr" if points is None else "b.parquet")
    summary = run([tmp_path / "big.png", tmp_path / "small.png"], out, settings,
                  max_memory=600_000)  # fmt: skip
    assert summary.done == 2
    assert summary.banded == (1 if points is None else 0)  # sparse bands stay inside
    store = hc.open_store(out)
    model = model_of(settings)
    x, _ = hc.load_image(tmp_path / "big.png", model)
    if points is None:
        whole = hc.hypercolumns(model, x, "relu,block1,block3").features[0].numpy()
        np.testing.assert_allclose(store["big.png"][:], whole, rtol=1e-5, atol=1e-5)
        rows = store.record("big.png")["bands"]["rows"]
        assert rows % 16 == 0
        assert rows < 150
        assert zarr.open_array(str(out / "big.png"), mode="r").chunks[1] == np.gcd(rows, 64)
    else:
        entry = store["big.png"]
        pts = torch.as_tensor(entry.points)[None]
        whole = hc.hypercolumns(model, x, "relu,block1,block3", points=pts).features[0].numpy()
        np.testing.assert_allclose(entry.features, whole, rtol=1e-5, atol=1e-5)


def test_images_that_bands_cannot_compute_fail_with_the_reason(tmp_path: Path) -> None:
    for name, size in [("big.png", (150, 40)), ("small.png", (12, 12)), ("tall.png", (160, 40))]:
        picture(tmp_path / name, size, 0)
    summary = run([tmp_path], tmp_path / "se.zarr", Settings(f"{HERE / 'tiny_models.py'}:tiny_se",
                  "2"), max_memory=100_000)  # fmt: skip
    assert summary.done == 1
    assert [f.key for f in summary.failed] == ["big.png", "tall.png"]
    assert all("pools context over the whole image" in f.reason for f in summary.failed)


# -- interrupted runs ----------------------------------------------------------------------------


def _commits(manifest: Path) -> int:
    return manifest.read_bytes().count(b"\n") if manifest.exists() else 0


def _kill_after_commits(cmd: list[str], manifest: Path, commits: int, threads: int = 1) -> int:
    """Start ``cmd`` with PyTorch on ``threads`` threads (two: the model in two lanes), SIGKILL
    it once ``commits`` manifest lines exist; the lines then."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while _commits(manifest) < commits:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never committed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return _commits(manifest)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at _hypercolumns is not recognized")
def test_killed_dense_run_then_rerun_equals_a_clean_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    images = tmp_path / "images"
    for i in range(30):
        picture(images / f"{i:02d}.png", (20, 16), i)
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    args = ["extract", SLOW, str(images), "-l", "1,4", "--dtype", "float16", "--workers", "0",
            "--batch-size", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "hypercolumns", *args, "-o", str(killed)]
    # two threads: killed while two lanes compute (the sparse run below has none)
    committed = _kill_after_commits(cmd, killed / st.BOOK / "manifest.jsonl", 3, threads=2)
    assert 3 <= committed < 30, "the run must be killed in the middle"
    code, stdout, err = cli([*args, "-o", str(killed), "-f", "json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["skipped"] == committed
    assert cli([*args, "-o", str(clean)], capsys)[0] == 0
    a, b = hc.open_store(killed), hc.open_store(clean)
    assert sorted(a) == sorted(b) == [f"{i:02d}.png" for i in range(30)]
    for key in a:
        np.testing.assert_array_equal(a[key][:], b[key][:])
    manifest_keys = [img["key"] for c in _book.read_lines(killed / st.BOOK / "manifest.jsonl")
                     for img in c["images"]]  # fmt: skip
    assert sorted(manifest_keys) == sorted(a)  # each image committed once
    arrays = [
        k for k, v in zarr.open_group(str(killed), mode="r").members() if isinstance(v, zarr.Array)
    ]
    assert sorted(arrays) == sorted(a)  # and nothing else left in the store
    assert not (killed / st.BOOK / "staging").exists()


def _state_and_parent(pid: int) -> tuple[str, int]:
    """The process's state letter and parent, from /proc (``("X", 0)`` once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "X", 0
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    return _state_and_parent(pid)[0] not in "ZX"  # a zombie is dead, not reaped yet


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the workers die so on Linux")
def test_decoding_workers_die_with_a_killed_run(tmp_path: Path) -> None:
    """kill -9 of a run with DataLoader workers takes them at once (they outlived it by 5-8 s,
    until PyTorch's check of their parent)."""
    images = tmp_path / "images"
    for i in range(30):
        picture(images / f"{i:02d}.png", (20, 16), i)
    out = tmp_path / "w.zarr"
    cmd = [sys.executable, "-m", "hypercolumns", "extract", SLOW, str(images), "-l", "1,4",
           "--workers", "2", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while _commits(out / st.BOOK / "manifest.jsonl") < 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never committed"
            time.sleep(0.01)
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        children = [pid for pid in pids if _alive(pid) and _state_and_parent(pid)[1] == proc.pid]
        assert len(children) >= 2, children  # the two workers (and Python's helpers, if any)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 2
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children), "workers outlived the killed run"


@pytest.mark.slow
def test_killed_sparse_run_then_rerun_equals_a_clean_run(tmp_path: Path, one_thread: None) -> None:
    images = tmp_path / "images"
    for i in range(24):
        picture(images / f"{i:02d}.png", (20, 16), i)
    killed, clean = tmp_path / "killed.parquet", tmp_path / "clean.parquet"
    settings = Settings(SLOW, "1,4", points=6, dtype="float16")
    options = {"part_images": 2}
    script = (
        "from hypercolumns.pipeline import Settings, run; "
        f"run([{str(images)!r}], {str(killed)!r}, Settings({SLOW!r}, '1,4', points=6, "
        f"dtype='float16'), batch_size=1, writer_options={options!r})"
    )
    committed = _kill_after_commits([sys.executable, "-c", script],
                                    killed / st.BOOK / "manifest.jsonl", 2)  # fmt: skip
    assert 2 <= committed < 12, "the run must be killed in the middle"
    resumed = run([images], killed, settings, batch_size=1, writer_options=options)
    assert resumed.skipped == 2 * committed
    run([images], clean, settings, batch_size=1, writer_options=options)
    a, b = hc.open_store(killed), hc.open_store(clean)
    assert sorted(a) == sorted(b) == [f"{i:02d}.png" for i in range(24)]
    for key in a:
        np.testing.assert_array_equal(a[key].points, b[key].points)
        np.testing.assert_array_equal(a[key].features, b[key].features)
    rows = Counter(pq.read_table(killed, columns=["key"]).column("key").to_pylist())
    assert rows == dict.fromkeys(a, 6)  # pyarrow alone: every image once, none partial


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "threads"), [(signal.SIGTERM, "2"), (signal.SIGINT, "1")])
def test_a_signalled_run_commits_what_is_complete_and_says_so(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
    sig: signal.Signals,
    threads: str,
) -> None:
    """SIGTERM (what Slurm, Kubernetes and ``docker stop`` send) killed a sparse run at once,
    losing every image waiting for its part; now it is handled like Ctrl-C: the pending rows
    are committed, one line says what was kept, and the exit code is 128 + the signal. With two
    threads the model runs in two lanes, which stop as well."""
    images = tmp_path / "images"
    for i in range(40):
        picture(images / f"{i:02d}.png", (20, 16), i)
    out, clean = tmp_path / "signalled.parquet", tmp_path / "clean.parquet"
    args = ["extract", SLOW, str(images), "-l", "1,4", "-p", "6", "--dtype", "float16"]
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "hypercolumns", *args, "-o", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / st.BOOK).exists():
        assert proc.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.6)  # about 12 images at 0.05 s each
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    last = err.decode().strip().splitlines()[-1]
    kept = int(last.split(" keeps ")[1].split()[0])
    assert last.startswith(f"interrupted ({sig.name}): {out} keeps ")
    assert 1 <= kept < 40
    rows = Counter(pq.read_table(out, columns=["key"]).column("key").to_pylist())
    assert len(rows) == kept  # pyarrow alone: the kept images, whole
    assert set(rows.values()) == {6}
    assert cli([*args, "-o", str(out)], capsys)[0] == 0  # resumed (here: no process start)
    assert cli([*args, "-o", str(clean)], capsys)[0] == 0
    a, b = pq.read_table(out).to_pandas(), pq.read_table(clean).to_pandas()
    a, b = (t.sort_values(["key", "y", "x"]).reset_index(drop=True) for t in (a, b))
    assert a["key"].tolist() == b["key"].tolist()
    np.testing.assert_array_equal(np.stack(a["features"]), np.stack(b["features"]))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_a_signal_during_a_store_write_waits_for_it(
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
    kind: str,
) -> None:
    """SIGTERM in the middle of a store write stopped it there: Zarr's coroutines went on without
    the run and printed "Task was destroyed but it is pending!" after its last line, and a
    Parquet part being committed was dropped with all its images. The write now ends first: the
    image (dense) or the part (sparse) under way is committed, then the run stops."""
    if kind == "dense":
        method, out, extra = st.DenseSlot, tmp_path / "d.zarr", []
        name = "write"
    else:
        from hypercolumns.io.store._part import PartFile

        method, out, extra, name = PartFile, tmp_path / "s.parquet", ["-p", "5"], "finish"
    original = getattr(method, name)

    def signalled(self: object, *args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives here, in the middle of the write
        return original(self, *args, **kwargs)

    monkeypatch.setattr(method, name, signalled)
    args = ["extract", TINY, str(folder), "-l", "1,4", *extra, "--batch-size", "1", "-o", str(out)]
    code, _, err = cli(args, capsys)
    assert code == 128 + signal.SIGTERM
    kept = 1 if kind == "dense" else 5  # the first image; the one part, with every image
    assert err.strip().splitlines()[-1].startswith(f"interrupted (SIGTERM): {out} keeps {kept} ")
    assert len(hc.open_store(out)) == kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_weights_are_hashed_before_they_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing weights on a GPU copied them back to the CPU (vgg16 on an H200: 0.42 s a run);
    the run's model is hashed when built, and the digest is the CPU model's."""
    from hypercolumns.pipeline import extraction

    hashed: list[str] = []
    real = extraction.weights_digest

    def digest(model: nn.Module) -> str:
        hashed.append(next(model.parameters()).device.type)
        return real(model)

    monkeypatch.setattr(extraction, "weights_digest", digest)
    monkeypatch.setattr("hypercolumns.io.metadata.weights_digest", digest)
    ex = extraction.Extraction(Settings(TINY, "1"), device="cuda")
    config = ex.config()
    assert hashed == ["cpu"]
    assert config["run"]["weights_sha256"] == real(ex.model.cpu())
