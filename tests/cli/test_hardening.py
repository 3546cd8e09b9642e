"""Issue 14: the rough edges of the reliability report, through the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.cli.test_cli import assert_one_line_error, image, run
from tests.conftest import TINY


@pytest.mark.parametrize("budget", ["0", "-1GB", "0.0001B", "nan"])
@pytest.mark.parametrize("out", ["x.npy", "x.zarr"])
def test_non_positive_memory_budgets_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: str, out: str
) -> None:
    img = image(tmp_path)
    code, _, err = run(
        ["extract", TINY, str(img), "-l", "1", "-o", str(tmp_path / out), "--max-memory", budget],
        capsys,
    )
    assert_one_line_error(code, err, "--max-memory must be a positive size")
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("tpu", "unknown device 'tpu'"),
        ("meta", "cannot run models"),
        *([] if torch.cuda.is_available() else [("cuda", "finds no CUDA device")]),
        *([] if torch.cuda.is_available() else [("cuda:1", "finds no CUDA device")]),
    ],
)
def test_unusable_devices_are_one_line_before_the_store_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, match: str
) -> None:
    img = image(tmp_path)
    out = tmp_path / "s.zarr"
    code, _, err = run(
        ["extract", TINY, str(img), "-l", "1", "-o", str(out), "--device", device], capsys
    )
    assert_one_line_error(code, err, match)
    assert not out.exists()


def test_library_budgets_must_be_positive(tmp_path: Path) -> None:
    from hypercolumns import pipeline
    from hypercolumns.errors import OptionError
    from hypercolumns.io.files import extract_to_file
    from hypercolumns.pipeline import Settings
    from tests.tiny_models import tiny

    img = image(tmp_path)
    with pytest.raises(OptionError, match="max_bytes must be a positive"):
        extract_to_file(tiny(), [img], "1", tmp_path / "x.npy", max_bytes=0)
    with pytest.raises(OptionError, match="max_memory must be a positive"):
        pipeline.run([img], tmp_path / "s.zarr", Settings(model=TINY, layers="1"), max_memory=-1)
    with pytest.raises(OptionError, match="unknown device"):
        pipeline.run([img], tmp_path / "s.zarr", Settings(model=TINY, layers="1"), device="tpu")
    assert not (tmp_path / "s.zarr").exists()


def test_a_killed_single_file_write_is_cleaned_up_by_the_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    out = tmp_path / "x.npy"
    writer = (
        "import sys, time\nfrom pathlib import Path\nfrom hypercolumns._atomic import staged\n"
        "with staged(Path(sys.argv[1])) as (tmp,):\n"
        "    tmp.write_bytes(b'half')\n    print(tmp, flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    killed = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed.exists()
    assert killed.name.startswith(".x.npy.")
    from hypercolumns._atomic import writer_tag

    mine = tmp_path / f".x.npy.{writer_tag()}-abcdefgh.tmp"  # a live writer (this process)
    other = tmp_path / ".x.npy.somethingelse.tmp"  # not a name staged() makes
    cousin = tmp_path / f".y.npy.{writer_tag().split('-')[0]}-999999999-abcdefgh.tmp"
    for path in (mine, other, cousin):
        path.write_bytes(b"")
    code, _, err = run(["extract", TINY, str(image(tmp_path)), "-l", "1", "-o", str(out)], capsys)
    assert code == 0, err
    assert not killed.exists()
    assert mine.exists()
    assert other.exists()
    assert cousin.exists()
    assert out.exists()


def test_the_creation_race_of_a_store_says_another_run_creates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hypercolumns.io.store import write

    img = image(tmp_path)
    out = tmp_path / "s.zarr"
    real = write._book.fsync_tree
    raced: list[Path] = []

    def fsync_tree(path: Path) -> None:  # the other run renames its store in first
        real(path)
        if ".new-" in path.name and not raced:
            raced.append(path)
            config = json.loads((path / "_hypercolumns" / "config.json").read_text())
            write.open_writer(out, config).close()

    monkeypatch.setattr(write._book, "fsync_tree", fsync_tree)
    code, _, err = run(["extract", TINY, str(img), "-l", "1", "-o", str(out)], capsys)
    assert_one_line_error(code, err, "another run is creating store")
    assert raced
    assert not raced[0].exists()
    assert (out / "_hypercolumns" / "config.json").is_file()


@pytest.mark.parametrize(("header", "swap"), [("y,x", False), ("x,y", True), ('"y","x"', False)])
def test_a_points_csv_may_have_a_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str, swap: bool
) -> None:
    import numpy as np

    pts = tmp_path / "p.csv"
    pts.write_text(f"{header}\n1,2\n3,4\n")
    out = tmp_path / "p.npy"
    code, _, err = run(
        ["extract", TINY, str(image(tmp_path)), "-l", "1", "--points", str(pts), "-o", str(out)],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "p.npy.json").read_text())
    expected = [[2, 1], [4, 3]] if swap else [[1, 2], [3, 4]]
    assert meta["points"]["coordinates"] == [expected]
    assert np.load(out).shape[:2] == (1, 2)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("obj.json", '{"y": 1}', "must be a JSON list of [y, x] pairs"),
        ("str.json", '"abc"', "must be a JSON list of [y, x] pairs"),
        ("nested.json", '[{"y": 1, "x": 2}]', "must be a JSON list of [y, x] pairs"),
        ("hdr.csv", "row,col\n1,2\n", "is not 'y,x'"),
    ],
)
def test_points_files_of_the_wrong_form_say_what_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, match: str
) -> None:
    pts = tmp_path / name
    pts.write_text(text)
    code, _, err = run(
        [
            "extract",
            TINY,
            str(image(tmp_path)),
            "-l",
            "1",
            "-p",
            str(pts),
            "-o",
            str(tmp_path / "p.npy"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, match)
    assert "unexpected" not in err


def _figure_commands(img: str) -> dict[str, list[str]]:
    return {
        "extract": ["extract", TINY, img, "-l", "1"],
        "show": ["show", TINY, img, "--layer", "1", "--channel", "0"],
        "draw rf": ["draw", "rf", TINY, img, "--layer", "4", "--unit", "2,3"],
        "erf": ["erf", TINY, "--layer", "3", "-s", "16", "-n", "2"],
        "draw conv": ["draw", "conv", "--kernel", "3"],
        "cluster": ["cluster", TINY, img, "--layers", "0,3", "-k", "2"],
    }


@pytest.mark.parametrize("command", ["extract", "show", "draw rf", "erf", "draw conv", "cluster"])
def test_an_output_under_a_file_fails_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    args = _figure_commands(str(image(tmp_path, size=(32, 32))))[command]
    out = blocker / ("x.npy" if command == "extract" else "x.png")
    code, _, err = run([*args, "-o", str(out)], capsys)
    assert_one_line_error(code, err, "is not a folder")
    assert "unexpected" not in err


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root, and no setpriv"
)
@pytest.mark.parametrize("command", ["extract", "show", "erf"])
def test_an_unwritable_folder_is_one_line_before_the_work(tmp_path: Path, command: str) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    args = _figure_commands(str(image(tmp_path, size=(32, 32))))[command]
    out = ro / ("x.npy" if command == "extract" else "x.png")
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    prefix = drop if os.geteuid() == 0 else []
    res = subprocess.run(
        [*prefix, sys.executable, "-m", "hypercolumns", *args, "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert_one_line_error(res.returncode, res.stderr, f"the folder {str(ro)!r} is not writable")
    assert list(ro.iterdir()) == []


def _big_png(path: Path, side: int = 2000) -> Path:
    from PIL import Image

    Image.new("RGB", (side, side)).save(path)  # a few KB on disk, 48 MB as a float tensor
    return path


@pytest.fixture
def no_big_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if big.png is ever decoded."""
    from hypercolumns import images

    real = images._read

    def read(path: Path) -> Any:
        assert path.name != "big.png", "big.png was decoded"
        return real(path)

    monkeypatch.setattr(images, "_read", read)


