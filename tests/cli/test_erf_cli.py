from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from hypercolumns.cli import app
from tests.cli.test_cli import assert_one_line_error, image, run
from tests.conftest import TINY


@pytest.mark.parametrize(
    ("command", "option"),
    [(["erf"], "--batch-size"), (["draw", "rf"], "--unit"), (["draw"], "rf")],
)
def test_help(command: list[str], option: str) -> None:
    res = CliRunner().invoke(app, [*command, "--help"])
    assert res.exit_code == 0
    assert option in res.output


def test_erf_table_json_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "erf.png"
    code, stdout, err = run(["erf", TINY, "--layer", "3", "-s", "16", "-n", "3", "-b", "2",
                             "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert "ERF std" in stdout
    assert "area ratio 99 %" in stdout
    assert f"wrote {out}" in stdout
    assert Image.open(out).size[0] > 100
    code, stdout, err = run(["erf", TINY, "-l", "3", "-s", "16,12", "-n", "3", "--unit", "1,2",
                             "--format", "json"], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads(stdout)
    for key in ("std", "centroid", "mass_radius", "area_ratio", "rf_size", "erf_to_rf"):
        assert key in record
    assert record["unit"] == [1, 2]
    assert record["input_size"] == [16, 12]
    assert record["samples"] == 3
    assert record["rf_size"] == [8, 8]


def test_erf_over_a_folder_of_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.png"):
        image(folder, name)
    (folder / "notes.txt").write_text("not an image, skipped by extension")
    code, stdout, err = run(["erf", TINY, "-l", "4", "-s", "16", "--images", str(folder),
                             "-n", "2", "-f", "json"], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads(stdout)
    assert record["inputs"] == "images"
    assert record["samples"] == 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["-l", "7", "-s", "16"], "is global"),
        (["-l", "3", "-s", "16", "--unit", "8,0"], "grid is 8x8 units"),
        (["-l", "3", "-s", "16", "--unit", "middle"], "--unit expects I,J"),
        (["-l", "3", "-s", "1"], "too small"),
        (["-l", "3", "-s", "16", "--samples", "0"], "samples must be a positive integer"),
        (["-l", "3", "-s", "16", "--batch-size", "-1"], "batch_size must be a positive"),
        (["-l", "3", "-s", "16", "--images", "EMPTY"], "holds no image files"),
        (["-l", "3", "-s", "16", "--images", "MISSING"], "is not a folder"),
        (["-l", "3", "-s", "16", "--images", "BAD"], "cannot read"),
        (["-l", "3", "-s", "16", "--out", "erf.jpg"], "use a .png, .pdf, .svg file name"),
    ],
)
def test_erf_errors(
    args: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
    folders = {"EMPTY": "empty", "MISSING": "missing", "BAD": "bad"}
    args = [str(tmp_path / folders[a]) if a in folders else a for a in args]
    code, _, err = run(["erf", TINY, *args], capsys)
    assert_one_line_error(code, err, match)


def test_draw_rf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(image(tmp_path, size=(24, 20)))
    out = tmp_path / "rf.png"
    code, stdout, err = run(["draw", "rf", TINY, img, "--layer", "4", "--unit", "2,3",
                             "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}" in stdout
    assert Image.open(out).size[0] > 100
    code, _, err = run(["draw", "rf", TINY, img, "--layer", "6", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "is global")
    code, _, err = run(["draw", "rf", TINY, str(tmp_path / "nope.png"), "-l", "4"], capsys)
    assert_one_line_error(code, err, "does not exist")
