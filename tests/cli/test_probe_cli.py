"""``hypercolumns probe fit|predict|eval`` end to end on a tiny model and a texture mosaic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hypercolumns.cli import app
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import TINY
from tests.probes.test_probe import mosaic


def _write(tmp_path: Path, n: int = 3, seed: int = 0, name: str = "train") -> Path:
    x, y = mosaic(n, seed=seed)
    lines = ["path,mask"]
    for i in range(n):
        rgb = (x[i].clamp(0, 1.5) / 1.5 * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(tmp_path / f"{name}{i}.png")
        Image.fromarray(y[i].byte().numpy()).save(tmp_path / f"{name}{i}_m.png")
        lines.append(f"{name}{i}.png,{name}{i}_m.png")
    (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / f"{name}.csv"


@pytest.mark.parametrize("command", ["fit", "predict", "eval"])
def test_help(command: str) -> None:
    res = CliRunner().invoke(app, ["probe", command, "--help"])
    assert res.exit_code == 0
    assert {"fit": "--task", "predict": "--probabilities", "eval": "--format"}[command] in (
        res.output
    )


def test_fit_predict_eval(tmp_path, capsys) -> None:
    train, test = _write(tmp_path), _write(tmp_path, 2, seed=1, name="test")
    probe = tmp_path / "p.safetensors"
    code, out, err = run(
        ["probe", "fit", TINY, str(train), "-l", "0,3", "--out", str(probe), "--points", "150",
         "--classes", "a,b,c", "--format", "json"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["classes"] == ["a", "b", "c"]
    code, out, err = run(["probe", "eval", str(probe), str(test), "--format", "json"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert {"miou", "pixel_accuracy", "per_class_iou", "images"} <= set(scores)
    assert scores["images"] == 2
    assert scores["pixel_accuracy"] > 0.85
    preds = tmp_path / "preds"
    code, out, err = run(
        ["probe", "predict", str(probe), str(tmp_path / "test0.png"), "--out", str(preds),
         "--probabilities"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in preds.iterdir()) == ["test0.npy", "test0.png",
                                                       "test0_overlay.png"]  # fmt: skip
    labels = Image.open(preds / "test0.png")
    assert labels.mode == "P"
    assert set(np.unique(np.asarray(labels))) <= {0, 1, 2}
    probs = np.load(preds / "test0.npy")
    assert probs.shape == (3, 24, 24)
    assert np.allclose(probs.sum(0), 1, atol=1e-5)


def test_colorization(tmp_path, capsys) -> None:
    train = _write(tmp_path, 2)
    probe = tmp_path / "c.safetensors"
    code, _, err = run(
        ["probe", "fit", TINY, str(tmp_path / "train0.png"), str(tmp_path / "train1.png"),
         "-l", "0,3", "--task", "regress", "--out", str(probe)], capsys,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run(["probe", "eval", str(probe), str(train), "-f", "json"], capsys)
    assert code == 0, err
    assert {"rmse", "psnr"} <= set(json.loads(out))
    code, _, err = run(
        ["probe", "predict", str(probe), str(tmp_path / "train0.png"), "-o", str(tmp_path / "c")],
        capsys,
    )
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "c" / "train0.png")).shape == (24, 24, 3)


def test_bad_input_is_one_line_and_nothing_written(tmp_path, capsys) -> None:
    train = _write(tmp_path)
    out = tmp_path / "p.safetensors"
    code, _, err = run(
        ["probe", "fit", TINY, str(train), "-l", "0,3", "-o", str(out), "--classes", "a,b"],
        capsys,
    )
    assert_one_line_error(code, err, "has label 2, outside the 2 classes (0: a, 1: b)")
    code, _, err = run(
        ["probe", "fit", TINY, str(train), "-l", "0,3", "-o", str(out), "--classes", "a,b,c,d"],
        capsys,
    )
    assert_one_line_error(code, err, "class 'd' (label 3) has no pixel")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small.png")
    code, _, err = run(
        ["probe", "fit", TINY, str(tmp_path / "train0.png"), "-t", str(tmp_path / "small.png"),
         "-l", "0,3", "-o", str(out)], capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "small.png' is 5x5, its image 24x24")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    code, _, _ = run(["probe", "fit", TINY, str(train), "-l", "0,3", "-o", str(out)], capsys)
    assert code == 0
    code, _, err = run(["probe", "eval", str(tmp_path / "train.csv"), str(train)], capsys)
    assert_one_line_error(code, err, "train.csv")
    (tmp_path / "nothing.png").write_bytes(b"not an image")
    preds = tmp_path / "preds"
    code, _, err = run(
        ["probe", "predict", str(out), str(tmp_path / "train0.png"), str(tmp_path / "nothing.png"),
         "-o", str(preds)], capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "nothing.png")
    assert not preds.exists() or list(preds.iterdir()) == []