def test_a_store_refuses_an_image_over_the_budget_before_decoding_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_big_decoding: None
) -> None:
    _big_png(tmp_path / "big.png")
    image(tmp_path, "small.png")
    out = tmp_path / "s.parquet"
    code, out_text, err = run(
        ["extract", TINY, str(tmp_path), "-l", "1", "-p", "5", "-o", str(out),
         "--max-memory", "10MB"],
        capsys,
    )  # fmt: skip
    assert code == 1
    assert "1 image(s) written" in out_text
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1
    assert failed[0].startswith("failed: big.png: decoding image")
    assert "2000x2000 pixels" in failed[0]
    assert "--max-memory" in failed[0]


def test_a_single_file_refuses_an_image_over_the_budget_before_decoding_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_big_decoding: None
) -> None:
    big = _big_png(tmp_path / "big.png")
    out = tmp_path / "x.npy"
    code, _, err = run(
        ["extract", TINY, str(big), "-l", "1", "-p", "5", "-o", str(out), "--max-memory", "10MB"],
        capsys,
    )
    assert_one_line_error(code, err, "decoding 'big.png' would take about 0.05 GB")
    assert "over --max-memory 10MB" in err
    assert not out.exists()


def test_resize_cannot_slip_past_the_memory_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image(tmp_path)  # 16x12
    out = tmp_path / "r.npy"
    code, _, err = run(  # dense: the output is what is too large
        ["extract", TINY, str(img), "-l", "1", "--resize", "50000", "-o", str(out)], capsys
    )
    assert_one_line_error(code, err, "the output would take about")
    assert "over --max-memory 4GB" in err
    code, _, err = run(  # sparse: the decoded input is
        ["extract", TINY, str(img), "-l", "1", "-p", "3", "--resize", "50000", "-o", str(out)],
        capsys,
    )
    assert_one_line_error(code, err, "resized to 66667x50000")
    assert "over --max-memory 4GB" in err
    assert not out.exists()


