"""Similarity maps and correspondences on CPU: ours against the floor and the explicit route.

1. One similarity map, torchvision vgg16 layers [3, 8, 15, 22] (960 channels), one 224x224
   image, random weights:

   * ``floor``: the truncated forward alone (``features[:23]``);
   * ``ours``: :func:`hypercolumns.similarity` of one query pixel over the image (planned by
     its first call, as in a loop);
   * ``explicit``: what users write: dense :func:`hypercolumns.hypercolumns`, then the cosine
     of the query column with every pixel.

   Methods run interleaved, round after round; each reports its median time and the median
   over rounds of its ratio to the floor in the same round, in wall-clock time and in CPU time
   of the process (``time.process_time``), and ``best``, the ratio of the fastest CPU times.

2. 2000 correspondences between two 512x512 images, same model and layers, each method in a
   fresh process: peak resident memory above the memory just before the call (sampled every
   millisecond from ``/proc/self/statm`` in a thread), and wall and CPU time:

   * ``ours``: :func:`hypercolumns.correspond` (chunks of source points, 256 MiB each);
   * ``explicit``: dense hypercolumns of both images, the target's normalised, one matrix
     product of the 2000 normalised source columns with them, then the argmax.

Run: ``uv run python benchmarks/similarity.py [--rounds 7] [--threads N] [--points 2000]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torchvision


def _library() -> ModuleType:
    """The ``hypercolumns`` package, not this file's folder (run as a script)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    return importlib.import_module("hypercolumns")


hc = _library()

LAYERS = [3, 8, 15, 22]
SIZE = 224
PAIR_SIZE = 512


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


def explicit_similarity(model: torch.nn.Module, x: torch.Tensor, y: int, x_: int) -> torch.Tensor:
    """Dense hypercolumns, then the cosine of one column with every pixel."""
    full = hc.hypercolumns(model, x, LAYERS).features[0]
    q = full[:, y, x_]
    return torch.einsum("c,chw->hw", q, full) / (q.norm() * full.norm(dim=0)).clamp_min(1e-12)


def bench_map(rounds: int) -> dict[str, object]:
    model = _model()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    prefix = model.features[:23]  # type: ignore[index]
    query = torch.tensor([[100, 120]])

    def floor() -> object:
        with torch.no_grad():
            return prefix(x)

    methods: dict[str, Callable[[], object]] = {
        "floor": floor,
        "ours": lambda: hc.similarity(model, x, LAYERS, query),
        "explicit": lambda: explicit_similarity(model, x, 100, 120),
    }
    same = float((methods["ours"]()[0] - methods["explicit"]()).abs().max())  # type: ignore[index, operator]
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():
        fn()
    for _ in range(rounds):
        for key, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        base = times["floor"]
        return {
            k: round(statistics.median(t / f for t, f in zip(v, base, strict=True)), 3)
            for k, v in times.items()
        }

    return {
        "image": [SIZE, SIZE],
        "median_s": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "ratio_to_floor": ratios(wall),
        "cpu_ratio_to_floor": ratios(cpu),
        "cpu_best_ratio_to_floor": {
            k: round(min(v) / min(cpu["floor"]), 3) for k, v in cpu.items()
        },
        "max_abs_difference_to_explicit": same,
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pairs(method: str, points: int, threads: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(threads)
    model = _model()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 3, PAIR_SIZE, PAIR_SIZE, generator=gen)
    b = torch.randn(1, 3, PAIR_SIZE, PAIR_SIZE, generator=gen)
    hc.correspond(model, a, b, LAYERS, 1)  # plans the model for this size
    src = torch.randperm(PAIR_SIZE * PAIR_SIZE, generator=gen)[:points]
    pts = torch.stack((src // PAIR_SIZE, src % PAIR_SIZE), 1)
    base = _rss()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start, start_cpu = time.perf_counter(), time.process_time()
    refused = None
    try:
        if method == "ours":
            found = hc.correspond(model, a, b, LAYERS, pts)
            result = found.points[:, 0] * PAIR_SIZE + found.points[:, 1]
        else:
            hs = hc.hypercolumns(model, a, LAYERS, points=pts).features[0]
            ht = hc.hypercolumns(model, b, LAYERS).features[0].flatten(1)
            ht = ht / ht.norm(dim=0).clamp_min(1e-12)
            sim = (hs / hs.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ ht
            result = sim.argmax(1)
    except hc.OutputTooLargeError as err:
        refused, result = str(err), None
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    done.set()
    watcher.join()
    queue.put({
        "method": method, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "peak_above_before_gib": round((peak - base) / 2**30, 3),
        "peak_rss_gib": round(peak / 2**30, 3), "refused": refused,
        "matches": None if result is None else result.tolist(),
    })  # fmt: skip


def bench_pairs(points: int, threads: int) -> dict[str, object]:
    ctx = mp.get_context("spawn")
    out: dict[str, dict[str, object]] = {}
    for method in ("ours", "explicit"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_pairs, args=(method, points, threads, queue))
        proc.start()
        out[method] = queue.get()
        proc.join()
    ours, explicit = out["ours"], out["explicit"]
    agree = None
    if ours["matches"] is not None and explicit["matches"] is not None:
        pairs = zip(ours["matches"], explicit["matches"], strict=True)  # type: ignore[call-overload]
        agree = sum(a == b for a, b in pairs) / points
    for record in out.values():
        record.pop("matches")
    return {
        "images": [PAIR_SIZE, PAIR_SIZE],
        "points": points,
        **out,
        "same_best_pixel_fraction": agree,
        "time_ratio_ours_over_explicit": {
            "wall": round(float(ours["wall_s"]) / float(explicit["wall_s"]), 3),  # type: ignore[arg-type]
            "cpu": round(float(ours["cpu_s"]) / float(explicit["cpu_s"]), 3),  # type: ignore[arg-type]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "threads": args.threads,
        "similarity_map": bench_map(args.rounds),
        "correspondences": bench_pairs(args.points, args.threads),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
