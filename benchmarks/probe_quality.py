"""How well pixel probes segment texture mosaics, made offline with exact masks.

Compares, on the same sampled training pixels and the same held-out images:

* linear probes (``hc.fit_probe``) on several layers of vgg16, on one early layer, on one late
  layer, and on the raw pixels (a probe on the input itself);
* scikit-image's ``multiscale_basic_features`` with a random forest (the classic pixel
  classifier of ``skimage.future.fit_segmenter`` and ilastik);
* ``align="rf"`` against ``align="half-pixel"`` on the pixels near a class boundary, on
  resnet18 (on vgg16 the two coincide: its units sit exactly where half-pixel sampling puts
  them).

The networks have random weights (seeded): no weights can be downloaded here. Pretrained
weights change these numbers (they are what hypercolumns are for); the comparison of methods on
the same pixels is what this reports.

    uv run python benchmarks/probe_quality.py [--train 8] [--test 8] [--size 128] [--points 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

# run as a script, this folder's hypercolumns.py would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import hypercolumns as hc  # noqa: E402
from hypercolumns.probes.metrics import Confusion  # noqa: E402
from hypercolumns.probes.mosaics import texture_mosaics  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def scores(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, classes: int) -> float:
    """mIoU of ``pred`` over the ``valid`` pixels of every image (the probes' own metric)."""
    conf = Confusion([str(c) for c in range(classes)])
    for i in range(len(pred)):
        conf.add(target[i], pred[i], valid[i])
    out = conf.scores()
    return out["miou"], out["pixel_accuracy"]


def boundary(masks: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Pixels within ``width`` of another class."""
    m = masks.float()[:, None]
    k = 2 * width + 1
    high = nn.functional.max_pool2d(m, k, 1, width)
    low = -nn.functional.max_pool2d(-m, k, 1, width)
    return (high != low)[:, 0]


class Pixels(nn.Module):
    """The input itself as a layer: a probe on it is a probe on raw pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(3)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.identity(x)


def skimage_forest(train_x, train_m, test_x, points, seed):
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    feats = partial(multiscale_basic_features, channel_axis=-1, sigma_min=1, sigma_max=16)
    rows, labels = [], []
    for i in range(len(train_x)):
        f = feats(train_x[i].permute(1, 2, 0).numpy())
        pts = hc.features.points.sample_points(
            points, 1, tuple(train_m.shape[-2:]), train_m[i : i + 1], seed + i
        )[0].long()
        rows.append(f[pts[:, 0], pts[:, 1]])
        labels.append(train_m[i][pts[:, 0], pts[:, 1]].numpy())
    forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, max_depth=10, random_state=seed)
    forest.fit(np.concatenate(rows), np.concatenate(labels))
    preds = []
    for i in range(len(test_x)):
        f = feats(test_x[i].permute(1, 2, 0).numpy())
        preds.append(
            torch.from_numpy(forest.predict(f.reshape(-1, f.shape[-1])).reshape(f.shape[:2]))
        )
    return torch.stack(preds).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    vgg = torchvision.models.vgg16().eval()
    train_x, train_m = texture_mosaics(args.train, args.size, classes=args.classes, seed=args.seed)
    test_x, test_m = texture_mosaics(
        args.test, args.size, classes=args.classes, seed=args.seed + 1000
    )
    norm_train, norm_test = (train_x - MEAN) / STD, (test_x - MEAN) / STD
    near = boundary(test_m)
    everywhere = torch.ones_like(near)
    print(
        f"texture mosaics: {args.classes} classes, {args.train} training and {args.test} test "
        f"images of {args.size}x{args.size}, {args.points} training pixels per image; "
        "vgg16 with random weights (seed 0)\n"
    )
    print(f"{'method':44s} {'mIoU':>6s} {'acc':>6s} {'mIoU@edge':>9s} {'s':>6s}")
    torch.manual_seed(args.seed)
    resnet = torchvision.models.resnet18().eval()
    blocks = ["relu", "layer1", "layer2", "layer3"]
    runs = [
        ("linear probe, vgg16 [3, 8, 15, 22]", vgg, [3, 8, 15, 22], "rf"),
        ("linear probe, vgg16 [3] (early)", vgg, [3], "rf"),
        ("linear probe, vgg16 [22] (late)", vgg, [22], "rf"),
        ("linear probe, raw pixels", Pixels().eval(), ["identity"], "rf"),
        ("linear probe, resnet18 relu..layer3, rf", resnet, blocks, "rf"),
        ("linear probe, resnet18 relu..layer3, half-pixel", resnet, blocks, "half-pixel"),
    ]
    for name, model, layers, align in runs:
        t0 = time.perf_counter()
        probe = hc.fit_probe(
            model, norm_train, train_m, layers, points=args.points, seed=args.seed, align=align
        )
        pred = probe.segment(norm_test)
        seconds = time.perf_counter() - t0
        miou, acc = scores(pred, test_m, everywhere, args.classes)
        edge, _ = scores(pred, test_m, near, args.classes)
        print(f"{name:44s} {miou:6.3f} {acc:6.3f} {edge:9.3f} {seconds:6.1f}")
    t0 = time.perf_counter()
    pred = skimage_forest(train_x, train_m, test_x, args.points, args.seed)
    seconds = time.perf_counter() - t0
    miou, acc = scores(pred, test_m, everywhere, args.classes)
    edge, _ = scores(pred, test_m, near, args.classes)
    name = "skimage multiscale_basic_features + forest"
    print(f"{name:44s} {miou:6.3f} {acc:6.3f} {edge:9.3f} {seconds:6.1f}")


if __name__ == "__main__":
    main()
