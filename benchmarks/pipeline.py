"""Whole data sets into stores: our pipeline against a plain loop, and the model's own speed.

Throughput: 200 generated JPEG images (320x240), torchvision vgg16 layers [3, 8] with random
weights, sparse hypercolumns at 1024 pixels per image, CPU. Side by side in one process,
interleaved round after round, in a new seeded order each round:

* ``model only, batch B``: the model's forward (the prefix up to ``features.8``, which is all
  any method needs) on preloaded, preprocessed batches of 1 and of 8; the faster is the
  ceiling;
* ``model only, batch B, our route``: the same on the route the library's sparse forward passes
  take on a CPU (a channels-last copy of the input, see :mod:`hypercolumns.features.maps`: equal
  values but for rounding, faster): the ceiling of the model as the library runs it, against
  which ``ours`` measures what the pipeline costs around the model;
* ``plain loop``: per image, PIL, normalise, the *full* forward with hooks on the two layers,
  ``F.interpolate`` of each map to the image, 1024 pixels taken, ``np.savez`` of their features
  and their pixels (what any store keeps): the loop people write without this library (as the
  hypercolumn blog posts do);
* ``library loop``: per image, ``hc.load_image`` (open with PIL, preprocess),
  ``hc.hypercolumns(model, x, [3, 8], points=1024)``, ``np.savez`` of the features and the
  points into one ``.npz``: what the README's quick start leads to;
* ``library loop, planned``: the same with one ``hc.HypercolumnExtractor`` planned once;
* ``ours``: :func:`hypercolumns.pipeline.run` with its defaults (on a CPU: batch size 1,
  decoding in the main process; ``--workers N`` for DataLoader workers) into a ``.parquet``
  store, timed end to end (model built, weights hashed) and in steady state (from the first
  progress call to the last); its set-up before the first image (``RunSummary.setup_seconds``)
  is printed beside the weights digest timed alone, the one cost per run the loops do not pay.
* ``ray`` (with ``--ray``; needs ``hypercolumns[ray]``): the same run with
  ``engine="ray"`` on a local Ray instance with this machine's CPUs, started once before the
  rounds (its start-up time is reported apart): decoding in Ray tasks, the model in one actor
  (half the CPUs, as many PyTorch threads), the store written by this process. Timed end to
  end (actor started, model sent to it) and in steady state (from the first batch of results
  to the last). No goal: the Ray engine is for clusters; this measures its cost on one machine.

``--small`` runs the same with torchvision resnet18 up to ``layer2`` (layers ``layer1,layer2``,
64 + 128 channels), a forward about ten times shorter, where the costs around the model weigh
most; ``--model SPEC --layers L1,L2`` any other (the model alone is then its children up to the
last layer's, which fits models that run their children in order).

The command line makes glibc's ``malloc`` keep freed memory for reuse
(``hypercolumns._allocator``); so does this script, for every method alike, before the
first one runs (``--default-malloc`` leaves glibc's defaults, to see what that is worth).

Peak memory of banding: one 4096x4096 JPEG, vgg16 layers 3, 8, 15 (conv1_2, conv2_2, conv3_3
after ReLU: 64 + 128 + 256 = 448 channels), dense float16 into a ``.zarr`` store with the
``hypercolumns extract`` command in a subprocess; its peak resident memory from
``getrusage(RUSAGE_CHILDREN)``. The in-memory result alone would be 448 x 4096^2 x 2 bytes.

Run: ``uv run python benchmarks/pipeline.py [--rounds 2] [--images N] [--small] [--workers N]
[--skip-banded] [--skip-plain] [--ray] [--default-malloc]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _library() -> ModuleType:
    """The ``hypercolumns`` package, not this folder (run as a script, it shadows the name)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    return importlib.import_module("hypercolumns")


hc = _library()
from hypercolumns._allocator import keep_freed_memory  # noqa: E402
from hypercolumns.models import weights_digest  # noqa: E402
from hypercolumns.pipeline import Settings, run  # noqa: E402

MODEL, LAYERS, POINTS, RAY_BATCH = "torchvision:vgg16", "3,8", 1024, 8
SMALL = ("torchvision:resnet18", "layer1,layer2")  # --small: where fixed costs weigh most


def layer_list(spec: str) -> list[int | str]:
    return [int(p) if p.lstrip("-").isdigit() else p for p in spec.split(",")]


