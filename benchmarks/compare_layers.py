"""Dump ``hc.layers`` of many models to JSON, or compare two dumps: a check that a change to the
analysis (e.g. for speed) leaves every layer's geometry exactly as it was.

Run: ``uv run python benchmarks/compare_layers.py dump new.json``; then the same with
``PYTHONPATH=<other checkout>/src`` into ``old.json``; then
``uv run python benchmarks/compare_layers.py compare old.json new.json``.

Models: the timm representatives of ``timm_representatives.json`` (but the 100M+ ViTs), a few
torchvision models, and some at an odd input size too.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision

# benchmarks/hypercolumns.py would shadow the package when this runs as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import hypercolumns as hc  # noqa: E402

HERE = Path(__file__).resolve().parent
SKIP = {"deepseek_vit_412m", "gemma4_vit_167m", "qwen3_vit_88m"}
TORCHVISION = ["vgg16", "resnet50", "inception_v3", "deeplabv3_resnet50", "fcn_resnet50"]
ODD_SIZE = [
    "convnext_tiny",
    "efficientnet_b0",
    "resnet50",
    "maxvit_tiny_tf_224",
    "mobilevit_s",
    "swin_tiny_patch4_window7_224",
]


def build(name: str) -> torch.nn.Module:
    if not name.startswith("tv:"):
        return timm.create_model(name)
    name = name[3:]
    kwargs: dict[str, Any] = {"weights": None}
    if name.endswith("_resnet50"):
        kwargs["weights_backbone"] = None
    if name == "inception_v3":
        kwargs["init_weights"] = False
    return torchvision.models.get_model(name, **kwargs)


def describe(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found: Any = [
                {
                    **layer.to_dict(),
                    "layout": repr(layer.layout),
                    "axes": repr(layer.rf.axes) if layer.rf else None,  # exact fractions
                }
                for layer in hc.layers(model, size)
            ]
        except Exception as err:  # the same error on both sides is agreement too
            found = f"{type(err).__name__}: {err}"
    return {"layers": found, "warnings": sorted({str(w.message) for w in caught})}


def dump(out: Path) -> None:
    reps = json.loads((HERE / "timm_representatives.json").read_text())["modules"]
    names = [f"tv:{n}" for n in TORCHVISION] + [v[0] for v in reps.values() if v[0] not in SKIP]
    result: dict[str, Any] = {}
    for name in [*names, *ODD_SIZE]:
        model = build(name).eval()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        h, w = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        sizes = (
            [(h, w), (h + 13, w + 5)] if name in ODD_SIZE or name.startswith("tv:") else [(h, w)]
        )
        for size in sizes:
            result[f"{name}@{size[0]}x{size[1]}"] = describe(model, size)
        print(name, file=sys.stderr)
    out.write_text(json.dumps(result, sort_keys=True))


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for key in differ:
        print(f"differs: {key}")
    layers = sum(len(v["layers"]) for v in b.values() if isinstance(v["layers"], list))
    print(f"{len(b)} model/size pairs, {layers} layers; {len(differ)} differ")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dump").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out)
    else:
        sys.exit(compare(args.old, args.new))


if __name__ == "__main__":
    main()
