"""Issue 14: the rough edges of the reliability report, through the command line."""

from __future__ import annotations

from pathlib import Path

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
