"""``hypercolumns probe fit|predict|eval``: pixel probes from the command line.

The work is the library's (:func:`hypercolumns.fit_probe`, :class:`hypercolumns.Probe`); this
file reads the options, shows progress bars over images, and writes outputs so that nothing
half-written is left at ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from hypercolumns.cli._options import (
    Align,
    Crop,
    Format,
    FormatOpt,
    ModelArg,
    ModelKwargs,
    Pretrained,
    Resize,
    Weights,
    parse_kwargs,
)
from hypercolumns.cli._render import progress_callback, stdout
from hypercolumns.errors import HypercolumnsError

__all__ = ["app"]

app = typer.Typer(
    name="probe",
    help="Pixel probes: learn a per-pixel classifier (segmentation) or regressor "
    "(colorization) on hypercolumns, predict with it densely, score it.",
    no_args_is_help=True,
)


class Task(StrEnum):
    classify = "classify"
    regress = "regress"


class HeadOpt(StrEnum):
    linear = "linear"
    mlp = "mlp"


Inputs = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUTS...",
        help="Image files, folders, globs, or .txt/.csv lists; a .csv list's 'mask' column "
        "gives each image's label image (8- or 16-bit grey or palette PNG).",
        show_default=False,
    ),
]
Targets = Annotated[
    list[Path] | None,
    typer.Option(
        "--targets",
        "-t",
        metavar="MASK",
        help="Label images, one per input image in order (repeat the option), instead of a "
        ".csv list's mask column.",
        show_default=False,
    ),
]
ProbeArg = Annotated[
    Path,
    typer.Argument(
        metavar="PROBE", help="A probe written by 'probe fit' (.safetensors).", show_default=False
    ),
]


def _targets(targets: list[Path] | None) -> list[Any] | None:
    return None if not targets else list(targets)


@app.command("fit")
def fit(
    model: ModelArg,
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS...",
            help="Image files, folders, globs, or .txt/.csv lists (a .csv 'mask' column gives "
            "the label images); or one sparse store with labels (NAME.parquet, written by "
            "'extract list.csv --points N'), whose hypercolumns are used as stored.",
            show_default=False,
        ),
    ],
    layers_spec: Annotated[
        str | None,
        typer.Option(
            "--layers",
            "-l",
            metavar="L1,L2",
            help="Layers to stack: names, indices (3,8), globs or 'all' [default with a store: "
            "its layers].",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="PROBE.safetensors",
            help="Where to write the probe.",
            show_default=False,
        ),
    ] = Path("probe.safetensors"),
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="classify: labels from masks (multinomial logistic regression). regress: "
            "colorization, the only regression the CLI offers: the model sees each image's "
            "grey version and learns its colour (ridge regression); other regression targets "
            "are for the library (hc.fit_probe(task='regress')).",
        ),
    ] = Task.classify,
    targets: Targets = None,
    points: Annotated[
        int, typer.Option("--points", "-p", min=1, help="Pixels sampled per image (per class).")
    ] = 1024,
    head: Annotated[
        HeadOpt,
        typer.Option(
            "--head",
            help="linear (predicted at each layer's resolution) or mlp (one hidden layer; "
            "predicted on explicit hypercolumns in bands of rows).",
        ),
    ] = HeadOpt.linear,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            metavar="A,B,C",
            help="Class names in label order; labels must lie in 0..len-1 [default: 0 to the "
            "largest label].",
        ),
    ] = None,
    ignore_index: Annotated[
        int, typer.Option("--ignore-index", help="Label of unlabelled pixels (scribbles).")
    ] = 255,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pixel sampling.")] = 0,
    align: Annotated[
        Align, typer.Option("--align", help="rf: by receptive-field centres; half-pixel: classic.")
    ] = Align("rf"),
    resize: Resize = None,
    crop: Crop = None,
    fmt: FormatOpt = Format.table,
    model_kwargs: ModelKwargs = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
) -> None:
    """Learn a pixel probe on the hypercolumns of MODEL's --layers at sampled pixels.

    Random weights (no --weights, no --pretrained) are drawn with seed 0 and recorded, with
    a digest, so that 'probe predict' and 'probe eval' rebuild the same model.

    Examples:

    hypercolumns probe fit torchvision:vgg16 train.csv --layers 3,8,15,22 --out seg.safetensors

    hypercolumns probe fit torchvision:vgg16 a.png b.png -t a_mask.png -t b_mask.png -l 3,8 -o p.safetensors

    hypercolumns probe fit torchvision:vgg16 photos/ -l 3,8,15 --task regress -o colour.safetensors
    """  # noqa: E501
    from hypercolumns._atomic import check_writable
    from hypercolumns.features.align import check_align
    from hypercolumns.probes import fit_probe

    if out.suffix != ".safetensors":
        raise HypercolumnsError(f"--out must be NAME.safetensors, got {str(out)!r}")
    check_writable(out)
    store = len(inputs) == 1 and inputs[0].endswith(".parquet")
    if not store and layers_spec is None:
        raise HypercolumnsError("--layers is needed (e.g. --layers 3,8 or --layers all)")
    regress = task is Task.regress
    if regress and targets:
        raise HypercolumnsError(
            "--task regress is colorization: the targets are the images' own colour; "
            "leave --targets out"
        )
    names = None if classes is None else [c.strip() for c in classes.split(",")]
    with progress_callback("sampling") as report:
        probe = fit_probe(
            model, inputs[0] if store else inputs, _targets(targets), layers_spec, points=points,
            task=task.value, head=head.value, ignore_index=ignore_index, seed=seed,
            align=check_align(align.value), classes=names, colorize=regress, resize=resize,
            crop=crop,
            model_kwargs=parse_kwargs(model_kwargs), weights=weights, pretrained=pretrained,
            progress=report,
        )  # fmt: skip
    probe.save(out)
    meta = probe.meta
    summary = {"written": str(out), "task": meta["task"], "head": meta["head"],
               "classes": meta["classes"], "layers": meta["layers"], "samples": meta["samples"],
               "images": meta["images"], "weights": meta["weights"]}  # fmt: skip
    if fmt is Format.json:
        print(json.dumps(summary))
        return
    layers = ", ".join(f"{r['name']} ({r['channels']})" for r in meta["layers"])
    stdout.print(
        f"{meta['task']} probe ({meta['head']}, {len(meta['classes'])} outputs) on {layers}: "
        f"{meta['samples']} pixels of {meta['images']} image(s); wrote {out}",
        highlight=False,
    )


def palette(k: int) -> list[int]:
    """A flat RGB palette of ``k`` (at most 256) well-separated colours (PASCAL VOC's)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out[: 3 * max(k, 1)] + [0] * (3 * (256 - max(k, 1)))


def _stem(name: str, seen: set[str]) -> str:
    stem = Path(name).stem.replace(" ", "_")
    if stem in seen:
        raise HypercolumnsError(
            f"two inputs are named {stem!r}: outputs are named by file stem; rename one"
        )
    seen.add(stem)
    return stem


@app.command("predict")
def predict(
    probe_path: ProbeArg,
    inputs: Inputs,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for STEM.png (labels with a palette; colour for colorization), "
            "STEM_overlay.png and, with --probabilities, STEM.npy.",
            show_default=False,
        ),
    ],
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities",
            help="Also write STEM.npy: (K, H, W) float32 class probabilities (values when "
            "regressing).",
        ),
    ] = False,
    overlay: Annotated[
        bool, typer.Option("--overlay/--no-overlay", help="Write STEM_overlay.png.")
    ] = True,
) -> None:
    """Predict with a probe on INPUTS...: label PNGs with a palette and overlays.

    The model, its weights, the layers and the preprocessing come from the probe file. All
    outputs are written to a temporary folder beside --out and moved into it only when every
    image succeeded.
    """
    from PIL import Image

    from hypercolumns.models import normalization
    from hypercolumns.probes import load_probe, stream_examples
    from hypercolumns.probes.colour import colour_target, grey_input

    probe = load_probe(probe_path)
    prep = probe.meta["preprocessing"]
    # one image in memory at a time: each is read when its turn comes
    items = stream_examples(probe.model, inputs, resize=prep["resize"], crop=prep["crop"])
    seen: set[str] = set()
    stems = [_stem(name, seen) for name in items.names]
    norm = normalization(probe.model)
    colorize = bool(probe.meta.get("colorize"))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".partial-{os.getpid()}"
    staging.mkdir()
    done = False
    try:
        with progress_callback("predicting") as report:
            for i, (ex, stem) in enumerate(zip(items, stems, strict=True)):
                x = ex.image
                rgb = _rgb(x, norm)
                if colorize:
                    x = grey_input(x, norm.mean, norm.std)
                y = probe.predict(x)[0]
                if probe.task == "classify":
                    labels = y.argmax(0).numpy().astype(np.uint8)
                    img = Image.fromarray(labels, mode="P")
                    img.putpalette(palette(probe.outputs))
                    img.save(staging / f"{stem}.png")
                    if overlay:
                        colours = np.array(palette(256), np.uint8).reshape(256, 3)[labels]
                        mixed = (0.5 * rgb + 0.5 * colours).astype(np.uint8)
                        Image.fromarray(mixed).save(staging / f"{stem}_overlay.png")
                    if probabilities:
                        np.save(staging / f"{stem}.npy", y.softmax(0).numpy().astype(np.float32))
                else:
                    if colorize:
                        colour = colour_target(y[None], [0.0], [1.0]).permute(1, 2, 0)
                        pic = (colour.numpy() * 255).round().astype(np.uint8)
                        Image.fromarray(pic).save(staging / f"{stem}.png")
                    if probabilities or not colorize:
                        np.save(staging / f"{stem}.npy", y.numpy().astype(np.float32))
                report(i + 1, len(items))
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            shutil.rmtree(out, ignore_errors=True)
    stdout.print(f"wrote {len(items)} prediction(s) to {out}", highlight=False, markup=False)


