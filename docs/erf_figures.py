"""Regenerate the ERF figures of ``docs/erf.md`` (all offline, random weights, seeded).

* ``erf_growth.png``: Luo et al.'s finding. Stacks of ``n`` 3x3 convolutions (16 channels,
  Kaiming-normal weights, zero bias, ReLU after each), the ERF of the middle unit over 16
  noise inputs: its standard deviation grows about as ``sqrt(n)`` while the theoretical
  receptive field grows as ``2n + 1``. The all-ones linear stack, whose ERF std is exactly
  ``sqrt(n (k^2 - 1) / 12)``, is drawn for reference. Prints the numbers as a table.
* ``erf_depths.png``: the ERFs of the ReLU stacks of depth 4, 16 and 32 side by side, each
  with its theoretical box (:func:`hypercolumns.viz.plot.erf_comparison`).
* ``erf_map.png``: torchvision resnet50 ``layer3`` at 224 (:func:`hypercolumns.viz.plot.erf_map`).
* ``erf_on_image.png``: torchvision vgg16 ``features.22`` on the bundled photo, the ERF of
  the middle unit for that image (:func:`hypercolumns.viz.plot.erf_on_image`, what
  ``hypercolumns draw rf`` draws).

Run: ``uv run python docs/erf_figures.py [--out docs/images]``
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
import torchvision
from torch import nn

import hypercolumns as hc
from hypercolumns.demo import image_path
from hypercolumns.viz import plot

DEPTHS = (1, 2, 4, 8, 16, 32)
CHANNELS = 16
SAMPLES = 16


def relu_stack(n: int) -> nn.Sequential:
    """``n`` 3x3 convolutions ('same' padding), Kaiming-normal weights, zero bias, ReLU."""
    layers: list[nn.Module] = []
    for k in range(n):
        conv = nn.Conv2d(1 if k == 0 else CHANNELS, CHANNELS, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers)


def ones_stack(n: int) -> nn.Sequential:
    convs = [nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(n)]
    for conv in convs:
        nn.init.ones_(conv.weight)
    return nn.Sequential(*convs)


def growth(out: Path) -> None:
    from matplotlib.figure import Figure

    torch.manual_seed(0)
    rows = []
    relu: dict[int, hc.ERF] = {}
    for n in DEPTHS:
        size = 2 * n + 1 + 16  # the whole receptive field and a margin
        relu[n] = hc.erf(relu_stack(n), -1, size, samples=SAMPLES, batch_size=SAMPLES)
        linear = hc.erf(ones_stack(n), -1, size, samples=1)
        rows.append((n, relu[n].rf_size[0], relu[n].std[0], linear.std[0]))
    print(f"{'n':>3} {'rf':>4} {'std ReLU':>9} {'std ones':>9} {'sqrt(8n/12)':>11} {'std/rf':>7}")
    for n, rf, s_relu, s_ones in rows:
        exact = math.sqrt(n * 8 / 12)
        print(f"{n:>3} {rf:>4} {s_relu:>9.3f} {s_ones:>9.3f} {exact:>11.3f} {s_relu / rf:>7.3f}")

    ns = [r[0] for r in rows]
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    ax, ratio = fig.subplots(1, 2)
    ax.loglog(ns, [r[1] for r in rows], "o-", color="C3", label="theoretical rf size 2n + 1")
    ax.loglog(ns, [r[2] for r in rows], "s-", color="C0", label="ERF std, random weights + ReLU")
    ax.loglog(ns, [r[3] for r in rows], "^--", color="C2", label="ERF std, all-ones linear")
    ax.loglog(ns, [math.sqrt(n * 8 / 12) for n in ns], ":", color="0.4",
              label="sqrt(n (k\u00b2 - 1) / 12), k = 3")  # fmt: skip
    ax.set_xlabel("depth n (3x3 convolutions)")
    ax.set_ylabel("input pixels")
    ax.set_title("the rf grows as n, the ERF as sqrt(n)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ratio.semilogx(ns, [r[2] / r[1] for r in rows], "s-", color="C0", label="random + ReLU")
    ratio.semilogx(ns, [r[3] / r[1] for r in rows], "^--", color="C2", label="all-ones linear")
    ratio.set_xlabel("depth n")
    ratio.set_ylabel("ERF std / rf size")
    ratio.set_title("the ERF fills less and less of the rf")
    ratio.legend(fontsize=8)
    ratio.grid(True, which="both", alpha=0.3)
    plot.save(fig, out / "erf_growth.png", dpi=110)

    same = 2 * DEPTHS[-1] + 1 + 16
    torch.manual_seed(1)
    depths = [hc.erf(relu_stack(n), -1, same, samples=SAMPLES, batch_size=SAMPLES)
              for n in (4, 16, 32)]  # fmt: skip
    fig = plot.erf_comparison(depths, [f"{n} conv 3x3 + ReLU" for n in (4, 16, 32)])
    plot.save(fig, out / "erf_depths.png", dpi=110)


def networks(out: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    result = hc.erf(resnet, "layer3", 224, samples=32, batch_size=8)
    plot.save(plot.erf_map(result), out / "erf_map.png", dpi=110)

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    x, prep = hc.load_image(image_path(), vgg)
    result = dataclasses.replace(hc.erf(vgg, "features.22", prep.size, inputs=x), inputs="images")
    plot.save(plot.erf_on_image(result, prep.unnormalize(x[0])), out / "erf_on_image.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args()
    growth(args.out)
    networks(args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
