"""Lanes: on a CPU with two PyTorch threads, two batches computed at once, one thread each;
the store is the one a single thread writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hypercolumns as hc
from hypercolumns.pipeline import Settings, expand_inputs, run
from hypercolumns.pipeline.decoding import decode
from hypercolumns.pipeline.extraction import Extraction
from tests.conftest import TINY
from tests.pipeline.conftest import SLOW, model_of, picture


class Forwards:
    """Every forward pass of ``model`` while in use: ``(thread name, input height, meta,
    start, end)``; planning runs the model on meta tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seen: list[tuple[str, int, bool, float, float]] = []
        self._started: dict[int, float] = {}

    def __enter__(self) -> list[tuple[str, int, bool, float, float]]:
        def pre(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self._started[threading.get_ident()] = time.perf_counter()

        def post(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: object) -> None:
            x, name = args[0], threading.current_thread().name.rsplit("_", 1)[0]
            start = self._started.pop(threading.get_ident())
            self.seen.append((name, int(x.shape[-2]), x.is_meta, start, time.perf_counter()))

        self._hooks = [self.model.register_forward_pre_hook(pre),
                       self.model.register_forward_hook(post, always_call=True)]  # fmt: skip
        return self.seen

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()


def _count_in_a_new_thread() -> int:
    counts: list[int] = []
    worker = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return counts[0]


@pytest.mark.parametrize("points", [None, 7])
def test_lanes_write_what_the_library_computes(
    tmp_path: Path, two_threads: None, points: int | None
) -> None:
    # six sizes and a forward pass of 0.05 s: each new size is planned while no lane runs, or a
    # lane's forward passes through the planner's hooks
    folder = tmp_path / "images"
    for i in range(6):
        picture(folder / f"im{i}.png", (16 + 2 * i, 20 - i), i)
    settings = Settings(SLOW, "2,5", points=points, seed=3)
    model = model_of(settings)
    out = tmp_path / ("s.parquet" if points else "d.zarr")
    with Forwards(model) as seen:
        summary = run([folder], out, settings, model=model)
    assert (summary.done, summary.failed) == (6, ())
    # every image in a lane, though its sizes were planned between them, and never at once
    real = [f for f in seen if not f[2]]
    assert {name for name, *_ in real} == {"hypercolumns-lane"}
    assert len(real) == 6
    for _, _, _, start, end in (f for f in seen if f[2]):
        assert all(end <= s or e <= start for _, _, _, s, e in real)
    store = hc.open_store(out)
    for key in store:
        x, _ = hc.load_image(folder / key, model)
        if points:
            pts = torch.as_tensor(store[key].points)[None]
            want = hc.hypercolumns(model, x, "2,5", points=pts).features[0]
            got = store[key].features
        else:
            want, got = hc.hypercolumns(model, x, "2,5").features[0], store[key][:]
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    # PyTorch's thread count as found, here and for threads started later
    assert torch.get_num_threads() == 2
    assert _count_in_a_new_thread() == 2


def test_a_batch_beyond_a_lanes_share_of_the_budget_runs_alone(
    tmp_path: Path, two_threads: None
) -> None:
    root = tmp_path / "images"
    for i, size in enumerate([(16, 16), (64, 64), (16, 16), (16, 16)]):
        picture(root / f"im{i}.png", size, i)
    settings = Settings(TINY, "1,4")
    model = model_of(settings)
    extraction = Extraction(settings, model=model)
    cost = {
        s.key: extraction.cost(decode(s, extraction.decode_options)) for s in expand_inputs([root])
    }
    budget = cost["im1.png"] * 3 // 2  # the large image fits the run's budget, not half of it
    assert max(cost["im0.png"], cost["im2.png"]) <= budget // 2
    with Forwards(model) as seen:
        summary = run([root], tmp_path / "d.zarr", settings, model=model, max_memory=budget)
    assert (summary.done, summary.banded) == (4, 0)
    where = {height: name for name, height, meta, *_ in seen if not meta}
    assert where == {16: "hypercolumns-lane", 64: "MainThread"}
