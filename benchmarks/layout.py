"""Channels-last on a CPU: the library's extractor with the model run on a channels-last copy of
the input (what sparse hypercolumns do on a CPU) against the plain layout, paired.

For each model, one planned ``hc.HypercolumnExtractor`` runs a random image (seeded) in short
blocks, alternately on the two routes (its ``FeatureExtractor.stream`` called with
``channels_last`` set either way), sparse at 1024 points and, with ``--dense``, dense (which
the library keeps on the plain layout: see ``docs/benchmarks.md``), on 1 and on 2 threads. Each
pair of blocks gives a ratio (plain time / channels-last time: above 1 means channels-last is
faster); the median and the quartiles of the pairs are printed, so that a slow spell of a
noisy machine slows both sides of a pair.

Models: vgg16 layers ``3,8`` and resnet18 ``layer1,layer2`` at 320x240 (the pipeline
benchmark's), resnet50 ``layer1..layer4``, timm ``deit_tiny_patch16_224`` blocks 3 and 11 and
``convnext_tiny`` stages 0 and 2 at 224x224; random weights.

Run: ``uv run python benchmarks/layout.py [--pairs 9] [--block 3] [--threads 1,2] [--dense]``
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch


def _library() -> ModuleType:
    """The ``hypercolumns`` package, not this folder (run as a script, it shadows the name)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    return importlib.import_module("hypercolumns")


hc = _library()

MODELS: list[tuple[str, str, list[int | str], tuple[int, int]]] = [
    ("vgg16 up to features.8", "torchvision:vgg16", [3, 8], (240, 320)),
    ("resnet18 up to layer2", "torchvision:resnet18", ["layer1", "layer2"], (240, 320)),
    ("resnet50", "torchvision:resnet50", ["layer1", "layer2", "layer3", "layer4"], (224, 224)),
    ("deit_tiny", "timm:deit_tiny_patch16_224", ["blocks.3", "blocks.11"], (224, 224)),
    ("convnext_tiny", "timm:convnext_tiny", ["stages.0", "stages.2"], (224, 224)),
]


def paired(run: Callable[[bool], object], pairs: int, block: int) -> list[float]:
    """Ratios plain / channels-last of ``pairs`` pairs of ``block`` calls, the order of the two
    alternating from pair to pair."""

    def timed(channels_last: bool) -> float:
        start = time.perf_counter()
        for _ in range(block):
            run(channels_last)
        return time.perf_counter() - start

    ratios = []
    for p in range(pairs):
        if p % 2:
            last = timed(True)
            plain = timed(False)
        else:
            plain = timed(False)
            last = timed(True)
        ratios.append(plain / last)
    return sorted(ratios)


def measure(
    label: str, spec: str, layers: list[int | str], size: tuple[int, int], args: argparse.Namespace
) -> None:
    """Print the ratios of one model, sparse (and dense with ``--dense``), per thread count."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = hc.load_model(spec)
        x = torch.randn(1, 3, *size)
    ext = hc.HypercolumnExtractor(model, layers, size)
    stream, route = ext.features.stream, [False]

    def streamed(x: torch.Tensor, consume: Callable[..., None], **_: bool) -> None:
        stream(x, consume, channels_last=route[0])  # the route of this block, not the caller's

    ext.features.stream = streamed  # type: ignore[method-assign]
    for name, points in [("sparse", 1024), ("dense", None)][: 2 if args.dense else 1]:

        def run(channels_last: bool, points: int | None = points) -> torch.Tensor:
            route[0] = channels_last
            return ext(x, points).features

        with_last = run(True)  # a difference beyond rounding would show here
        err = (with_last - run(False)).abs().max() / with_last.abs().max()
        for n in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(n)
            ratios = paired(run, args.pairs, args.block)
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            print(
                f"{label:24} {name:6} {n} thread(s): {statistics.median(ratios):.2f}x "
                f"[{q1:.2f}-{q3:.2f}]; largest difference {err:.1e} of the largest value"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--block", type=int, default=3, help="calls per block")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dense", action="store_true", help="also dense hypercolumns")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; ratio = plain time / channels-last time, median [quartiles]")
    for model in MODELS:
        measure(*model, args)


if __name__ == "__main__":
    main()