def test_a_store_failure_names_the_runs_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image(tmp_path)
    out = tmp_path / "s.zarr"
    code, _, err = run(
        ["extract", TINY, str(img), "-l", "1,4", "--size", "2000,2000", "--max-memory", "10MB",
         "-o", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1
    assert "memory budget of 0.01 GiB (--max-memory)" in failed[0]
    assert "max_bytes" not in err
    assert not list(out.glob("img.png*"))


def test_the_library_names_its_own_budget(tmp_path: Path) -> None:
    from hypercolumns.errors import OutputTooLargeError
    from hypercolumns.images import load_image

    big = _big_png(tmp_path / "big.png", 500)
    with pytest.raises(OutputTooLargeError, match=r"allowed \(max_bytes\)") as info:
        load_image(big, max_bytes=1_000_000)
    assert info.value.need == 500 * 500 * 3 * 4
    x, _ = load_image(big, max_bytes=3_000_000)
    assert x.shape == (1, 3, 500, 500)


def test_the_same_model_file_by_another_path_continues_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    img = image(tmp_path)
    out = tmp_path / "s.parquet"
    here = Path(TINY.rpartition(":")[0])
    monkeypatch.chdir(here.parent.parent)
    relative = f"{here.parent.name}/{here.name}:tiny"
    code, _, err = run(["extract", relative, str(img), "-l", "1", "-p", "4", "-o", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    code, text, err = run(["extract", TINY, str(img), "-l", "1", "-p", "4", "-o", str(out)],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert "0 image(s) written (1 already there)" in text
    stored = json.loads((out / "_hypercolumns" / "config.json").read_text())
    assert stored["run"]["model"] == relative  # kept as given
    other = TINY.replace(":tiny", ":tiny_vgg")
    code, _, err = run(["extract", other, str(img), "-l", "1", "-p", "4", "-o", str(out)], capsys)
    assert_one_line_error(code, err, "another configuration")


def test_a_committed_array_removed_by_hand_is_noticed_on_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    image(src, "a.png")
    image(src, "b.png")
    out = tmp_path / "s.zarr"
    args = ["extract", TINY, str(src), "-l", "1", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert "warning" not in err
    code, _, err = run(args, capsys)  # nothing changed: no warning
    assert code == 0
    assert "warning" not in err
    shutil.rmtree(out / "a.png")
    code, text, err = run(args, capsys)
    assert code == 0
    assert "0 image(s) written (2 already there)" in text
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1
    assert "1 committed image(s) are missing from it (removed by hand?): a.png;" in warned[0]
    assert "--overwrite" in warned[0]
    assert not (out / "a.png").exists()  # never recomputed into the store silently


def test_an_image_replaced_under_its_key_is_noticed_on_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hypercolumns import pipeline
    from hypercolumns.errors import StoreWarning
    from hypercolumns.pipeline import Settings

    src = tmp_path / "in"
    src.mkdir()
    image(src, "a.png")
    image(src, "b.png")
    out = tmp_path / "s.parquet"
    args = ["extract", TINY, str(src), "-l", "1", "-p", "4", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    image(src, "a.png", size=(20, 20))  # another picture under the same name
    code, text, err = run(args, capsys)
    assert code == 0
    assert "0 image(s) written (2 already there)" in text
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1
    assert "1 image file(s) changed since they were committed" in warned[0]
    assert ": a.png;" in warned[0]
    with pytest.warns(StoreWarning, match="changed since they were committed"):
        pipeline.run([src], out, Settings(model=TINY, layers="1", points=4))


def _frames_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and "frames" in line]


def test_multi_frame_images_warn_once_each_in_single_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """I9: an animated GIF and a multi-page TIFF gave their first frame silently."""
    from safetensors import safe_open

    from tests.test_images import multi_frame

    gif, tif = multi_frame(tmp_path / "anim.gif"), multi_frame(tmp_path / "multi.tif", 2)
    png = image(tmp_path, "still.png", (24, 20))
    out = tmp_path / "frames.safetensors"
    code, _, err = run(["extract", TINY, str(tif), str(gif), str(png), "-l", "1", "-o",
                        str(out)], capsys)  # fmt: skip
    assert code == 0, err
    warned = _frames_warnings(err)
    assert len(warned) == 2, err
    assert f"'{tif}' has 2 frames (TIFF pages); only the first is used" in warned[0]
    assert f"'{gif}' has 3 frames (GIF animation); only the first is used" in warned[1]
    with safe_open(str(out), "pt") as fh:
        meta = json.loads(fh.metadata()["hypercolumns"])
    assert {i["key"]: i["frames"] for i in meta["images"]} == {"multi": 2, "anim": 3, "still": 1}


@pytest.mark.parametrize("workers", [0, 1])
def test_multi_frame_images_warn_once_each_in_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    """I9 in a store: decoding (in worker processes too) notes it in the image's record; the
    process writing the store shows one line per image."""
    import hypercolumns as hc
    from tests.test_images import multi_frame

    src = tmp_path / "in"
    src.mkdir()
    multi_frame(src / "anim.gif")
    image(src, "still.png", (24, 20))
    out = tmp_path / "s.parquet"
    code, _, err = run(["extract", TINY, str(src), "-l", "1", "-p", "4", "-o", str(out),
                        "--workers", str(workers)], capsys)  # fmt: skip
    assert code == 0, err
    warned = _frames_warnings(err)
    assert len(warned) == 1, err
    assert "anim.gif' has 3 frames (GIF animation); only the first is used" in warned[0]
    store = hc.open_store(out)
    assert store.record("anim.gif")["preprocessing"]["frames"] == 3
    assert store.record("anim.gif")["warnings"] == [warned[0].removeprefix("warning: ")]
    assert store.record("still.png")["preprocessing"]["frames"] == 1
    assert "warnings" not in store.record("still.png")


@pytest.mark.parametrize("out", ["s.zarr", "x.npy"])
def test_no_bar_leaves_an_empty_line_in_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    """Found in the report's rerun: off a terminal (a Slurm log, a pipe) Rich draws no bar but
    left an empty line on stderr where its transient bar had been."""
    images = [str(image(tmp_path, name)) for name in ("a.png", "b.png", "c.png")]
    code, stdout, err = run(["extract", TINY, *images, "-l", "1", "-o", str(tmp_path / out)],
                            capsys)  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert ("3 image(s) written" if out.endswith(".zarr") else "wrote") in stdout


def test_file_names_are_shown_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's I11, and brackets: a newline in a file name split a failure's line in two,
    and a name like ``[bold]x.png`` was taken as Rich markup (shown as ``x.png``, bold)."""
    folder = tmp_path / "in"
    folder.mkdir()
    image(folder, "ok.png")
    for name in ("[bold]x.png", "new\nline.png"):
        (folder / name).write_text("not an image")
    out = tmp_path / "[s].parquet"
    code, stdout, err = run(["extract", TINY, str(folder), "-l", "1", "-p", "5", "-o", str(out)],
                            capsys)  # fmt: skip
    assert code == 1
    assert stdout.startswith(f"{out}: 1 image(s) written")
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith(f"failed: [bold]x.png: cannot read '{folder}/[bold]x.png'")
    assert lines[1].startswith(f"failed: new\\nline.png: cannot read '{folder}/new\\nline.png'")
    assert lines[2].startswith(f"error: 2 image(s) failed (listed in {out}/_hypercolumns/")


def test_more_decoding_processes_than_cpus_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's LD4: PyTorch's paragraph about too many DataLoader workers, twice."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    images = [str(image(tmp_path, f"{i}.png")) for i in range(3)]
    code, _, err = run(["extract", TINY, *images, "-l", "1", "-p", "5", "--workers", "2",
                        "-o", str(tmp_path / "s.parquet")], capsys)  # fmt: skip
    assert code == 0, err
    assert err.strip().splitlines() == [
        "warning: 2 decoding processes (workers, --workers) for the 1 CPU(s) this process may "
        "use: they compete with the model for them"
    ]
