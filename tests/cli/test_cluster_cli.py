"""``hypercolumns cluster`` and ``hypercolumns show --pca``: figures, JSON, one-line errors and
nothing half-written at --out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hypercolumns.cli import app
from hypercolumns.viz.clusters import palette
from tests.cli.test_cli import assert_one_line_error, image, run
from tests.conftest import TINY


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def test_help() -> None:
    res = CliRunner().invoke(app, ["cluster", "--help"])
    assert res.exit_code == 0
    for flag in ("--layers", "-k", "--points", "--seed", "--out", "--format"):
        assert flag in res.output
    res = CliRunner().invoke(app, ["show", "--help"])
    assert "--pca" in res.output


def test_cluster_figure_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = image(tmp_path, "a.png", size=(32, 40))
    b = image(tmp_path, "bb.png", size=(24, 24))  # sizes may differ: one joint clustering
    out = tmp_path / "figs" / "clusters.png"
    args = ["cluster", TINY, str(a), str(b), "--layers", "0,3", "-k", "3", "--points", "50"]
    code, stdout, err = run([*args, "--out", str(out), "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["k"] == 3
    assert record["layers"] == ["0", "3"]
    assert record["samples"] == 100
    assert [im["size"] for im in record["images"]] == [[32, 40], [24, 24]]
    assert [sum(im["pixels"]) for im in record["images"]] == [32 * 40, 24 * 24]
    # the cluster maps are drawn in the palette's colours
    pixels = _pixels(out).reshape(-1, 3)
    for color in palette(3) * 255:
        assert (np.abs(pixels - color).max(1) < 2).sum() > 50
    # random weights are seeded: the same clusters again
    code, again, err = run([*args, "--out", str(tmp_path / "c.svg"), "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(again)["images"] == record["images"]
    code, stdout, err = run([*args, "--out", str(tmp_path / "c.pdf")], capsys)
    assert code == 0, err
    assert "wrote" in stdout
    assert "3 clusters of 2 image(s)" in stdout


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["-k", "500", "--points", "20"], "k=500 clusters but only 20 hypercolumns"),
        (["-k", "0"], "-k"),
        (["--layers", "nope"], "nope"),
    ],
)
def test_cluster_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], match: str
) -> None:
    img = str(image(tmp_path, size=(16, 16)))
    out = tmp_path / "out" / "clusters.png"
    args = ["cluster", TINY, img, "--layers", "0,3", *flags, "--out", str(out)]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, match)
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))


def test_cluster_refuses_bad_paths_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = str(image(tmp_path))
    code, _, err = run(["cluster", TINY, img, "-l", "0", "--out", str(tmp_path / "c.txt")], capsys)
    assert_one_line_error(code, err, "c.txt")
    code, _, err = run(
        [
            "cluster",
            TINY,
            str(tmp_path / "missing.png"),
            "-l",
            "0",
            "--out",
            str(tmp_path / "c.png"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, "missing.png")
    assert not (tmp_path / "c.png").exists()


def test_show_pca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(image(tmp_path, size=(32, 32)))
    out = tmp_path / "pca.png"
    code, _, err = run(["show", TINY, img, "--layer", "0,3", "--pca", "--out", str(out)], capsys)
    assert code == 0, err
    assert _pixels(out).std() > 10
    code, _, err = run(
        ["show", TINY, img, "--layer", "0", "--pca", "--mean", "--out", str(out)], capsys
    )
    assert_one_line_error(code, err, "choose one of --mean, --pca")
