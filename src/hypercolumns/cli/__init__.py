"""The ``hypercolumns`` command line: a thin layer over the library."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from hypercolumns._allocator import keep_freed_memory
from hypercolumns._version import __version__
from hypercolumns.errors import HypercolumnsError

app = typer.Typer(
    name="hypercolumns",
    help="Where a convolutional network looks and what it sees at every pixel: exact receptive "
    "fields, feature maps and hypercolumns for any PyTorch vision model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode="markdown",
)
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


class Format(StrEnum):
    table = "table"
    json = "json"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, package.module:factory or path/to/file.py:factory.",
        show_default=False,
    ),
]
ModelKwargs = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        metavar="JSON",
        help="Keyword arguments for the model factory, as JSON, e.g. '{\"output_stride\": 8}'.",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights", metavar="FILE", help="Local state dict (.safetensors, .pt, .pth) to load."
    ),
]
Pretrained = Annotated[
    bool,
    typer.Option(
        "--pretrained", help="Download the library's pretrained weights (needs a model hub)."
    ),
]
InputSize = Annotated[
    str,
    typer.Option(
        "--input-size", "-s", metavar="H[,W]", help="Input image size, e.g. 224 or 480,640."
    ),
]
InChannels = Annotated[
    int | None,
    typer.Option(
        "--in-channels", min=1, help="Input channels [default: those of the first convolution]."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"hypercolumns {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["debug"] = debug


def load(model: str, model_kwargs: str | None, weights: Path | None, pretrained: bool) -> Any:
    """Build the model from the common CLI options (shared by every command)."""
    from hypercolumns.models import load_model

    kwargs: dict[str, Any] = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"not valid JSON: {err}", param_hint="--model-kwargs") from err
        if not isinstance(kwargs, dict):
            raise typer.BadParameter("expected a JSON object", param_hint="--model-kwargs")
    return load_model(model, pretrained=pretrained, weights=weights, **kwargs)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _pair(values: Any) -> str:
    a, b = values
    return _fmt(a) if a == b else f"{_fmt(a)},{_fmt(b)}"


@app.command()
def layers(
    model: ModelArg,
    input_size: InputSize,
    in_channels: InChannels = None,
    fmt: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """List every layer with its output shape and exact receptive field.

    Layers are listed in the order modules first run; leaf modules are numbered (the index
    that --layers options accept). Geometry per axis, as y,x when they differ: rf = input
    pixels one unit sees, stride = input pixels between units, centre = input position of
    unit 0. Flags: global (no spatial units), misaligned (paths with different centres or
    strides met), non-uniform (units differ in extent, e.g. after transposed convolution).

    Example: hypercolumns layers torchvision:resnet50 --input-size 224
    """
    from hypercolumns._checks import parse_size
    from hypercolumns.rf.layers import layers as list_layers

    net = load(model, model_kwargs, weights, pretrained)
    found = list_layers(net, parse_size(input_size), in_channels=in_channels)
    if fmt is Format.json:
        records = ",\n  ".join(json.dumps(layer.to_dict()) for layer in found)
        print(f"[\n  {records}\n]" if records else "[]")
        return
    table = Table(title=f"{model} at {input_size}", header_style="bold")
    for col, justify in (
        ("index", "right"),
        ("name", "left"),
        ("type", "left"),
        ("shape", "left"),
        ("rf", "right"),
        ("stride", "right"),
        ("centre", "right"),
        ("flags", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for layer in found:
        rf = layer.rf
        flags = (
            []
            if rf is None
            else [
                n
                for n, on in (
                    ("global", rf.is_global),
                    ("misaligned", not rf.aligned),
                    ("non-uniform", not rf.uniform),
                )
                if on
            ]
        )
        table.add_row(
            "" if layer.index is None else str(layer.index),
            layer.name,
            layer.type,
            "x".join(str(s) for s in layer.shape),
            "?" if rf is None else ("all" if rf.is_global else _pair(rf.size)),
            "?" if rf is None else ("-" if rf.is_global else _pair(rf.stride)),
            "?" if rf is None else ("-" if rf.is_global else _pair(rf.center)),
            "unknown" if rf is None else " ".join(flags),
        )
    stdout.print(table)


class Align(StrEnum):
    rf = "rf"
    half_pixel = "half-pixel"


class DType(StrEnum):
    float32 = "float32"
    float16 = "float16"


class Engine(StrEnum):
    local = "local"
    ray = "ray"


Resize = Annotated[
    str | None,
    typer.Option(
        "--resize",
        metavar="S|H,W",
        help="Resize first: S scales the shorter side to S (aspect kept), H,W resizes exactly "
        "[default: keep the image's own size].",
    ),
]
Crop = Annotated[
    str | None,
    typer.Option(
        "--crop", metavar="center:S|center:H,W", help="Centre crop after --resize [default: none]."
    ),
]
Mean = Annotated[
    str | None,
    typer.Option(
        "--mean",
        metavar="M[,M,M]",
        help="Normalisation mean per channel [default: the model's: timm pretrained_cfg, "
        "ImageNet for torchvision, none otherwise].",
    ),
]
Std = Annotated[
    str | None,
    typer.Option("--std", metavar="S[,S,S]", help="Normalisation std per channel (see --mean)."),
]
Out = Annotated[Path, typer.Option("--out", "-o", metavar="PATH", show_default=False)]


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise HypercolumnsError(f"{option} expects comma-separated numbers, got {text!r}") from err


def _bytes(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
    value = text.strip().upper()
    number = value.rstrip("KMGTIB")
    try:
        return int(float(number) * units[value[len(number) :].strip()])
    except (KeyError, ValueError) as err:
        raise HypercolumnsError(f"--max-memory expects e.g. 512MB or 4GB, got {text!r}") from err


def _channels(layer: Any) -> int:
    """Channels a layer contributes to a hypercolumn (its size without the spatial axes)."""
    total = 1
    for s in layer.shape:
        total *= int(s)
    if layer.layout is None:
        return total
    y, x = layer.layout.y - 1, layer.layout.x - 1
    spatial = layer.shape[y] if y == x else layer.shape[y] * layer.shape[x]
    return total // max(1, int(spatial))


def _points(spec: str | None, size: tuple[int, int]) -> Any:
    """``None``, an int (sample that many) or a ``(1, N, 2)`` long tensor of ``(y, x)``."""
    import numpy as np
    import torch

    if spec is None:
        return None
    if spec.strip().isdigit():
        n = int(spec)
        if n < 1:
            raise HypercolumnsError("--points must be a positive number of pixels to sample")
        return n
    path = Path(spec)
    if not path.is_file():
        raise HypercolumnsError(
            f"--points {spec!r} is neither a count nor a file (.json, .npy, .csv of y,x pairs)"
        )
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".json":
            arr = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        else:
            arr = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as err:
        raise HypercolumnsError(f"cannot read points from {spec!r}: {err}") from err
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise HypercolumnsError(f"points in {spec!r} must be N (y, x) pairs, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise HypercolumnsError(f"points in {spec!r} must be whole pixel coordinates")
    h, w = size
    outside = (arr[:, 0] < 0) | (arr[:, 0] > h - 1) | (arr[:, 1] < 0) | (arr[:, 1] > w - 1)
    if outside.any():
        k = int(np.argmax(outside))
        y, x = (int(v) for v in arr[k])
        raise HypercolumnsError(
            f"point {k} (y={y}, x={x}) in {spec!r} is outside the {h}x{w} input "
            f"(y in 0..{h - 1}, x in 0..{w - 1}); {int(outside.sum())} of {len(arr)} are outside"
        )
    return torch.as_tensor(arr, dtype=torch.long)[None]


def _progress(total: int, label: str) -> Any:
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    if total <= 1:
        return nullcontext(None)
    return Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )


@app.command()
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
    layers_spec: Annotated[
        str,
        typer.Option(
            "--layers",
            "-l",
            metavar="L1,L2",
            help="Layers to stack: names, indices (3,8), globs (features.*) or 'all'.",
            show_default=False,
        ),
    ],
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
    ] = Align.rf,
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
    decoded in --workers processes while the model runs (on a CPU by default between
    forward passes); each image is committed on its own, so rerunning the same command
    skips what is done, also after a crash. Unreadable images are recorded and skipped
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
        _extract_store(
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
    _extract_files(model, [s.path for s in sources], layers_spec, out, **common)


def _extract_files(
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
    import torch

    from hypercolumns._checks import parse_size
    from hypercolumns.features.columns import hypercolumns as compute
    from hypercolumns.images import load_image
    from hypercolumns.io import files as _output
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.rf.layers import select

    max_memory = max_memory or "4GB"
    suffix = _output.check_suffix(out)
    limit = _bytes(max_memory)
    mean_v, std_v = _floats(mean, "--mean"), _floats(std, "--std")
    out_size = parse_size(size) if size is not None else None
    net = load(model, model_kwargs, weights, pretrained)
    inputs = [load_image(p, net, mean=mean_v, std=std_v, resize=resize, crop=crop) for p in images]
    keys = [p.stem for p in images]
    if suffix == ".npy":
        sizes = {prep.size for _, prep in inputs}
        if len(sizes) > 1:
            listing = ", ".join(
                f"{p.name} {prep.size[0]}x{prep.size[1]}"
                for p, (_, prep) in zip(images, inputs, strict=True)
            )
            raise HypercolumnsError(
                f"a .npy output stacks the images, but their sizes differ ({listing}); "
                "use --resize/--crop, or write .safetensors/.pt (one entry per image)"
            )
    elif len(set(keys)) < len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise HypercolumnsError(
            f"two images share the file stem {dup!r}, which keys their entries in "
            f"{suffix}; rename one, or write .npy"
        )
    first = inputs[0][1]
    found = list_layers(net, first.size)
    chosen = select(found, layers_spec)
    sample = _points(points, first.size)
    channels = sum(_channels(layer) for layer in chosen)
    item = 2 if dtype is DType.float16 else 4
    per_pixel = channels * item
    if isinstance(sample, int):
        pixels = sample
    elif sample is not None:
        pixels = int(sample.shape[1])
    else:
        pixels = 0
    estimate = sum(
        per_pixel * (pixels or (out_size or prep.size)[0] * (out_size or prep.size)[1])
        for _, prep in inputs
    )
    if estimate > limit:
        raise HypercolumnsError(
            f"the output would take about {estimate / 1e9:.2f} GB ({len(inputs)} image(s), "
            f"{channels} channels, {item}-byte values), over --max-memory {max_memory}; use "
            "--points, --dtype float16, fewer layers or a larger --max-memory"
        )

    torch_dtype = torch.float16 if dtype is DType.float16 else torch.float32
    features: dict[str, torch.Tensor] = {}
    coords: dict[str, torch.Tensor] = {}
    result: Any = None
    with _progress(len(inputs), "extracting") as bar:
        task = bar.add_task("", total=len(inputs)) if bar is not None else None
        for key, (x, _) in zip(keys, inputs, strict=True):
            result = compute(
                net, x, [layer.name for layer in chosen], points=sample, align=align.value,
                size=out_size, dtype=torch_dtype, max_bytes=limit, seed=seed,
            )  # fmt: skip
            features[key] = result.features[0].to(torch_dtype)
            if result.points is not None:
                coords[key] = result.points[0]
            if bar is not None:
                bar.advance(task)
    assert result is not None  # at least one image: typer requires IMAGE...
    metadata: dict[str, Any] = {
        "hypercolumns_version": __version__,
        "model": model,
        "model_kwargs": json.loads(model_kwargs) if model_kwargs else {},
        "weights": str(weights) if weights else ("pretrained" if pretrained else None),
        "layers": [layer.name for layer in result.layers],
        "channels": {k: [s.start, s.stop] for k, s in result.slices.items()},
        "geometry": [layer.to_dict() for layer in result.layers],
        "layout": "(B, N, C)" if coords else "(B, C, H, W)",
        "align": align.value,
        "dtype": dtype.value,
        "points": None if points is None else {"spec": points, "seed": seed},
        "images": [
            {"key": key, **prep.to_dict()} for key, (_, prep) in zip(keys, inputs, strict=True)
        ],
    }
    if suffix == ".npy":
        if coords:
            metadata["points"]["coordinates"] = [coords[k].tolist() for k in keys]
        stacked = torch.stack([features[k] for k in keys])
        written = _output.write_npy(out, stacked, metadata)
        shapes = {"all": list(stacked.shape)}
    else:
        written = _output.write_tensors(out, features, coords, metadata)
        shapes = {k: list(v.shape) for k, v in features.items()}
    if fmt is Format.json:
        print(json.dumps({"written": [str(p) for p in written], "shapes": shapes,
                          "channels": metadata["channels"]}))  # fmt: skip
        return
    for key, shape in shapes.items():
        label = "" if key == "all" else f"{key}: "
        stdout.print(f"{label}{'x'.join(map(str, shape))} ({dtype.value})", highlight=False)
    stdout.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)


Layer1 = Annotated[
    str,
    typer.Option(
        "--layer", "-l", metavar="L", help="One spatial layer: name or index.", show_default=False
    ),
]
UnitOpt = Annotated[
    str | None,
    typer.Option(
        "--unit",
        "-u",
        metavar="I,J",
        help="Unit (row, column) in the layer's grid [default: the middle of the grid].",
    ),
]


def _unit(text: str | None) -> Any:
    return "center" if text is None else _cell(text)


def _image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` (by extension, sorted by name)."""
    from PIL import Image

    if not folder.is_dir():
        raise HypercolumnsError(f"--images {str(folder)!r} is not a folder")
    known = {ext.lower() for ext in Image.registered_extensions()}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in known)
    if not files:
        raise HypercolumnsError(
            f"--images {str(folder)!r} holds no image files (by extension: .jpg, .png, ...)"
        )
    return files


