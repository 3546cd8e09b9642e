"""Hypercolumn extraction, side by side on CPU: ours against what people write today.

For each model (torchvision vgg16 layers [3, 8]; resnet50 layer1..layer4), one 224x224 image:

* ``floor``: the truncated forward alone (the model prefix up to the last requested layer);
* ``write fresh`` / ``write reused``: merely writing a dense output of that size,
  ``torch.empty(...).fill_(1.0)``, and filling a buffer allocated once (no first-touch page
  faults): what any dense method pays on top of the floor;
* ``ours dense`` / ``ours sparse``: :class:`hypercolumns.HypercolumnExtractor` (planned once),
  dense ``(1, C, 224, 224)`` and 1024 sampled pixels, each into a fresh output and into a
  buffer passed again every call (``out=``);
* ``one-shot``: the function :func:`hypercolumns.hypercolumns`, called afresh every time as
  users do in loops (it must cost no more than the planned extractor);
* ``fx+interpolate``: torchvision ``create_feature_extractor`` + ``F.interpolate`` + ``torch.cat``;
* ``blog``: forward hooks on the full model and a per-channel bilinear resize loop.

Methods run interleaved, round after round, in a new (seeded) order each round, and each
reports its median time and the median over rounds of its ratio to the floor in the same round,
in wall-clock time and in CPU time of the process (``time.process_time``: on a shared machine,
time spent waiting for a core does not count; page faults do); ``best`` is the ratio of the
fastest CPU times, the runs least disturbed by other jobs. Then peak
memory, sparse (1024 points) against dense, for all 13 vgg16 conv
layers (4224 channels): each measured in a fresh process by sampling resident memory
(``/proc/self/statm``) every millisecond in a thread, minus the resident memory just before.

Run: ``uv run python benchmarks/hypercolumns.py [--rounds 7] [--threads N] [--models vgg16]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor


def _library() -> ModuleType:
    """The ``hypercolumns`` package, not this file (run as a script, it shadows the name)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    return importlib.import_module("hypercolumns")


hc = _library()

SIZE = 224
POINTS = 1024


