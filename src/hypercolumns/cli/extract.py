"""``hypercolumns extract``: hypercolumns of images into one file or a resumable store.

Arguments are reconciled here; the work is the library's: single files are
:func:`hypercolumns.io.files.extract_to_file`, stores :func:`hypercolumns.pipeline.run`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hypercolumns.cli import _signals
from hypercolumns.cli._options import (
    Align,
    Crop,
    DType,
    Format,
    FormatOpt,
    Layers,
    Mean,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    Std,
    Weights,
    count_or_file,
    floats,
    parse_kwargs,
)
from hypercolumns.cli._render import plain, progress_callback, rate_progress, stderr, stdout
from hypercolumns.errors import HypercolumnsError, OutputTooLargeError
from hypercolumns.features.align import check_align

if TYPE_CHECKING:
    from hypercolumns.pipeline import RunSummary

__all__ = ["extract"]


class Engine(StrEnum):
    local = "local"
    ray = "ray"


def parse_bytes(text: str) -> int:
    """``--max-memory`` text (``512MB``, ``4GB``, ``1GiB``) as bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
    value = text.strip().upper()
    number = value.rstrip("KMGTIB")
    try:
        size = float(number) * units[value[len(number) :].strip()]
    except (KeyError, ValueError) as err:
        raise HypercolumnsError(f"--max-memory expects e.g. 512MB or 4GB, got {text!r}") from err
    if not size >= 1:  # also NaN
        raise HypercolumnsError(f"--max-memory must be a positive size (e.g. 512MB), got {text!r}")
    return int(size) if size < 2**63 else 2**63 - 1


