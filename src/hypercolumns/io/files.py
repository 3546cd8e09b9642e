"""Write extracted features to ``.npy`` (+ ``.json`` sidecar), ``.safetensors`` or ``.pt``.

Writes are atomic: everything goes to temporary files in the destination folder, renamed over
the destination only when complete, so a failure never leaves a half-written file behind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypercolumns._atomic import staged
from hypercolumns.errors import HypercolumnsError

__all__ = ["SUFFIXES", "check_suffix", "write_npy", "write_tensors"]

SUFFIXES = (".npy", ".safetensors", ".pt")


def check_suffix(path: Path) -> str:
    """The output format of ``path`` (its lower-case suffix), or an error naming the choices."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise HypercolumnsError(
            f"cannot write features to {str(path)!r}: the extension must be one of "
            f"{', '.join(SUFFIXES)}"
        )
    if path.is_dir():
        raise HypercolumnsError(f"--out {str(path)!r} is a folder; give a file name")
    return suffix


def write_npy(path: Path, array: torch.Tensor, metadata: Mapping[str, Any]) -> list[Path]:
    """``array`` to ``path`` and ``metadata`` to the sidecar ``path.json``; both or neither."""
    sidecar = path.with_name(path.name + ".json")
    with staged(path, sidecar) as (tmp, tmp_json):
        with tmp.open("wb") as fh:
            np.save(fh, array.detach().cpu().numpy(), allow_pickle=False)
        tmp_json.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return [path, sidecar]


def write_tensors(
    path: Path,
    features: Mapping[str, torch.Tensor],
    points: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
) -> list[Path]:
    """One entry per image: ``.safetensors`` keys ``STEM`` (and ``STEM/points``), metadata as
    JSON under the header key ``hypercolumns``; ``.pt`` a dict ``{"features": {STEM: ...},
    "points": {STEM: ...}, "metadata": {...}}`` loadable with ``weights_only=True``."""
    with staged(path) as (tmp,):
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in features.items()}
            tensors.update(
                {f"{k}/points": v.detach().cpu().contiguous() for k, v in points.items()}
            )
            save_file(tensors, str(tmp), metadata={"hypercolumns": json.dumps(metadata)})
        else:
            payload = {
                "features": {k: v.detach().cpu() for k, v in features.items()},
                "points": {k: v.detach().cpu() for k, v in points.items()},
                "metadata": dict(metadata),
            }
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
    return [path]