def prefix(module: torch.nn.Module, last: str) -> torch.nn.Module:
    """The model's children in order up to the one holding layer ``last`` (recursively): the
    truncated forward that every method needs, for models whose forward runs their children
    in order up to there (VGG's ``features``, ResNet's stem and stages)."""
    parts: list[torch.nn.Module] = []
    for name, child in module.named_children():
        if name == last:
            return torch.nn.Sequential(*parts, child)
        if last.startswith(name + "."):
            return torch.nn.Sequential(*parts, prefix(child, last[len(name) + 1 :]))
        parts.append(child)
    raise SystemExit(f"no layer {last!r} among the children of {type(module).__name__}")


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth random colour fields with some texture."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    paths = []
    for i in range(n):
        coarse = rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255
        field = np.asarray(
            Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def build_model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return hc.load_model(MODEL)


def layer_names(model: torch.nn.Module) -> list[str]:
    return [layer.name for layer in hc.HypercolumnExtractor(model, layer_list(LAYERS), 64).layers]


def model_only(model: torch.nn.Module, paths: list[Path], batch: int, route: bool) -> float:
    """Images per second of the model's prefix alone; ``route``: channels-last, as the library
    runs it for sparse hypercolumns on a CPU (the copy into that layout is timed)."""
    forward = prefix(model, layer_names(model)[-1])
    inputs = [hc.load_image(p, model)[0] for p in paths]
    batches = [torch.cat(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    layout = torch.channels_last if route else torch.contiguous_format
    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            forward(x.contiguous(memory_format=layout))
    return len(paths) / (time.perf_counter() - start)


def plain_loop(model: torch.nn.Module, paths: list[Path], out: Path) -> float:
    """The loop people write without this library: PIL, normalise, the full forward with
    hooks on the two layers, each map upsampled to the image, 1024 pixels taken, ``np.savez``."""
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    names = layer_names(model)
    maps: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: maps.__setitem__(n, o.clone())
        )
        for n in names
    ]
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    try:
        for path in paths:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
            x = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
            with torch.no_grad():
                model(x[None])
            h, w = x.shape[1:]
            flat = torch.randperm(h * w, generator=gen)[:POINTS]
            ys, xs = flat // w, flat % w
            columns = [
                F.interpolate(maps[n], size=(h, w), mode="bilinear", align_corners=False)[0][
                    :, ys, xs
                ]
                for n in names
            ]
            features = torch.cat(columns).T.numpy()
            np.savez(out / f"{path.stem}.npz", features=features, points=torch.stack([ys, xs], 1))
    finally:
        for hook in hooks:
            hook.remove()
    return len(paths) / (time.perf_counter() - start)


def library_loop(model: torch.nn.Module, paths: list[Path], out: Path, planned: bool) -> float:
    out.mkdir(parents=True, exist_ok=True)
    extractors: dict[tuple[int, int], object] = {}
    start = time.perf_counter()
    for i, path in enumerate(paths):
        x, _ = hc.load_image(path, model)
        if planned:
            size = tuple(x.shape[-2:])
            if size not in extractors:
                extractors[size] = hc.HypercolumnExtractor(model, layer_list(LAYERS), size)
            result = extractors[size](x, POINTS, seed=i)  # type: ignore[operator]
        else:
            result = hc.hypercolumns(model, x, layer_list(LAYERS), points=POINTS, seed=i)
        assert result.points is not None
        np.savez(out / f"{path.stem}.npz", features=result.features[0], points=result.points[0])
    return len(paths) / (time.perf_counter() - start)


def ours(
    model: torch.nn.Module,
    folder: Path,
    out: Path,
    n: int,
    workers: int | None,
    engine: str = "local",
) -> tuple[float, float, float]:
    """End-to-end (weights hashed, plans, workers or actors started) and steady-state images
    per second of the pipeline, with the model already built, and the seconds of its set-up
    (``RunSummary.setup_seconds``: before the first image). Steady: from the first progress
    call to the last; Ray results come a batch at a time (when an actor's call ends), so from
    the first batch."""
    marks: list[float] = []
    local = engine == "local"
    start = time.perf_counter()
    summary = run(
        [folder],
        out,
        Settings(MODEL, LAYERS, points=POINTS),
        workers=workers if local else 0,
        batch_size=None if local else RAY_BATCH,
        device="cpu",
        progress=lambda done, total: marks.append(time.perf_counter()),
        model=model,
        engine=engine,  # type: ignore[arg-type]
    )
    end = time.perf_counter()
    assert summary.done == n, summary
    first = 0 if local else RAY_BATCH
    return n / (end - start), (n - first) / (marks[-1] - marks[first]), summary.setup_seconds


def around_the_model(
    model: torch.nn.Module, folder: Path, store: Path, out: Path
) -> dict[str, float]:
    """CPU milliseconds per image of what the pipeline does besides the model, each measured
    alone on one thread: decoding (read, preprocess, sample the points) and writing the store
    (the images of ``store``, a store the pipeline wrote, written again with its writer, every
    commit included). On a machine whose cores the model alone keeps busy, these costs take
    the same cores, so ``ours / model only, our route`` is at most ``F / (F + decode +
    write)``, where ``F`` is the core time per image of the model alone as the library runs it
    (``threads / rate`` on our route); the extraction's own sampling and the main thread's
    bookkeeping are left out, so the bound is, if anything, high."""
    from hypercolumns.io.store import BOOK, ImageResult, open_writer
    from hypercolumns.pipeline.decoding import DecodeOptions, decode
    from hypercolumns.pipeline.sources import expand_inputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sources = expand_inputs([folder])
        options = DecodeOptions.for_model(model, Settings(MODEL, LAYERS, points=POINTS))
        start = time.thread_time()
        for source in sources:
            decode(source, options)
        decode_ms = (time.thread_time() - start) / len(sources) * 1000
        written = hc.open_store(store)
        config = json.loads((store / BOOK / "config.json").read_text())
        results = [
            ImageResult(key, written[key].features, written[key].points, None, written.record(key))
            for key in written
        ]
        start = time.process_time()  # the writer encodes in a thread of its own
        with open_writer(out, config) as writer:
            for result in results:
                writer.write(result)
        write_ms = (time.process_time() - start) / len(results) * 1000
    finally:
        torch.set_num_threads(threads)
    return {"decode": decode_ms, "write": write_ms}


def start_ray() -> float:
    """Start a local Ray instance with this machine's CPUs; the seconds it took."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers: this interpreter
    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return time.perf_counter() - start


def banded_peak(work: Path, size: int) -> dict[str, float]:
    """Peak RSS of ``hypercolumns extract`` on one ``size``x``size`` image, in a subprocess."""
    image = make_images(work / "big", 1, (size, size), seed=1)[0]
    out = work / "big.zarr"
    cmd = [sys.executable, "-m", "hypercolumns", "extract", MODEL, str(image), "--layers",
           "3,8,15", "--dtype", "float16", "--workers", "0", "--device", "cpu", "--out",
           str(out), "--format", "json"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"banded run failed: {done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    store = hc.open_store(out)
    record = store.record(image.name)
    shape = tuple(record["shape"])
    full = 448 * size * size * 2
    return {
        "size": size,
        "shape": list(shape),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "in_memory_result_gb": round(full / 1e9, 2),
        "band_rows": record["bands"]["rows"],
        "bands": record["bands"]["count"],
        "stored_gb": round(record["bytes"] / 1e9, 2),
    }


def main() -> None:
    global MODEL, LAYERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default=None, help=f"model spec [default: {MODEL}]")
    parser.add_argument("--layers", default=None, help=f"layers [default: {LAYERS}]")
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"a small, fast model: {SMALL[0]} up to {SMALL[1].split(',')[-1]} (layers {SMALL[1]})",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers [default: the pipeline's]"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--banded-size", type=int, default=4096)
    parser.add_argument("--skip-banded", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="leave out the plain loop")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also the Ray engine")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc thresholds as they are"
    )
    args = parser.parse_args()
    if args.small:
        MODEL, LAYERS = SMALL
    MODEL, LAYERS = args.model or MODEL, args.layers or LAYERS
    kept = not args.default_malloc and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, object] = {
        "model": f"{MODEL} [{LAYERS}]",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "freed memory kept": kept,
    }
    work = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    try:
        if not args.skip_throughput:
            paths = make_images(work / "images", args.images, (240, 320))
            model = build_model()
            rates: dict[str, list[float]] = {}
            setups: dict[str, list[float]] = {}
            hc.layers(model, 32)  # the first analysis imports torch._dynamo: not timed
            methods: dict[str, Callable[[int], float | tuple[float, float, float]]] = {
                "model only, batch 1": lambda r: model_only(model, paths, 1, False),
                "model only, batch 8": lambda r: model_only(model, paths, 8, False),
                "model only, batch 1, our route": lambda r: model_only(model, paths, 1, True),
                "model only, batch 8, our route": lambda r: model_only(model, paths, 8, True),
                "plain loop": lambda r: plain_loop(model, paths, work / f"plain{r}"),
                "library loop": lambda r: library_loop(model, paths, work / f"lib{r}", False),
                "library loop, planned": lambda r: library_loop(
                    model, paths, work / f"planned{r}", True
                ),
                "ours": lambda r: ours(
                    model, work / "images", work / f"s{r}.parquet", len(paths), args.workers
                ),
            }
            if args.skip_plain:
                del methods["plain loop"]
            if args.ray:
                report["ray start seconds"] = round(start_ray(), 1)
                methods["ray"] = lambda r: ours(
                    model, work / "images", work / f"ray{r}.parquet", len(paths), 0, "ray"
                )
            order = list(methods)
            for r in range(args.rounds):
                random.Random(r).shuffle(order)  # no method always follows the same one
                for name in order:
                    value = methods[name](r)
                    if isinstance(value, tuple):
                        rates.setdefault(f"{name}, end to end", []).append(value[0])
                        rates.setdefault(f"{name}, steady", []).append(value[1])
                        setups.setdefault(f"{name}: set-up, before the first image", []).append(
                            value[2]
                        )
                    else:
                        rates.setdefault(name, []).append(value)
                    if not args.json:
                        print(f"round {r}: {name}: {value}", file=sys.stderr)
            medians = {k: statistics.median(v) for k, v in rates.items()}
            report["images_per_second"] = {k: round(v, 2) for k, v in medians.items()}
            start = time.perf_counter()
            weights_digest(model)
            report["seconds once per run"] = {
                **{k: round(statistics.median(v), 2) for k, v in setups.items()},
                "of which the weights digest (timed alone)": round(time.perf_counter() - start, 2),
                f"{args.images} images at the planned loop's rate": round(
                    args.images / medians["library loop, planned"], 2
                ),
            }
            for ceiling in ("model only", "model only, our route"):  # the best batch
                b1, b8 = (ceiling.replace("only", f"only, batch {b}") for b in (1, 8))
                rates[ceiling] = [max(x, y) for x, y in zip(rates[b1], rates[b8], strict=True)]
                medians[ceiling] = max(medians[b1], medians[b8])
            around = around_the_model(model, work / "images", work / "s0.parquet",
                                      work / "again.parquet")  # fmt: skip
            core_ms = torch.get_num_threads() / medians["model only, our route"] * 1000
            report["core ms per image"] = {
                "model only, our route (threads / rate)": round(core_ms, 1),
                **{f"{k}, alone on one thread": round(v, 1) for k, v in around.items()},
            }
            ours_e2e, ours_steady = medians["ours, end to end"], medians["ours, steady"]

            def paired(a: str, b: str) -> float:
                """The median of the rounds' ratios: methods run side by side in a round, so a
                slow spell of a noisy machine slows both."""
                return round(
                    statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 2
                )

            report["ratios"] = {
                "ours / plain loop": round(ours_e2e / medians.get("plain loop", math.nan), 2),
                "ours / library loop": round(ours_e2e / medians["library loop"], 2),
                "ours / library loop, planned": round(
                    ours_e2e / medians["library loop, planned"], 2
                ),
                "ours / planned, median per round": paired(
                    "ours, end to end", "library loop, planned"
                ),
                "ours / model only (best batch)": round(ours_e2e / medians["model only"], 2),
                "ours / model only, median per round": paired("ours, end to end", "model only"),
                "ours / model only, our route": round(
                    ours_e2e / medians["model only, our route"], 2
                ),
                "ours / model only, our route, median per round": paired(
                    "ours, end to end", "model only, our route"
                ),
                "ours / model only, our route, at most (costs around)": round(
                    core_ms / (core_ms + sum(around.values())), 2
                ),
                "ours steady / model only": round(ours_steady / medians["model only"], 2),
            }
            if args.ray:
                ratios = report["ratios"]
                assert isinstance(ratios, dict)
                for what in ("end to end", "steady"):
                    ray_rate = medians[f"ray, {what}"]
                    ratios[f"ray {what} / ours {what}"] = round(
                        ray_rate / medians[f"ours, {what}"], 2
                    )
                    ratios[f"ray {what} / model only"] = round(ray_rate / medians["model only"], 2)
        if not args.skip_banded:
            report["banded"] = banded_peak(work, args.banded_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
        return
    for section, values in report.items():
        if isinstance(values, dict):
            print(f"{section}:")
            for k, v in values.items():
                print(f"  {k:52s} {v}")
        else:
            print(f"{section}: {values}")


if __name__ == "__main__":
    main()
