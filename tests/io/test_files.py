"""Single-file extraction: the formats' rules, the size estimate and the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypercolumns.errors import HypercolumnsError, OutputTooLargeError
from hypercolumns.images import load_image
from hypercolumns.io.files import extract_to_file
from hypercolumns.pipeline import Extraction, Settings
from tests.conftest import TINY
from tests.tiny_models import tiny


def image(folder: Path, name: str = "img.png", size: tuple[int, int] = (16, 12)) -> Path:
    rng = np.random.default_rng(len(name))
    path = folder / name
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_paths_and_loaded_images_give_the_same_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny()
    path = image(tmp_path)
    a = extract_to_file(model, [path], "1,4", tmp_path / "a.pt")
    b = extract_to_file(model, [load_image(path, model)], "1,4", tmp_path / "b.pt")
    assert a.shapes == b.shapes == {"img": [10, 16, 12]}
    fa, fb = (torch.load(p, weights_only=True)["features"]["img"] for p in (a.paths[0], b.paths[0]))
    assert torch.equal(fa, fb)
    assert a.metadata["weights"] == "as given"
    assert a.metadata["channels"] == {"1": [0, 4], "4": [4, 10]}


def test_metadata_shares_the_store_schema(tmp_path: Path) -> None:
    written = extract_to_file(TINY, [image(tmp_path)], "1,4", tmp_path / "f.npy", points=5, seed=3)
    meta = json.loads((tmp_path / "f.npy.json").read_text())
    assert meta == json.loads(json.dumps(written.metadata))
    config = Extraction(Settings(model=TINY, layers="1,4", points=5, seed=3)).config()
    shared = {"run", "weights", "channels", "geometry", "hypercolumns_version"}
    assert shared <= set(meta)
    assert set(meta["run"]) == set(config["run"]) - {"labels"}
    assert set(meta["run"]["preprocessing"]) == set(config["run"]["preprocessing"])
    for key in ("model", "layers", "points", "seed", "align", "dtype", "size"):
        assert meta["run"][key] == config["run"][key], key
    assert meta["channels"] == config["channels"]
    assert [g | {"shape": None} for g in meta["geometry"]] == [
        g | {"shape": None} for g in config["geometry"]
    ]
    assert meta["weights"] == config["weights"] == "random (seed 0)"  # seeded, as stores are
    assert len(meta["run"]["weights_sha256"]) == 64
    assert meta["layout"] == "(B, N, C)"
    assert np.asarray(meta["points"]["coordinates"]).shape == (1, 5, 2)


def test_points_given_as_a_tensor_or_a_file(tmp_path: Path) -> None:
    img = image(tmp_path)
    pts = torch.tensor([[0, 0], [15, 11]])
    a = extract_to_file(TINY, [img], "4", tmp_path / "a.safetensors", points=pts)
    file = tmp_path / "pts.json"
    file.write_text(json.dumps(pts.tolist()))
    b = extract_to_file(TINY, [img], "4", tmp_path / "b.safetensors", points=file)
    assert a.shapes == b.shapes == {"img": [2, 6]}
    assert a.metadata["run"]["points"] == 2
    assert a.metadata["run"]["seed"] is None
    assert a.metadata["points"] == {"spec": "given"}
    assert b.metadata["points"] == {"spec": str(file)}


def test_the_estimate_refuses_large_outputs_before_computing(tmp_path: Path) -> None:
    with pytest.raises(OutputTooLargeError, match="max_bytes") as err:
        extract_to_file(TINY, [image(tmp_path)], "1,4", tmp_path / "f.npy", max_bytes=1000)
    assert err.value.need == 10 * 16 * 12 * 4
    assert err.value.limit == 1000
    assert not list(tmp_path.glob("f.*"))


@pytest.mark.parametrize(
    ("suffix", "match"),
    [(".npy", "sizes differ"), (".pt", "share the file stem 'img'")],
)
def test_stacking_rules(tmp_path: Path, suffix: str, match: str) -> None:
    (tmp_path / "sub").mkdir()
    images = [image(tmp_path), image(tmp_path / "sub", size=(20, 20))]
    with pytest.raises(HypercolumnsError, match=match):
        extract_to_file(TINY, images, "4", tmp_path / f"f{suffix}")


def test_progress_reports_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    images = [image(tmp_path, f"{k}.png") for k in "ab"]
    extract_to_file(TINY, images, "4", tmp_path / "f.npy", progress=lambda *a: calls.append(a))
    assert calls == [(0, 2), (1, 2), (2, 2)]
