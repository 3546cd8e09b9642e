"""``hypercolumns match`` and ``hypercolumns show --similar``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hypercolumns.cli import app
from tests.cli.test_cli import assert_one_line_error, image, run
from tests.conftest import TINY


@pytest.mark.parametrize(("command", "option"), [(["match"], "--mutual"), (["show"], "--similar")])
def test_help(command: list[str], option: str) -> None:
    res = CliRunner().invoke(app, [*command, "--help"])
    assert res.exit_code == 0
    assert option in res.output


def test_match_figure_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = str(image(tmp_path, "a.png", size=(32, 32)))
    b = str(image(tmp_path, "bb.png", size=(24, 40)))
    fig = tmp_path / "matches.png"
    code, out, err = run(["match", TINY, a, b, "--layers", "1,4", "--points", "12", "--mutual",
                          "--out", str(fig)], capsys)  # fmt: skip
    assert code == 0, err
    assert "12 matches" in out
    assert "mutual" in out
    pixels = np.asarray(Image.open(fig).convert("L"), dtype=float)
    assert pixels.std() > 10
    points = tmp_path / "points.json"
    points.write_text("[[0, 0], [31, 31], [5, 9]]")
    code, out, err = run(["match", TINY, a, b, "-l", "1,4", "--points", str(points),
                          "--format", "json"], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["model"] == TINY
    assert record["layers"] == ["1", "4"]
    assert record["target_size"] == [24, 40]
    assert [m["source"] for m in record["matches"]] == [[0, 0], [31, 31], [5, 9]]
    for m in record["matches"]:
        assert 0 <= m["target"][0] < 24
        assert 0 <= m["target"][1] < 40
        assert -1 <= m["score"] <= 1
        assert "mutual" not in m


def test_show_similar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(image(tmp_path, size=(32, 32)))
    fig = tmp_path / "similar.png"
    code, _, err = run(["show", TINY, img, "--layer", "1,4,7", "--similar", "10,20", "--out",
                        str(fig)], capsys)  # fmt: skip
    assert code == 0, err
    assert fig.stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["match", "{a}", "{a}", "-l", "1", "--points", "{pts}"], "is outside the 32x32 input"),
        (["match", "{a}", "{a}", "-l", "1", "--points", "nope.csv"], "neither a count nor a file"),
        (["match", "{a}", "{bad}", "-l", "1"], "bad.png"),
        (["match", "{a}", "{a}", "-l", "1", "--points", "2000"], "cannot be sampled"),
        (["show", "{a}", "-l", "1", "--similar", "40,3"], "--similar 40,3 is outside the 32x32"),
        (["show", "{a}", "-l", "1", "--similar", "4;3"], "--similar expects Y,X"),
        (["show", "{a}", "-l", "1", "--similar", "4,3", "--rf"], "choose one of --rf, --similar"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    a = image(tmp_path, "a.png", size=(32, 32))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    pts = tmp_path / "pts.json"
    pts.write_text("[[3, 4], [32, 1]]")
    out = tmp_path / "out" / "fig.png"
    out.parent.mkdir()
    names = {"a": str(a), "bad": str(tmp_path / "bad.png"), "pts": str(pts)}
    filled = [arg.format(**names) for arg in args]
    code, _, err = run([filled[0], TINY, *filled[1:], "--out", str(out)], capsys)
    assert_one_line_error(code, err, match)
    assert not list(out.parent.iterdir())