def _rgb(x: Any, norm: Any) -> np.ndarray[Any, Any]:
    """The ``(H, W, 3)`` uint8 picture of a normalised ``(1, C, H, W)`` model input."""
    from hypercolumns.probes.colour import colour_target

    c = x.shape[1]
    pix = colour_target(x if c == 3 else x[:, :1].expand(-1, 3, -1, -1), norm.mean, norm.std)
    return (pix.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@app.command("eval")
def evaluate(
    probe_path: ProbeArg,
    inputs: Inputs,
    targets: Targets = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Score a probe on INPUTS... with their masks: pixel accuracy, per-class IoU, mIoU (the
    mean over the classes present in the targets or the predictions; pixels labelled with the
    probe's ignore index are not counted); RMSE and PSNR for colorization.

    JSON (--format json): miou, pixel_accuracy, per_class_iou, pixels, images (classification);
    rmse, psnr, values, images (regression).
    """
    from hypercolumns.probes import load_probe

    probe = load_probe(probe_path)
    if probe.meta.get("colorize") and targets:
        raise HypercolumnsError(
            "a colorization probe is scored against the images' own colour: leave --targets out"
        )
    with progress_callback("evaluating") as report:
        scores = probe.evaluate(inputs, _targets(targets), progress=report)
    if fmt is Format.json:
        print(json.dumps(scores))
        return
    if probe.task == "classify":
        stdout.print(
            f"{scores['images']} image(s), {scores['pixels']} labelled pixels: pixel accuracy "
            f"{scores['pixel_accuracy']:.4f}, mIoU {scores['miou']:.4f} (over classes present)",
            highlight=False,
        )
        for name, iou in scores["per_class_iou"].items():
            stdout.print(
                f"  {name}: {'-' if iou is None else f'{iou:.4f}'}", highlight=False, markup=False
            )
    else:
        stdout.print(
            f"{scores['images']} image(s): RMSE {scores['rmse']:.4f}, PSNR {scores['psnr']:.2f} dB",
            highlight=False,
        )