def extract(
    model: ModelArg,
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS...",
            help="Image files (any format Pillow reads), folders (searched recursively), glob "
            "patterns ('data/**/*.png'), or .txt/.csv lists of paths (.csv: a 'path' column "
            "and optionally 'mask', label images that stratify --points).",
            show_default=False,
        ),
    ],
    layers_spec: Layers,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="A store for many images: NAME.zarr (dense) or NAME.parquet (sparse, with "
            "--points N), resumable; or one file: .npy (+ PATH.json metadata), .safetensors "
            "or .pt.",
            show_default=False,
        ),
    ],
    points: Annotated[
        str | None,
        typer.Option(
            "--points",
            "-p",
            metavar="N|FILE",
            help="Sparse hypercolumns: sample N pixels per image, or (single files only) read "
            "(y, x) pixel coordinates from a .json, .npy or .csv file [default: dense, every "
            "pixel].",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed for --points N [default: random; 0 for stores]."),
    ] = None,
    align: Annotated[
        Align, typer.Option("--align", help="rf: by receptive-field centres; half-pixel: classic.")
    ] = Align("rf"),
    dtype: Annotated[DType, typer.Option("--dtype", help="Stored precision.")] = DType.float32,
    size: Annotated[
        str | None,
        typer.Option("--size", metavar="H,W", help="Dense output grid [default: the input size]."),
    ] = None,
    resize: Resize = None,
    crop: Crop = None,
    mean: Mean = None,
    std: Std = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            metavar="SIZE",
            help="Single files: refuse outputs larger than this [default: 4GB]. Stores: the "
            "working set of one batch; larger images are computed in bands [default: 1GB].",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Stores: processes decoding images while the model runs (0: none) [default: 2 "
            "with a GPU, 0 on a CPU, whose cores the model already uses]; --engine ray: the "
            "most decoding tasks at a time [default: as many as Ray runs].",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Stores: images of one size computed together [default: 1 on a CPU, else 8].",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Stores: where the model runs: cpu, cuda, cuda:1 or auto [default: auto, "
            "CUDA when available; --engine ray: GPU actors when the cluster has GPUs].",
            show_default=False,
        ),
    ] = None,
    band_rows: Annotated[
        int | None,
        typer.Option(
            "--band-rows",
            min=1,
            help="Stores: output rows per band for images computed in bands [default: the "
            "most that --max-memory allows].",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Stores: replace an existing store made with another configuration.",
        ),
    ] = False,
    engine: Annotated[
        Engine | None,
        typer.Option(
            "--engine",
            help="Stores: local (decoding in --workers processes, the model in this one) or ray "
            "(a Ray Data pipeline: decoding in Ray tasks, the model in a pool of actors, one GPU "
            "each where there are GPUs; needs hypercolumns[ray]; see docs/ray.md) "
            "[default: local].",
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="ADDR",
            help="--engine ray: the cluster to join: auto (started with 'ray start' on this "
            "machine), HOST:6379, or ray://HOST:10001 (Ray Client) [default: $RAY_ADDRESS, else "
            "a new Ray instance on this machine].",
            show_default=False,
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors",
            min=1,
            help="--engine ray: model actors [default: one per GPU; without GPUs one per node, "
            "together using half the cluster's CPUs].",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Extract hypercolumns of INPUTS... and write them with their metadata.

    Dense by default: per image a (C, H, W) stack of the chosen layers, each upsampled to
    the input grid (global layers broadcast); with --points, (N, C) at N pixels.

    **Stores** (many images, resumable): **NAME.zarr**, one (C, H, W) array per image;
    **NAME.parquet** (with --points N), rows of key, y, x, (label,) features. Images are
    decoded while the model runs (in --workers processes; on a CPU by default in a thread).
    Commits: .zarr each image, .parquet a part of up to 1024 images, 64 MiB or 60 s (Ctrl-C
    and SIGTERM commit what is done first); rerunning the same command skips what is
    committed, also after a crash. Unreadable images are recorded and skipped
    (exit code 1 when any failed). Dense images too large for --max-memory are computed in
    bands. See docs/stores.md. With --engine ray the same run is a Ray Data pipeline, on
    this machine or a Ray cluster: see docs/ray.md.

    **Single files**, by extension. **.npy**: one array with a leading image axis,
    (B, C, H, W) or (B, N, C), so all images must have the same size (use
    --resize/--crop); metadata in PATH.json. **.safetensors** / **.pt**: one entry per
    image keyed by its file stem (sizes may differ), points under STEM/points; metadata in
    the safetensors header (key "hypercolumns") or the .pt dict's "metadata". Metadata:
    model spec, layers, channel slices, geometry per layer, preprocessing per image,
    package version. Nothing is written to --out unless everything succeeded.

    Examples:

    hypercolumns extract torchvision:vgg16 cat.jpg --layers 3,8 --out cat.npy

    hypercolumns extract torchvision:vgg16 photos/ --layers 3,8 --points 1024 --out hc.parquet

    hypercolumns extract torchvision:vgg16 /data -l 3,8 -o hc.zarr --engine ray --ray-address auto
    """
    from hypercolumns.io.store import store_kind
    from hypercolumns.pipeline import expand_inputs

    common: dict[str, Any] = {
        "points": points, "seed": seed, "align": align, "dtype": dtype, "size": size,
        "resize": resize, "crop": crop, "mean": mean, "std": std, "max_memory": max_memory,
        "fmt": fmt, "model_kwargs": model_kwargs, "weights": weights, "pretrained": pretrained,
    }  # fmt: skip
    if store_kind(out) is not None:
        _to_store(
            model, inputs, layers_spec, out, workers=workers, batch_size=batch_size,
            device=device, band_rows=band_rows, overwrite=overwrite, engine=engine,
            ray_address=ray_address, actors=actors, **common,
        )  # fmt: skip
        return
    given = {"--workers": workers, "--batch-size": batch_size, "--device": device,
             "--band-rows": band_rows, "--overwrite": overwrite or None, "--engine": engine,
             "--ray-address": ray_address, "--actors": actors}  # fmt: skip
    store_only = [name for name, value in given.items() if value is not None]
    if store_only:
        raise HypercolumnsError(
            f"{', '.join(store_only)} apply to stores (--out NAME.zarr or NAME.parquet), not to "
            f"a single {out.suffix or 'file'} output"
        )
    sources = expand_inputs(inputs, check_keys=False)  # entries are keyed by file stem
    if any(s.mask is not None for s in sources):
        raise HypercolumnsError(
            "masks stratify the points of a store: write --out NAME.parquet with --points N"
        )
    _to_file(model, [s.path for s in sources], layers_spec, out, **common)


def _to_file(
    model: str,
    images: list[Path],
    layers_spec: str,
    out: Path,
    *,
    points: str | None,
    seed: int | None,
    align: Align,
    dtype: DType,
    size: str | None,
    resize: str | None,
    crop: str | None,
    mean: str | None,
    std: str | None,
    max_memory: str | None,
    fmt: Format,
    model_kwargs: str | None,
    weights: Path | None,
    pretrained: bool,
) -> None:
    """``extract`` into one .npy, .safetensors or .pt file."""
    from hypercolumns._checks import parse_size
    from hypercolumns.io.files import check_suffix, extract_to_file

    max_memory = max_memory or "4GB"
    check_suffix(out)
    limit = parse_bytes(max_memory)
    mean_v, std_v = floats(mean, "--mean"), floats(std, "--std")
    out_size = parse_size(size) if size is not None else None
    kwargs = parse_kwargs(model_kwargs)
    sample = count_or_file(points)
    with progress_callback("extracting") as report:
        try:
            written = extract_to_file(
                model, images, layers_spec, out, points=sample, seed=seed,
                align=check_align(align.value), dtype=dtype.value, size=out_size,
                max_bytes=limit, resize=resize, crop=crop, mean=mean_v, std=std_v,
                model_kwargs=kwargs, weights=weights, pretrained=pretrained, progress=report,
            )  # fmt: skip
        except OutputTooLargeError as err:
            raise HypercolumnsError(
                f"{err.what} would take about {err.need / 1e9:.2f} GB ({err.detail}), over "
                f"--max-memory {max_memory}; "
                + (
                    "use --points, --dtype float16, fewer layers or a larger --max-memory"
                    if err.what == "the output"
                    else "downscale the file, --resize less, or a larger --max-memory"
                )
            ) from err
    if fmt is Format.json:
        print(json.dumps({"written": [str(p) for p in written.paths], "shapes": written.shapes,
                          "channels": written.metadata["channels"]}))  # fmt: skip
        return
    for key, shape in written.shapes.items():
        label = "" if key == "all" else f"{key}: "
        stdout.print(
            f"{label}{'x'.join(map(str, shape))} ({dtype.value})", highlight=False, markup=False
        )
    stdout.print(f"wrote {', '.join(str(p) for p in written.paths)}", highlight=False, markup=False)


def _rate(summary: RunSummary) -> str:
    """The summary's rate: after the set-up (the model's library imported, the model built, its
    weights hashed), which is what a longer run keeps, when the set-up took a while."""
    if summary.done + len(summary.failed) == 0:
        return ""
    if summary.setup_seconds < 1:
        return f" ({summary.images_per_second:.1f} img/s)"
    return (
        f" (set-up {summary.setup_seconds:.1f} s, then "
        f"{summary.computing_images_per_second:.1f} img/s)"
    )


def _to_store(
    model: str,
    inputs: list[str],
    layers_spec: str,
    out: Path,
    *,
    points: str | None,
    seed: int | None,
    align: Align,
    dtype: DType,
    size: str | None,
    resize: str | None,
    crop: str | None,
    mean: str | None,
    std: str | None,
    max_memory: str | None,
    workers: int | None,
    batch_size: int | None,
    device: str | None,
    band_rows: int | None,
    overwrite: bool,
    engine: Engine | None,
    ray_address: str | None,
    actors: int | None,
    fmt: Format,
    model_kwargs: str | None,
    weights: Path | None,
    pretrained: bool,
) -> None:
    """``extract`` into a store: the pipeline, a progress bar, a summary."""
    from hypercolumns._checks import parse_size
    from hypercolumns.pipeline import Interrupted, Settings, run

    if points is not None and not points.strip().isdigit():
        raise HypercolumnsError(
            f"a store samples --points N pixels per image; a file of points ({points!r}) works "
            "with single-file outputs (.npy, .safetensors, .pt)"
        )
    kwargs = parse_kwargs(model_kwargs)
    n_points = None if points is None else int(points)
    mean_v, std_v = floats(mean, "--mean"), floats(std, "--std")
    settings = Settings(
        model=model, layers=layers_spec, model_kwargs=kwargs,
        weights=None if weights is None else str(weights), pretrained=pretrained,
        points=n_points, seed=0 if seed is None else seed, align=check_align(align.value),
        dtype=dtype.value, size=None if size is None else parse_size(size),
        resize=resize, crop=crop, mean=None if mean_v is None else tuple(mean_v),
        std=None if std_v is None else tuple(std_v),
    )  # fmt: skip
    bar = rate_progress("extracting")
    task = bar.add_task("", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    engine = engine or Engine.local
    if engine is Engine.local and (ray_address is not None or actors is not None):
        raise HypercolumnsError("--ray-address and --actors apply to --engine ray")
    try:
        with bar:
            summary = run(
                inputs, out, settings, workers=workers, batch_size=batch_size,
                device=device or "auto", overwrite=overwrite,
                max_memory=None if max_memory is None else parse_bytes(max_memory),
                band_rows=band_rows, progress=progress, engine=engine.value,
                ray_address=ray_address, actors=actors,
            )  # fmt: skip
    except Interrupted as err:
        s = err.summary
        _signals.interrupted(
            f"{s.store} keeps {s.done} image(s) of this run ({s.done + s.skipped} of {s.images} "
            "in all); rerun the same command to continue"
        )
    if fmt is Format.json:
        print(json.dumps(summary.to_dict()))
    else:
        extra = [f"{summary.skipped} already there"] if summary.skipped else []
        extra += [f"{summary.banded} in bands"] if summary.banded else []
        stdout.print(
            f"{plain(summary.store)}: {summary.done} image(s) written"
            + (f" ({', '.join(extra)})" if extra else "")
            + f", {summary.bytes_written / 1e6:.1f} MB in {summary.seconds:.1f} s"
            + _rate(summary),
            highlight=False,
        )
        for failure in summary.failed[:10]:
            stderr.print(
                f"[red]failed:[/] {plain(failure.key)}: {plain(failure.reason)}", highlight=False
            )
        if len(summary.failed) > 10:
            stderr.print(f"... and {len(summary.failed) - 10} more", highlight=False)
    if summary.failed:
        stderr.print(
            f"[bold red]error:[/] {len(summary.failed)} image(s) failed (listed in "
            f"{plain(out / '_hypercolumns' / 'failures.jsonl')}); the others are in the store",
            highlight=False,
        )
        raise typer.Exit(1)
