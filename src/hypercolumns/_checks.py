"""Argument guards shared across the package: one wording per kind of error.

Sizes (``224``, ``"224,320"``, ``(224, 320)``), image batches ``(B, C, H, W)`` and positive
integers are checked here, so every public function says the same thing about the same mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hypercolumns.errors import InputSizeError, OptionError

__all__ = [
    "budget",
    "device",
    "image_batch",
    "int_at_least",
    "parse_size",
    "positive_int",
    "size_spec",
]


def parse_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """``224``, ``"224"``, ``"224,320"`` or ``(224, 320)`` as ``(H, W)``."""
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(p) for p in value]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise InputSizeError(f"input size must be H or H,W with positive integers, got {value!r}")
    return parts[0], parts[1]


def size_spec(text: str, what: str) -> list[int]:
    """``"S"`` or ``"H,W"`` (``"HxW"``) as one or two positive integers; ``what`` names it."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise InputSizeError(f"{what} must be S or H,W with positive integers, got {text!r}")
    return parts


def image_batch(x: object, what: str = "expected images of shape") -> torch.Tensor:
    """``x`` if it is a non-empty floating-point ``(B, C, H, W)`` tensor, else
    :class:`InputSizeError` (for another shape: ``"{what} (B, C, H, W), got {shape or type}"``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputSizeError(f"{what} (B, C, H, W), got {got}")
    if not x.is_floating_point():
        raise InputSizeError(
            f"images must be a floating-point tensor, got {x.dtype}; convert them first (e.g. "
            "x.float() / 255, then normalise), or read files with load_image"
        )
    if x.shape[0] == 0:
        raise InputSizeError(f"the batch holds no images: shape {tuple(x.shape)}")
    return x


def positive_int(value: object, name: str) -> int:
    """``value`` if it is an int (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return value


def int_at_least(value: object, name: str, least: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise OptionError(f"{name} must be an integer of at least {least}, got {value!r}")
    return value


def budget(value: object, name: str) -> int | None:
    """A memory budget in bytes: ``None`` (the default) or an int (not a bool) of at least 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive number of bytes, got {value!r}")
    return value


def device(value: str | torch.device, *, here: bool = True) -> torch.device:
    """``value`` as a :class:`torch.device` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
    with ``here``, one this machine has. Checked before anything is built or created."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(
            f"unknown device {str(value)!r}: use cpu, cuda, cuda:N, mps or auto"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise OptionError(f"device {str(value)!r} cannot run models: use cpu, cuda, cuda:N or auto")
    if not here or dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        raise OptionError(
            f"device {str(value)!r}: PyTorch finds no {dev.type.upper()} device on this machine; "
            "use cpu (or auto)"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise OptionError(
            f"device {str(value)!r}: this machine has {count} {dev.type} device(s), "
            f"{dev.type}:0 to {dev.type}:{count - 1}"
        )
    return dev