def blog_hypercolumns(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The original blog post's recipe, in PyTorch: hooks, full forward, resize every channel."""
    maps: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: maps.__setitem__(n, o.clone())
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    columns = []
    for n in names:
        fmap = maps[n][0]
        for channel in fmap:
            resized = F.interpolate(
                channel[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
            )
            columns.append(resized[0, 0])
    return torch.stack(columns)


def fx_hypercolumns(extractor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a user writes today with torchvision's feature extraction."""
    with torch.no_grad():
        feats = extractor(x)
    up = [
        F.interpolate(f, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        for f in feats.values()
    ]
    return torch.cat(up, dim=1)


def prefix_of(name: str, model: nn.Module) -> nn.Module:
    if name == "vgg16":
        features = model.features  # type: ignore[union-attr]
        return features[:9]  # type: ignore[index, no-any-return]
    r = model
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)  # type: ignore[arg-type]


def _paired_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Per method, the median over rounds of its time over the floor's in the same round."""
    floor = times["floor"]
    return {
        k: statistics.median(t / f for t, f in zip(v, floor, strict=True)) for k, v in times.items()
    }


def _paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of method ``a``'s time over method ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def bench_model(name: str, layers: list[str], rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    prefix = prefix_of(name, model).eval()
    ours = hc.HypercolumnExtractor(model, layers, SIZE)
    fx = create_feature_extractor(model, {n: n for n in layers}).eval()

    dense_shape = (1, ours.channels, SIZE, SIZE)
    dense_buffer = torch.empty(dense_shape)
    sparse_buffer = torch.empty(1, POINTS, ours.channels)

    def floor() -> object:
        with torch.no_grad():
            return prefix(x)

    methods: dict[str, Callable[[], object]] = {
        "floor": floor,
        "write fresh": lambda: torch.empty(dense_shape).fill_(1.0),
        "write reused": lambda: dense_buffer.fill_(1.0),
        "ours dense": lambda: ours(x),
        "ours dense out=": lambda: ours(x, out=dense_buffer),
        f"ours sparse {POINTS}": lambda: ours(x, POINTS),
        f"ours sparse {POINTS} out=": lambda: ours(x, POINTS, out=sparse_buffer),
        "one-shot dense": lambda: hc.hypercolumns(model, x, layers),
        f"one-shot sparse {POINTS}": lambda: hc.hypercolumns(model, x, layers, points=POINTS),
        "fx+interpolate": lambda: fx_hypercolumns(fx, x),
        "blog": lambda: blog_hypercolumns(model, x, layers),
    }
    # the same numbers, checked once
    dense = ours(x).features
    ref = fx_hypercolumns(fx, x)
    same = bool(torch.allclose(dense, ref, atol=1e-4)) if name == "vgg16" else None
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    order = list(methods)
    for r in range(rounds):
        # a new order each round (seeded): in a fixed order each method always followed the
        # same one, and what that one left (a large output freed, and glibc returning it to the
        # system or not) moved the next one's time by up to 30 %
        random.Random(r).shuffle(order)
        for key in order:
            fn = methods[key]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {
        "model": name,
        "layers": layers,
        "channels": ours.channels,
        "median_s": {k: statistics.median(v) for k, v in wall.items()},
        "ratio_to_floor": _paired_ratios(wall),
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "cpu_ratio_to_floor": _paired_ratios(cpu),
        "cpu_best_ratio_to_floor": {k: min(v) / min(cpu["floor"]) for k, v in cpu.items()},
        "one_shot_over_planned": {
            "dense": _paired(wall, "one-shot dense", "ours dense"),
            "sparse": _paired(wall, f"one-shot sparse {POINTS}", f"ours sparse {POINTS}"),
        },
        "dense_equals_fx_interpolate": same,
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(points: int | None, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ours = hc.HypercolumnExtractor(model, convs, SIZE)
    x = torch.randn(1, 3, SIZE, SIZE)
    base = _rss()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    result = ours(x, points)
    done.set()
    thread.join()
    peak = max(peak, _rss())
    out_bytes = result.features.numel() * result.features.element_size()
    queue.put({"channels": ours.channels, "peak_bytes": peak - base, "output_bytes": out_bytes})


def peak_memory() -> dict[str, object]:
    ctx = mp.get_context("spawn")
    out: dict[str, object] = {}
    for label, points in (("dense", None), (f"sparse {POINTS}", POINTS)):
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak, args=(points, queue))
        proc.start()
        out[label] = queue.get()
        proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument(
        "--models", nargs="+", choices=["vgg16", "resnet50"], default=["vgg16", "resnet50"]
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {"vgg16": ["features.3", "features.8"], "resnet50": [f"layer{i}" for i in range(1, 5)]}
    results = [bench_model(name, cases[name], args.rounds) for name in args.models]
    memory = peak_memory() if args.memory else {}
    if args.json:
        print(json.dumps({"speed": results, "memory": memory}, indent=2, default=str))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for r in results:
        print(f"\n{r['model']} {r['layers']} -> {r['channels']} channels, 1x3x{SIZE}x{SIZE}")
        med: dict[str, float] = r["median_s"]  # type: ignore[assignment]
        ratio: dict[str, float] = r["ratio_to_floor"]  # type: ignore[assignment]
        med_cpu: dict[str, float] = r["median_cpu_s"]  # type: ignore[assignment]
        ratio_cpu: dict[str, float] = r["cpu_ratio_to_floor"]  # type: ignore[assignment]
        best_cpu: dict[str, float] = r["cpu_best_ratio_to_floor"]  # type: ignore[assignment]
        head = f"{'wall':>9}    {'/ floor':>7}  {'cpu':>9}    {'/ floor':>7}  {'best':>6}"
        print(f"  {'':<22} {head}")
        for key in med:
            print(
                f"  {key:<22} {med[key] * 1000:9.1f} ms  {ratio[key]:6.2f}x  "
                f"{med_cpu[key] * 1000:9.1f} ms  {ratio_cpu[key]:6.2f}x  {best_cpu[key]:5.2f}x"
            )
        shot: dict[str, float] = r["one_shot_over_planned"]  # type: ignore[assignment]
        print(
            f"  one-shot hc.hypercolumns / planned extractor: dense {shot['dense']:.2f}x, "
            f"sparse {shot['sparse']:.2f}x (goal: at most 1.05x)"
        )
    if memory:
        print("\nvgg16, all 13 conv layers, peak resident memory above the baseline:")
    for label, m in memory.items():
        info: dict[str, int] = m  # type: ignore[assignment]
        print(
            f"  {label:<12} {info['peak_bytes'] / 2**20:8.1f} MiB "
            f"(output {info['output_bytes'] / 2**20:.1f} MiB, {info['channels']} channels)"
        )


if __name__ == "__main__":
    main()
