"""Point files: whole (y, x) pixels from .npy, .json or .csv, each inside the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hypercolumns.errors import HypercolumnsError
from hypercolumns.features.points import read_points

PAIRS = [[0, 0], [15, 11], [7, 3]]


@pytest.mark.parametrize("suffix", [".npy", ".json", ".csv"])
def test_read_points_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"p{suffix}"
    if suffix == ".npy":
        np.save(path, np.asarray(PAIRS))
    elif suffix == ".json":
        path.write_text(json.dumps(PAIRS))
    else:
        path.write_text("".join(f"{y},{x}\n" for y, x in PAIRS))
    points = read_points(path, (16, 12))
    assert points.dtype == torch.long
    assert points.tolist() == PAIRS


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0,0\n16,3\n", r"point 1 \(y=16, x=3\) in '.*p\.csv' is outside the 16x12 input"),
        ("0,0\n1.5,3\n", "whole pixel coordinates"),
        ("0,0,1\n", r"must be N \(y, x\) pairs"),
        ("a,b\n", "cannot read points"),
    ],
)
def test_read_points_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(HypercolumnsError, match=match):
        read_points(path, (16, 12))


def test_read_points_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HypercolumnsError, match="no points file"):
        read_points(tmp_path / "none.json", (4, 4))
