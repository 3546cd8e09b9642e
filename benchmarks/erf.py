"""Effective receptive field, batched against a per-sample loop, on CPU, in one process.

torchvision resnet50 (random weights, seeded), layer ``layer4`` at 224x224, the middle unit
``(3, 3)``, 32 standard normal inputs:

* ``ours batch B``: ``hc.erf(model, "layer4", 224, samples=32, batch_size=B)``: B inputs per
  forward and backward pass, parameters' ``requires_grad`` off while it runs, the forward
  stopped after ``layer4``;
* ``per-sample loop``: what people write (RepLKNet's ``visualize_erf.py`` does this): for each
  input, a forward of the backbone up to ``layer4``, ``autograd.grad`` of the unit, ``abs``,
  sum over channels, accumulate.

Both use the same 32 inputs; the script prints how far the maps are apart (float32 rounding:
bit-identical when oneDNN picks the same algorithm for both batch sizes, about 1e-4 of the
maximum when it does not). Methods run
interleaved, round after round; medians and the ratio to the loop's median are printed. Then
peak memory: each method in a fresh process, resident memory (``/proc/self/statm``) sampled
every millisecond in a thread, minus the resident memory just before the call.

Run: ``uv run python benchmarks/erf.py [--rounds 3] [--threads N] [--batch-sizes 8,32]``
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
from torch import nn


def _library() -> ModuleType:
    """The ``hypercolumns`` package, not this file (run as a script, it shadows the name)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    return importlib.import_module("hypercolumns")


hc = _library()

SIZE = 224
SAMPLES = 32
LAYER = "layer4"
UNIT = (3, 3)


def model() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def noise() -> torch.Tensor:
    """The inputs ``hc.erf`` draws for seed 0: one standard normal draw per sample."""
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn((1, 3, SIZE, SIZE), generator=gen) for _ in range(SAMPLES)])


def per_sample_loop(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward and one backward per input: the mean absolute gradient ``(H, W)``."""
    body = nn.Sequential(*list(net.children())[:-2])  # stem .. layer4
    total = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    for sample in x:
        xi = sample[None].clone().requires_grad_(True)
        out = body(xi)
        (grad,) = torch.autograd.grad(out[0, :, UNIT[0], UNIT[1]].sum(), xi)
        total += grad.abs().sum((0, 1)).double()
    return total / len(x)


def ours(net: nn.Module, batch_size: int) -> torch.Tensor:
    result = hc.erf(net, LAYER, SIZE, unit=UNIT, samples=SAMPLES, batch_size=batch_size)
    return result.raw


def methods(net: nn.Module, sizes: list[int]) -> dict[str, Callable[[], torch.Tensor]]:
    x = noise()
    out: dict[str, Callable[[], torch.Tensor]] = {
        "per-sample loop": lambda: per_sample_loop(net, x)
    }
    for b in sizes:
        out[f"ours batch {b}"] = lambda b=b: ours(net, b)  # type: ignore[misc]
    return out


def bench(rounds: int, sizes: list[int]) -> dict[str, object]:
    net = model()
    runs = methods(net, sizes)
    maps = {name: fn() for name, fn in runs.items()}  # warm-up, and the correctness check
    reference = maps["per-sample loop"]
    scale = float(reference.abs().max())
    deviation = max(float((m - reference).abs().max()) / scale for m in maps.values())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["per-sample loop"]
    return {
        "median_s": med,
        "all_s": times,
        "speedup_over_loop": {name: base / t for name, t in med.items()},
        "max_deviation": deviation,
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(name: str, sizes: list[int], threads: int | None, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    if threads:
        torch.set_num_threads(threads)
    fn = methods(model(), sizes)[name]
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
    fn()
    done.set()
    thread.join()
    queue.put(max(peak, _rss()) - base)


def peak_memory(sizes: list[int], threads: int | None) -> dict[str, int]:
    ctx = mp.get_context("spawn")
    out: dict[str, int] = {}
    for name in methods(nn.Identity(), sizes):
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak, args=(name, sizes, threads, queue))
        proc.start()
        out[name] = queue.get()
        proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--batch-sizes", default="8,32", help="batch sizes of ours, e.g. 1,8,32")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    speed = bench(args.rounds, sizes)
    memory = {} if args.no_memory else peak_memory(sizes, args.threads)
    if args.json:
        print(json.dumps({"speed": speed, "memory_bytes": memory}, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"resnet50 {LAYER} unit {UNIT} at {SIZE}x{SIZE}, {SAMPLES} noise inputs")
    print(f"largest difference from the loop's map: {speed['max_deviation']:.1e} of its maximum")
    med: dict[str, float] = speed["median_s"]  # type: ignore[assignment]
    ratio: dict[str, float] = speed["speedup_over_loop"]  # type: ignore[assignment]
    for name in med:
        mem = f"  peak {memory[name] / 2**20:7.0f} MiB" if name in memory else ""
        print(f"  {name:<16} {med[name]:7.2f} s  {ratio[name]:5.2f}x the loop's speed{mem}")


if __name__ == "__main__":
    main()
