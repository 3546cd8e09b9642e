from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hypercolumns.cli import app, main
from tests.conftest import TINY

LAYER_KEYS = {"index", "name", "type", "shape", "rf_size", "stride", "rf_center", "global",
              "aligned", "uniform"}  # fmt: skip


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point (errors as one line, exit codes) in this process."""
    argv = sys.argv
    sys.argv = ["hypercolumns", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert match in lines[0], lines[0]


def image(tmp_path: Path, name: str = "img.png", size: tuple[int, int] = (16, 12)) -> Path:
    rng = np.random.default_rng(len(name))
    arr = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("command", ["layers", "extract", "show", "demo"])
def test_help(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0
    assert "Usage" in res.output
    expected = {"layers": "--input-size", "extract": "--points", "show": "--grid",
                "demo": "--download"}  # fmt: skip
    assert expected[command] in res.output


def test_module_help_runs_as_a_program() -> None:
    res = subprocess.run([sys.executable, "-m", "hypercolumns", "--help"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert res.returncode == 0
    for command in ("layers", "extract", "show", "demo"):
        assert command in res.stdout


def test_layers_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["layers", TINY, "--input-size", "16"], capsys)
    assert code == 0
    assert "Conv2d" in out
    assert "global" in out
    code, out, _ = run(["layers", TINY, "-s", "16,12", "--format", "json"], capsys)
    assert code == 0
    records = json.loads(out)
    assert [r["index"] for r in records if r["index"] is not None] == list(range(8))
    assert all(set(r) == LAYER_KEYS for r in records)
    conv = next(r for r in records if r["name"] == "3")
    assert conv["shape"] == [6, 8, 6]
    assert conv["rf_size"] == [8, 8]
    assert conv["stride"] == [2.0, 2.0]
    assert records[-1]["global"] is True


def test_extract_npy_dense_with_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = image(tmp_path)
    out = tmp_path / "out" / "feats.npy"
    code, stdout, err = run(["extract", TINY, str(img), "--layers", "1,4,7", "--out", str(out)],
                            capsys)  # fmt: skip
    assert code == 0, err
    arr = np.load(out)
    assert arr.shape == (1, 4 + 6 + 2, 16, 12)
    assert arr.dtype == np.float32
    meta = json.loads(out.with_name("feats.npy.json").read_text())
    assert meta["run"]["layers"] == ["1", "4", "7"]
    assert meta["channels"] == {"1": [0, 4], "4": [4, 10], "7": [10, 12]}
    assert [g["stride"] for g in meta["geometry"]][:2] == [[1.0, 1.0], [2.0, 2.0]]
    assert all(set(g) == LAYER_KEYS for g in meta["geometry"])
    assert meta["images"][0]["size"] == [16, 12]
    assert meta["images"][0]["key"] == "img"
    assert meta["run"]["model"] == TINY
    assert meta["hypercolumns_version"]
    assert "wrote" in stdout
    # the global layer (7, linear) is broadcast: constant over the image
    assert np.ptp(arr[0, 10:], axis=(1, 2)).max() == 0


def test_extract_several_images_stacked_float16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imgs = [str(image(tmp_path, f"{k}.png")) for k in "abc"]
    out = tmp_path / "f.npy"
    code, _, err = run(["extract", TINY, *imgs, "-l", "4", "--dtype", "float16", "-o", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    arr = np.load(out)
    assert arr.shape == (3, 6, 16, 12)
    assert arr.dtype == np.float16


def test_extract_sparse_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(image(tmp_path))
    out = tmp_path / "p.npy"
    args = ["extract", TINY, img, "-l", "1,4", "--points", "5", "--seed", "3", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert np.load(out).shape == (1, 5, 10)
    meta = json.loads((tmp_path / "p.npy.json").read_text())
    assert meta["layout"] == "(B, N, C)"
    assert meta["run"]["seed"] == 3
    assert np.asarray(meta["points"]["coordinates"]).shape == (1, 5, 2)

    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps([[0, 0], [15, 11], [7, 3]]))
    code, _, err = run([*args[:5], "--points", str(pts), "-o", str(out)], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "p.npy.json").read_text())
    assert meta["points"]["coordinates"] == [[[0, 0], [15, 11], [7, 3]]]


def test_extract_safetensors_and_pt_one_entry_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open

    small = image(tmp_path, "small.png", (16, 12))
    large = image(tmp_path, "large.png", (20, 24))
    out = tmp_path / "f.safetensors"
    code, _, err = run(["extract", TINY, str(small), str(large), "-l", "1,4", "-p", "4",
                        "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    with safe_open(str(out), "pt") as fh:
        assert set(fh.keys()) == {"small", "large", "small/points", "large/points"}
        assert tuple(fh.get_tensor("large").shape) == (4, 10)
        meta = json.loads(fh.metadata()["hypercolumns"])
    assert [i["size"] for i in meta["images"]] == [[16, 12], [20, 24]]

    out = tmp_path / "f.pt"
    code, _, err = run(["extract", TINY, str(small), str(large), "-l", "4", "-o", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    data = torch.load(out, weights_only=True)
    assert tuple(data["features"]["large"].shape) == (6, 20, 24)
    assert data["metadata"]["channels"] == {"4": [0, 6]}


VIT = "timm:vit_tiny_patch16_224"
VIT_KWARGS = '{"img_size": 32, "depth": 2}'


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_extract_class_token_into_a_single_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # One layer grammar: "NAME:cls" works for single files as it does for stores.
    img = str(image(tmp_path, size=(32, 32)))
    out = tmp_path / f"x{suffix}"
    code, _, err = run(["extract", VIT, img, "--model-kwargs", VIT_KWARGS, "--layers",
                        "blocks.1:cls,blocks.1", "--points", "4", "--out", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    if suffix == ".npy":
        meta = json.loads(out.with_name("x.npy.json").read_text())
        features = torch.from_numpy(np.load(out))[0]
    else:
        from safetensors import safe_open

        with safe_open(str(out), "pt") as fh:
            meta = json.loads(fh.metadata()["hypercolumns"])
            features = fh.get_tensor("img")
    assert meta["channels"] == {"blocks.1:cls": [0, 192], "blocks.1": [192, 384]}
    assert meta["geometry"][0]["global"] is True
    assert features.shape == (4, 384)
    # the class token is global: the same values at every point
    assert torch.equal(features[:, :192], features[:1, :192].expand(4, -1))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("truncated", "truncated"),
        ("not-image", "not an image"),
        ("too-small", "too small"),
        ("unknown-layer", "no layer named 'conv9'"),
        ("twice", "given twice"),
        ("extension", "extension must be one of .npy, .safetensors, .pt"),
        ("points-outside", "outside the 16x12 input"),
        ("memory", "over --max-memory 1KB"),
        ("sizes-differ", "sizes differ"),
        ("same-stem", "share the file stem 'img'"),
        ("bad-crop", "crop 40x40 is larger than the image (16x12)"),
    ],
)
def test_extract_errors_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, match: str
) -> None:
    img = str(image(tmp_path))
    out = tmp_path / "out" / "f.npy"
    extra: list[str] = []
    inputs, layers = [img], "1,4"
    if case == "truncated":
        full = tmp_path / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
        cut = tmp_path / "cut.jpg"
        cut.write_bytes(full.read_bytes()[:900])
        inputs = [img, str(cut)]
    elif case == "not-image":
        (tmp_path / "x.png").write_text("hello")
        inputs = [str(tmp_path / "x.png")]
    elif case == "too-small":
        inputs = [str(image(tmp_path, "tiny.png", (1, 1)))]
    elif case == "unknown-layer":
        layers = "1,conv9"
    elif case == "twice":
        layers = "4,4"
    elif case == "extension":
        out = tmp_path / "out" / "f.csv"
    elif case == "points-outside":
        pts = tmp_path / "pts.csv"
        pts.write_text("0,0\n16,3\n")
        extra = ["--points", str(pts)]
    elif case == "memory":
        extra = ["--max-memory", "1KB"]
    elif case == "sizes-differ":
        inputs = [img, str(image(tmp_path, "big.png", (20, 20)))]
    elif case == "same-stem":
        (tmp_path / "sub").mkdir()
        inputs = [img, str(image(tmp_path / "sub", "img.png"))]
        out = tmp_path / "out" / "f.pt"
    elif case == "bad-crop":
        extra = ["--crop", "center:40"]
    code, _, err = run(["extract", TINY, *inputs, "-l", layers, "-o", str(out), *extra], capsys)
    assert_one_line_error(code, err, match)
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))


def test_show_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(image(tmp_path, size=(32, 32)))
    cases = {
        "channel.png": ["--layer", "1", "--channel", "2"],
        "grid.png": ["--layer", "4", "--grid", "--channels", "4"],
        "mean.pdf": ["--layer", "1,4", "--mean"],
        "rf.png": ["--layer", "1,4,7", "--rf"],
    }
    for name, flags in cases.items():
        code, _, err = run(["show", TINY, img, *flags, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        assert (tmp_path / name).stat().st_size > 1000
    pixels = np.asarray(Image.open(tmp_path / "channel.png").convert("L"), dtype=float)
    assert pixels.std() > 10


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--layer", "1,4"], "names 2 layers"),
        (["--layer", "7"], "is global"),
        (["--layer", "1", "--grid", "--mean"], "choose one of --grid, --mean"),
        (["--layer", "1", "--channel", "9"], "channel 9 is out of range"),
    ],
)
def test_show_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], match: str
) -> None:
    img = str(image(tmp_path))
    out = tmp_path / "fig.png"
    code, _, err = run(["show", TINY, img, *flags, "--out", str(out)], capsys)
    assert_one_line_error(code, err, match)
    assert not out.exists()


@pytest.mark.slow
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run(["demo", "--out", str(out)], capsys)
    assert code == 0, err
    names = {"feature_map.png", "grid.png", "mean_hypercolumn.png", "receptive_fields.png",
             "growth.png", "erf_on_image.png", "conv_transposed.png", "summary.json"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hypercolumns"]["shape"] == [1, 192, 224, 224]
    assert summary["hypercolumns"]["channels"] == {"features.3": [0, 64], "features.8": [64, 192]}
    assert [layer["rf_size"] for layer in summary["layers"]] == [
        [5, 5], [14, 14], [40, 40], [92, 92], [196, 196]]  # fmt: skip
    assert summary["feature_map"]["shape"] == [1, 64, 224, 224]
    assert "features.8" in stdout
    assert "(1, 192, 224, 224)" in stdout
    if summary["weights"].startswith("random"):
        assert "random weights" in err
    for name in names - {"summary.json"}:
        assert Image.open(out / name).size[0] >= 600


def test_random_weights_are_the_same_in_every_command_run() -> None:
    """Every command builds random weights with seed 0 (so `show` repeats, as `extract` does),
    without touching the caller's random state."""
    from hypercolumns.cli._options import load

    torch.manual_seed(5)
    first = load(TINY, None, None, False).state_dict()
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.rand(3)  # another random state before the second build
    second = load(TINY, None, None, False).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after)  # the global generator was left as found
