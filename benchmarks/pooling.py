"""Max pooling on a CPU: PyTorch's kernel against the two-pass route the extractor uses.

Side by side in one process, interleaved, on the CPU:

* the pooling layers of the models users extract from (vgg16's at 320x240, resnet's stem at
  320x240 and 224x224, a deep 14x14 one, YOLO's SPPF kernel 5 stride 1, GoogLeNet's
  ``ceil_mode``), on one image and on a batch of 8: ``F.max_pool2d`` as the model calls it,
  the same call under :class:`~hypercolumns.features._pooling.FastMaxPool`, and the model's
  input made channels-last first (the other route a user might try; the conversions are
  timed);
* whole forward passes of torchvision models (random weights, one 320x240 image): plain, and
  under the mode; the prefixes of the pipeline benchmark (vgg16 to ``features.8``, resnet18 to
  ``layer2``), full resnet50 and vgg16, and ViT-B/16 (224x224), which has no pooling: what the
  mode's Python dispatch costs.

Every pair is checked equal (``torch.equal``) before it is timed. Prints milliseconds (the
median of the rounds) and the ratio plain / ours (above 1: ours faster).

Run: ``uv run python benchmarks/pooling.py [--threads 1,2] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# this folder holds a hypercolumns.py of its own: import the package, not that script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from hypercolumns.features._pooling import FastMaxPool  # noqa: E402

# (what, input shape, kernel, stride, padding, ceil_mode)
LAYERS = [
    ("vgg16 features.4", (64, 240, 320), 2, 2, 0, False),
    ("resnet stem, 320x240", (64, 120, 160), 3, 2, 1, False),
    ("resnet stem, 224x224", (64, 112, 112), 3, 2, 1, False),
    ("vgg16 features.30", (512, 14, 14), 2, 2, 0, False),
    ("yolo SPPF k5 s1", (256, 20, 20), 5, 1, 2, False),
    ("googlenet ceil_mode", (64, 112, 112), 3, 2, 0, True),
]


def prefix(model: nn.Module, last: str) -> nn.Module:
    """Children of ``model`` in order up to ``last`` (a child's name)."""
    parts = []
    for name, child in model.named_children():
        parts.append(child)
        if name == last:
            return nn.Sequential(*parts)
    raise SystemExit(f"no child {last!r}")


def models() -> list[tuple[str, nn.Module, tuple[int, int]]]:
    """Name, model, input size; ViT-B/16 has no pooling: the mode's own cost."""
    torch.manual_seed(0)
    vgg, r18 = torchvision.models.vgg16(), torchvision.models.resnet18()
    return [
        ("vgg16 to features.8", vgg.features[:9], (240, 320)),
        ("resnet18 to layer2", prefix(r18, "layer2"), (240, 320)),
        ("resnet50", torchvision.models.resnet50(), (240, 320)),
        ("vgg16", vgg, (240, 320)),
        ("vit_b_16 (224x224, no pooling)", torchvision.models.vit_b_16(), (224, 224)),
    ]


def channels_last_pool(x: torch.Tensor, k: int, s: int, p: int, ceil: bool) -> torch.Tensor:
    """What a user might try instead: pool in channels-last, converting there and back."""
    y = x.contiguous(memory_format=torch.channels_last)
    return F.max_pool2d(y, k, s, p, ceil_mode=ceil).contiguous()


def under_mode(f: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with FastMaxPool():
            return f()

    return run


def timed(methods: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each method, interleaved round after round."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds + 1):  # the first round warms up
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def check_equal(methods: dict[str, Callable[[], torch.Tensor]]) -> None:
    results = [method() for method in methods.values()]
    for name, result in zip(methods, results, strict=True):
        if not torch.equal(result.contiguous(), results[0].contiguous()):
            raise SystemExit(f"{name} differs from {next(iter(methods))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="PyTorch thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    nets = models()
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s); ms, median of {args.rounds} rounds")
        print(f"  {'pooling layer':34s} {'PyTorch':>8s} {'ours':>7s} {'NHWC':>7s}  PyTorch/ours")
        with torch.no_grad():
            for what, shape, k, s, p, ceil in LAYERS:
                for batch in (1, 8):
                    x = torch.relu(torch.randn(batch, *shape))
                    pool = functools.partial(F.max_pool2d, x, k, s, p, ceil_mode=ceil)
                    methods: dict[str, Callable[[], torch.Tensor]] = {
                        "PyTorch": pool,
                        "ours": under_mode(pool),
                        "NHWC": functools.partial(channels_last_pool, x, k, s, p, ceil),
                    }
                    check_equal(methods)
                    ms = timed(methods, args.rounds)
                    print(f"  {what + f', batch {batch}':34s} {ms['PyTorch']:8.2f} "
                          f"{ms['ours']:7.2f} {ms['NHWC']:7.2f}  "
                          f"{ms['PyTorch'] / ms['ours']:5.2f}")  # fmt: skip
            print(f"  {'forward, one image (320x240)':34s} {'plain':>8s} {'ours':>7s}")
            for name, net, size in nets:
                forward = functools.partial(net.eval(), torch.randn(1, 3, *size))
                methods = {"plain": forward, "ours": under_mode(forward)}
                check_equal(methods)
                ms = timed(methods, args.rounds)
                print(f"  {name:34s} {ms['plain']:8.1f} {ms['ours']:7.1f}  "
                      f"{' ' * 8}{ms['plain'] / ms['ours']:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