def _check_figure(out: Path | None) -> None:
    from hypercolumns.viz import plot

    if out is not None and out.suffix.lower() not in plot.FORMATS:
        raise HypercolumnsError(
            f"cannot write a figure to {str(out)!r}: use a {', '.join(plot.FORMATS)} file name"
        )


@app.command()
def erf(
    model: ModelArg,
    layer: Layer1,
    input_size: InputSize,
    in_channels: InChannels = None,
    unit: UnitOpt = None,
    samples: Annotated[
        int, typer.Option("--samples", "-n", help="Inputs to average over (noise or images).")
    ] = 32,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Inputs per forward/backward pass.")
    ] = 8,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            metavar="DIR",
            help="Average over the images in DIR (the first --samples, by name, resized to "
            "--input-size) [default: standard normal noise in the model's normalised space].",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FIG",
            help="Also draw the ERF heat map with the theoretical box (.png, .pdf or .svg).",
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Measure the effective receptive field (ERF) of one unit of a layer.

    The ERF is the mean absolute input gradient of the unit (summed over its channels) over
    --samples inputs, normalised to sum 1; the model runs in eval mode with its weights as
    given. Prints, in input pixels: the theoretical rf of the unit, the ERF's centroid and
    std per axis, the half-width of the smallest square around the unit's centre holding
    20..99 % of the ERF, RepLKNet's high-contribution area ratio, and the 95 % square's side
    over the rf size. See docs/erf.md for the exact definitions.

    Example: hypercolumns erf torchvision:resnet50 --layer layer3 --input-size 224 --out erf.png
    """
    from hypercolumns.rf.erf import erf as measure
    from hypercolumns.viz import plot

    _check_figure(out)
    inputs: Any = "noise" if images is None else _image_files(images)
    net = load(model, model_kwargs, weights, pretrained)
    total = samples if images is None else min(samples, len(inputs))
    with _progress(total, "ERF samples") as bar:
        task = bar.add_task("", total=total) if bar is not None else None
        result = measure(
            net, layer, input_size, unit=_unit(unit), inputs=inputs, samples=samples,
            batch_size=batch_size, in_channels=in_channels, seed=seed,
            progress=None if bar is None else lambda done, _: bar.update(task, completed=done),
        )  # fmt: skip
    if out is not None:
        plot.save(plot.erf_map(result), out)
    if fmt is Format.json:
        print(json.dumps(result.to_dict()))
        return
    _erf_table(result, model)
    if out is not None:
        stdout.print(f"wrote {out}", highlight=False)


def _erf_table(result: Any, model: str) -> None:
    h, w = result.input_size
    table = Table(
        title=f"ERF of {model} {result.layer.name} unit {tuple(result.unit)} at {h}x{w}, "
        f"{result.inputs_text}",
        header_style="bold",
    )
    table.add_column("statistic")
    table.add_column("y,x (input pixels)", justify="right")
    y0, x0, y1, x1 = result.rf_box
    rows = [
        ("theoretical rf size", _pair(result.rf_size)),
        ("rf centre", _pair(result.rf_center)),
        ("rf box (y0,x0 .. y1,x1)", f"{_fmt(y0)},{_fmt(x0)} .. {_fmt(y1)},{_fmt(x1)}"),
        ("ERF centroid", _pair(round(v, 2) for v in result.centroid)),
        ("ERF std", _pair(round(v, 2) for v in result.std)),
        *((f"{t} % of mass within \u00b1", _fmt(r)) for t, r in result.mass_radius.items()),
        *((f"area ratio {t} % (RepLKNet)", f"{a:.4f}") for t, a in result.area_ratio.items()),
        ("95 % square side / rf size", _pair(round(v, 3) for v in result.erf_to_rf)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    stdout.print(table)


class _Rate(ProgressColumn):
    """A rich progress column: images per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def _extract_store(
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from hypercolumns._checks import parse_size
    from hypercolumns.pipeline import Settings, run

    if points is not None and not points.strip().isdigit():
        raise HypercolumnsError(
            f"a store samples --points N pixels per image; a file of points ({points!r}) works "
            "with single-file outputs (.npy, .safetensors, .pt)"
        )
    kwargs: dict[str, Any] = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"not valid JSON: {err}", param_hint="--model-kwargs") from err
        if not isinstance(kwargs, dict):
            raise typer.BadParameter("expected a JSON object", param_hint="--model-kwargs")
    n_points = None if points is None else int(points)
    mean_v, std_v = _floats(mean, "--mean"), _floats(std, "--std")
    settings = Settings(
        model=model, layers=layers_spec, model_kwargs=kwargs,
        weights=None if weights is None else str(weights), pretrained=pretrained,
        points=n_points, seed=0 if seed is None else seed, align=align.value,
        dtype=dtype.value, size=None if size is None else parse_size(size),
        resize=resize, crop=crop, mean=None if mean_v is None else tuple(mean_v),
        std=None if std_v is None else tuple(std_v),
    )  # fmt: skip
    bar = Progress(
        "[bold]extracting",
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=fmt is Format.json and not stderr.is_terminal,
    )
    task = bar.add_task("", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    engine = engine or Engine.local
    if engine is Engine.local and (ray_address is not None or actors is not None):
        raise HypercolumnsError("--ray-address and --actors apply to --engine ray")
    with bar:
        summary = run(
            inputs, out, settings, workers=workers, batch_size=batch_size,
            device=device or "auto", overwrite=overwrite,
            max_memory=None if max_memory is None else _bytes(max_memory),
            band_rows=band_rows, progress=progress, engine=engine.value,
            ray_address=ray_address, actors=actors,
        )  # fmt: skip
    if fmt is Format.json:
        print(json.dumps(summary.to_dict()))
    else:
        extra = [f"{summary.skipped} already there"] if summary.skipped else []
        extra += [f"{summary.banded} in bands"] if summary.banded else []
        stdout.print(
            f"{summary.store}: {summary.done} image(s) written"
            + (f" ({', '.join(extra)})" if extra else "")
            + f", {summary.bytes_written / 1e6:.1f} MB in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} img/s)",
            highlight=False,
        )
        for failure in summary.failed[:10]:
            stderr.print(f"[red]failed:[/] {failure.key}: {failure.reason}", highlight=False)
        if len(summary.failed) > 10:
            stderr.print(f"... and {len(summary.failed) - 10} more", highlight=False)
    if summary.failed:
        stderr.print(
            f"[bold red]error:[/] {len(summary.failed)} image(s) failed (listed in "
            f"{out / '_hypercolumns' / 'failures.jsonl'}); the others are in the store",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
def show(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.", show_default=False)],
    layer: Annotated[
        str,
        typer.Option(
            "--layer",
            "-l",
            metavar="L",
            help="Layer name or index; several (3,8) with --mean or --rf.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FIG",
            help="Figure file: .png, .pdf or .svg.",
            show_default=False,
        ),
    ],
    channel: Annotated[
        int | None, typer.Option("--channel", "-c", help="Channel to draw [default: 0].")
    ] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Draw a grid of channels.")] = False,
    n_channels: Annotated[
        int, typer.Option("--channels", min=1, help="Channels in the --grid (the first N).")
    ] = 16,
    mean_hc: Annotated[
        bool,
        typer.Option(
            "--mean",
            help="Mean hypercolumn activation per pixel over the layers, beside the image.",
        ),
    ] = False,
    rf: Annotated[
        bool,
        typer.Option(
            "--rf", help="Receptive-field boxes of each layer's centre unit on the image."
        ),
    ] = False,
    resize: Resize = None,
    crop: Crop = None,
    norm_mean: Annotated[
        str | None,
        typer.Option(
            "--norm-mean", metavar="M[,M,M]", help="Normalisation mean (see extract --mean)."
        ),
    ] = None,
    norm_std: Annotated[
        str | None, typer.Option("--norm-std", metavar="S[,S,S]", help="Normalisation std.")
    ] = None,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Draw what a layer sees: a feature map, a grid of channels, the mean hypercolumn
    activation, or receptive fields on the image.

    One figure per call, chosen by flag: one channel (default, --channel K), --grid,
    --mean (over all --layer layers) or --rf. The image is preprocessed as for extract.

    Example: hypercolumns show torchvision:vgg16 cat.jpg --layer 3,8 --mean --out mean.png
    """
    from hypercolumns.images import load_image
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.rf.layers import select
    from hypercolumns.viz import plot

    modes = [name for name, on in (("--channel", channel is not None), ("--grid", grid),
                                   ("--mean", mean_hc), ("--rf", rf)) if on]  # fmt: skip
    if len(modes) > 1:
        raise HypercolumnsError(f"choose one of {', '.join(modes)}: one figure per call")
    if out.suffix.lower() not in plot.FORMATS:
        raise HypercolumnsError(
            f"cannot write a figure to {str(out)!r}: use a {', '.join(plot.FORMATS)} file name"
        )
    net = load(model, model_kwargs, weights, pretrained)
    x, prep = load_image(
        image, net, mean=_floats(norm_mean, "--norm-mean"), std=_floats(norm_std, "--norm-std"),
        resize=resize, crop=crop,
    )  # fmt: skip
    picture = prep.unnormalize(x[0])
    chosen = select(list_layers(net, prep.size), layer)
    if (mean_hc or rf) is False and len(chosen) > 1:
        raise HypercolumnsError(
            f"--layer {layer!r} names {len(chosen)} layers; a feature map or --grid shows one "
            "(several work with --mean and --rf)"
        )
    if rf:
        fig = plot.receptive_fields(picture, chosen)
    elif mean_hc:
        from hypercolumns.features.columns import hypercolumns as compute

        result = compute(net, x, [c.name for c in chosen])
        fig = plot.mean_hypercolumn(result.features, picture, layers=chosen)
    else:
        from hypercolumns.features.maps import feature_maps

        target = chosen[0]
        if target.is_global:
            raise HypercolumnsError(
                f"layer {target.name!r} is global (shape {target.shape}): it has no spatial map; "
                "choose a spatial layer (see `hypercolumns layers`)"
            )
        maps = feature_maps(net, x, [target.name], as_maps=True)[target.name]
        if grid:
            fig = plot.channel_grid(maps, n_channels, layer=target)
        else:
            fig = plot.feature_map(maps, channel or 0, layer=target, image=picture)
    plot.save(fig, out)
    stdout.print(f"wrote {out}", highlight=False)


draw_app = typer.Typer(
    name="draw",
    help="Diagrams: convolution arithmetic, receptive-field growth, receptive fields over an image.",  # noqa: E501
    no_args_is_help=True,
)
app.add_typer(draw_app)


@draw_app.command("rf")
def draw_rf(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.", show_default=False)],
    layer: Layer1,
    unit: UnitOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FIG", help="Figure file: .png, .pdf or .svg.")
    ] = Path("rf.png"),
    resize: Resize = None,
    crop: Crop = None,
    in_channels: InChannels = None,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Draw a unit's theoretical receptive field and its effective receptive field (ERF)
    over the image.

    The ERF here is that of this one image: the absolute gradient of the unit (summed over
    its channels) with respect to the image, as a heat overlay; the box is the exact
    theoretical receptive field (it may reach past the image: padding). The image is
    preprocessed as for extract.

    Example: hypercolumns draw rf torchvision:vgg16 cat.jpg --layer 22 --out rf.png
    """
    from hypercolumns.images import load_image
    from hypercolumns.rf.erf import erf as measure
    from hypercolumns.viz import plot

    _check_figure(out)
    net = load(model, model_kwargs, weights, pretrained)
    x, prep = load_image(image, net, channels=in_channels, resize=resize, crop=crop)
    result = measure(
        net, layer, prep.size, unit=_unit(unit), inputs=x, samples=1, in_channels=prep.channels
    )
    result = dataclasses.replace(result, inputs="images")
    plot.save(plot.erf_on_image(result, prep.unnormalize(x[0])), out)
    stdout.print(f"wrote {out}", highlight=False)


@draw_app.command("conv")
def draw_conv(
    kernel: Annotated[int, typer.Option("--kernel", "-k", help="Kernel size.")] = 3,
    stride: Annotated[int, typer.Option("--stride", "-S", help="Stride.")] = 1,
    padding: Annotated[int, typer.Option("--padding", "-p", help="Padding on each side.")] = 0,
    dilation: Annotated[int, typer.Option("--dilation", "-d", help="Dilation.")] = 1,
    transposed: Annotated[
        bool,
        typer.Option(
            "--transposed", help="Transposed convolution (fractional stride, zeros inserted)."
        ),
    ] = False,
    output_padding: Annotated[
        int,
        typer.Option(
            "--output-padding",
            help="Transposed only: cells added at the bottom and right of the output.",
        ),
    ] = 0,
    size: Annotated[
        int, typer.Option("--input", "-n", metavar="N", help="Input cells per side.")
    ] = 5,
    unit: Annotated[
        str | None,
        typer.Option(
            "--unit",
            metavar="I,J",
            help="Output cell to highlight [default: the middle one]; not with --animate.",
        ),
    ] = None,
    animate: Annotated[
        bool, typer.Option("--animate", help="An animated GIF: one frame per output cell.")
    ] = False,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second of the GIF.")] = 2,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help=".png, .pdf or .svg; .gif with --animate [default: conv.png, or conv.gif].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw which input cells feed which output cells of one 2-D convolution.

    The input grid (padding cells dashed), the kernel footprint of one output cell (dots:
    the kernel taps, so dilation shows as gaps) and the output grid, with the output-size
    formula. A transposed convolution is drawn beside the direct convolution it equals:
    stride - 1 zeros inserted between the input cells, dilation*(kernel-1) - padding cells
    of implicit padding, stride 1. --animate slides the kernel over every output cell.

    Examples: hypercolumns draw conv --kernel 3 --stride 2 --padding 1 --out strided.png;
    hypercolumns draw conv -k 3 -S 2 -p 1 --transposed --output-padding 1 --input 3 --animate
    """
    from hypercolumns.viz import draw

    spec = draw.ConvSpec(kernel, stride, padding, dilation, transposed, output_padding)
    path = draw.check_path(out or ("conv.gif" if animate else "conv.png"), animated=animate)
    if animate and unit is not None:
        raise HypercolumnsError("--unit picks one output cell; --animate shows them all")
    if fps < 1:
        raise HypercolumnsError(f"--fps must be at least 1, got {fps}")
    if not animate:
        cell = _cell(unit) if unit is not None else None
        draw.save(draw.conv_diagram(spec, size, unit=cell), path)
        stdout.print(f"wrote {path}", highlight=False)
        return
    animation = draw.conv_animation(spec, size)
    frames = draw.conv_arithmetic(spec, size).output_size ** 2
    with _progress(frames, "drawing frames") as bar:
        task = bar.add_task("", total=frames) if bar is not None else None
        draw.save(
            animation, path, dpi=80, fps=fps,
            progress=(lambda k, _: bar.update(task, completed=k + 1)) if bar else None,
        )  # fmt: skip
    stdout.print(f"wrote {path} ({frames} frames)", highlight=False)


def _cell(text: str) -> tuple[int, int]:
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError as err:
        raise HypercolumnsError(f"--unit expects I,J (two integers), got {text!r}") from err
    return i, j


@draw_app.command("growth")
def draw_growth(
    model: ModelArg,
    input_size: InputSize,
    in_channels: InChannels = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="FILE", help="Figure file: .png, .pdf or .svg."),
    ] = Path("growth.png"),
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
) -> None:
    """Plot the receptive-field size and stride of every layer along the network.

    Log scale, by layer index (the order modules run): stacking adds to the receptive field,
    strided convolutions and pooling multiply the stride (marked), dilated convolutions are
    marked; both axes are drawn when they differ. Global layers and layers with an unknown
    receptive field are shaded and listed in the legend.

    Example: hypercolumns draw growth torchvision:resnet50 --input-size 224 --out growth.png
    """
    from hypercolumns._checks import parse_size
    from hypercolumns.rf.layers import layers as list_layers
    from hypercolumns.viz import draw

    draw.check_path(out, animated=False)
    size = parse_size(input_size)
    net = load(model, model_kwargs, weights, False)
    found = list_layers(net, size, in_channels=in_channels)
    title = f"{model} at {size[0]}" + (f"x{size[1]}" if size[1] != size[0] else "")
    draw.save(draw.growth(found, size, model=net, title=title), out)
    stdout.print(f"wrote {out}", highlight=False)


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="DIR", help="Folder for figures and summary.json."),
    ] = Path("hypercolumns-demo"),
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Try to download VGG-16 ImageNet weights when they are not cached (needs a "
            "network; without it the demo uses random weights at once).",
        ),
    ] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """The tour, offline: torchvision VGG-16 on a bundled public-domain photo (224x224).

    Writes feature_map.png (a channel of layer 3), grid.png (16 channels of layer 3),
    mean_hypercolumn.png (layers 3 and 8, 192 channels), receptive_fields.png (layers
    3, 8, 15, 22, 29), growth.png (receptive field and stride per layer), erf_on_image.png
    (effective receptive field of layer 22 on the photo) and conv_transposed.png (a transposed
    convolution's connections), plus summary.json, and prints the layers.
    Uses ImageNet weights when they are already in the torch hub cache, else random
    weights (seeded) with a note.
    """
    from hypercolumns import demo as tour

    summary = tour.run(out, download=download, note=lambda m: stderr.print(m, highlight=False))
    if fmt is Format.json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{summary['model']} on {summary['image']['path']} "
                  f"({summary['weights']} weights)", header_style="bold")  # fmt: skip
    for col in ("index", "name", "type", "shape", "rf", "stride", "centre"):
        table.add_column(col, justify="left" if col in ("name", "type", "shape") else "right")
    for rec in summary["layers"]:
        table.add_row(
            str(rec["index"]), rec["name"], rec["type"], "x".join(map(str, rec["shape"])),
            _pair(rec["rf_size"]), _pair(rec["stride"]), _pair(rec["rf_center"]),
        )  # fmt: skip
    stdout.print(table)
    hc = summary["hypercolumns"]
    stdout.print(
        f"hypercolumns of {', '.join(hc['layers'])}: {tuple(hc['shape'])}; "
        f"figures and summary.json in {out} ({summary['seconds']:.1f} s)",
        highlight=False,
    )


def main() -> None:
    """Entry point: run the app; print library errors as one line and exit non-zero."""
    keep_freed_memory()  # this process is ours: see hypercolumns._allocator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.showwarning = _show_warning
        try:
            app()
        except HypercolumnsError as err:
            if _state["debug"]:
                raise
            stderr.print(f"[bold red]error:[/] {err}", highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            stderr.print("interrupted")
            sys.exit(130)
        except Exception as err:
            if _state["debug"]:
                raise
            stderr.print(
                f"[bold red]error:[/] unexpected {type(err).__name__}: {err} "
                "(run with --debug for the traceback)",
                highlight=False,
            )
            sys.exit(1)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)
