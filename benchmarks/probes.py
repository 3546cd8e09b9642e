"""Dense prediction of a linear pixel probe, side by side on CPU: ours against what users write.

torchvision resnet50 (seeded random weights), layers ``layer1..layer4`` (3840 channels), a
linear probe with K = 21 classes and per-channel standardisation:

* ``floor``: the truncated forward alone (the network prefix up to ``layer4``, keeping the four
  maps): what any method pays;
* ``ours``: :meth:`hypercolumns.Probe.predict`: each layer's block of the (standardisation-
  folded) map applied at the layer's own resolution, only the 21 outputs resampled; includes
  the check that the model's weights are those the probe was fitted with;
* ``explicit``: dense hypercolumns (:func:`hypercolumns.hypercolumns`, ``(1, 3840, H, W)``),
  standardised, then the same map (``einsum``), as users write it.

At 224x224 the methods run interleaved, round after round; each reports its median time and
the median over rounds of its ratio to the floor in the same round. At 1024x1024 the explicit
route needs about 16 GB for the hypercolumns alone: the memory guard must refuse it
(``OutputTooLargeError``) rather than run out of memory, while ours runs. Peak memory: each
method once in a fresh process, resident memory sampled every millisecond in a thread, minus
the resident memory just before the call.

Run: ``uv run python benchmarks/probes.py [--rounds 7] [--threads N] [--skip-large]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# benchmarks/hypercolumns.py would shadow the package when this file runs as a script
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402
import torchvision  # noqa: E402

import hypercolumns as hc  # noqa: E402
from hypercolumns.probes import Head, Probe, Standardizer  # noqa: E402
from hypercolumns.probes.probe import FORMAT, FORMAT_VERSION  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
K = 21


def setup(size: int) -> tuple[torch.nn.Module, Probe, torch.Tensor]:
    """The model, a probe with a random head and standardisation, one image."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    mapper = hc.features.linear.LinearMapper(model, LAYERS, 64)
    c = mapper.channels
    gen = torch.Generator().manual_seed(1)
    head = Head("linear", {"weight": torch.randn(K, c, generator=gen) / c**0.5,
                           "bias": torch.randn(K, generator=gen)})  # fmt: skip
    st = Standardizer(torch.rand(c, generator=gen), torch.rand(c, generator=gen) + 0.5)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": "classify",
        "head": "linear", "classes": [str(i) for i in range(K)], "ignore_index": 255,
        "model": "torchvision:resnet50", "weights": "random (seed 0)",
        "weights_sha256": hc.models.weights_digest(model), "align": "rf", "in_channels": 3,
        "input_size": [64, 64], "preprocessing": {"resize": None, "crop": None},
        "layers": [{"name": layer.name, "channels": layer.channels} for layer in mapper.layers],
    }  # fmt: skip
    x = torch.randn(1, 3, size, size, generator=gen)
    return model, Probe(head, st, meta, model), x


def methods(model: torch.nn.Module, probe: Probe, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    size = x.shape[-1]
    features = hc.features.linear.LinearMapper(model, LAYERS, size).extractor.features
    w, b = probe.head.tensors["weight"], probe.head.tensors["bias"]
    mean, std = probe.standardizer.mean, probe.standardizer.std

    def floor() -> Any:
        with torch.no_grad():
            return features(x, as_maps=True)

    def explicit() -> torch.Tensor:
        with torch.no_grad():
            cols = hc.hypercolumns(model, x, LAYERS).features
            cols = (cols - mean[None, :, None, None]) / std[None, :, None, None]
            return torch.einsum("kc,bchw->bkhw", w, cols) + b[None, :, None, None]

    return {"floor": floor, "ours": lambda: probe.predict(x), "explicit": explicit}


def timing(size: int, rounds: int) -> dict[str, Any]:
    model, probe, x = setup(size)
    fns = methods(model, probe, x)
    ours, want = fns["ours"](), fns["explicit"]()
    diff = float((ours - want).abs().max()) / float(want.abs().max())
    for fn in fns.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        floor = times["floor"]
        return {k: statistics.median(t / f for t, f in zip(v, floor, strict=True))
                for k, v in times.items()}  # fmt: skip

    return {
        "size": size,
        "channels": probe.slices["layer4"].stop,
        "median_s": {k: statistics.median(v) for k, v in wall.items()},
        "ratio_to_floor": ratios(wall),
        "cpu_ratio_to_floor": ratios(cpu),
        "max_abs_diff_over_scale": diff,
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(method: str, size: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    model, probe, x = setup(size)
    fn = methods(model, probe, x)[method]
    probe.predict(torch.zeros(1, 3, 64, 64))  # the weights check, once, outside the measure
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
    start = time.perf_counter()
    try:
        fn()
        outcome = "ran"
    except hc.OutputTooLargeError as err:
        outcome = f"refused: {type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    peak = max(peak, _rss())
    queue.put({"outcome": outcome, "peak_bytes": peak - base, "seconds": seconds})


def peak_memory(size: int, names: list[str]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {}
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak, args=(name, size, queue))
        proc.start()
        out[name] = queue.get()
        proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-large", action="store_true", help="Leave out 1024x1024.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "k": K, "layers": LAYERS}
    report["224"] = timing(224, args.rounds)
    report["224"]["peak"] = peak_memory(224, ["floor", "ours", "explicit"])
    print(json.dumps(report, indent=1), flush=True)
    if not args.skip_large:
        report["1024"] = {"peak": peak_memory(1024, ["floor", "ours", "explicit"])}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
