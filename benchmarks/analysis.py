"""Receptive-field analysis time against one CPU forward pass of the same model.

Run: ``uv run python benchmarks/analysis.py`` (options: ``--repeat N``, ``--threads N``).

Both are timed in this process, alternating, and the median of each is compared: analysis runs
the model on meta tensors, so its cost should not grow with the input size while the forward
pass does. Goal: ratio below 0.2 at 224.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision

# benchmarks/hypercolumns.py would shadow the package when this runs as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import hypercolumns as hc  # noqa: E402

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(),
    "convnext_tiny": lambda: timm.create_model("convnext_tiny"),
}


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes", default="224,1024")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeat}")
    print(f"{'model':<15}{'size':>6}{'build s':>10}{'analysis s':>12}{'forward s':>11}{'ratio':>8}")
    for name, build in MODELS.items():
        t0 = time.perf_counter()
        model = build().eval()
        build_s = time.perf_counter() - t0
        hc.layers(model, 64)  # warm up meta kernels once per process
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.randn(1, 3, size, size)
            analysis = median_time(lambda m=model, s=size: hc.layers(m, s), args.repeat)
            with torch.inference_mode():
                forward = median_time(lambda m=model, x=x: m(x), args.repeat)
            print(
                f"{name:<15}{size:>6}{build_s:>10.3f}{analysis:>12.3f}{forward:>11.3f}"
                f"{analysis / forward:>8.2f}"
            )


if __name__ == "__main__":
    main()
