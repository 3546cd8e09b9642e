"""What the explorer accepts as an image: files Pillow reads, within a size and pixel limit.

An upload is checked before it is decoded (file size, then the pixel count from the header),
so that a huge or hostile file is refused with a message instead of filling the memory. A
picture that passes is resized for the model: its shorter side to ``Limits.side`` pixels,
the longer one at most ``Limits.longest`` (the aspect ratio is kept within that bound).
Nothing but pixels is read from an upload: no weights, no pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hypercolumns.errors import ImageError, OutputTooLargeError

__all__ = ["Limits", "check_upload", "model_size"]


@dataclass(frozen=True)
class Limits:
    """Upload limits and the size images are shown (and run) at.

    Attributes:
        max_bytes: Largest file accepted.
        max_pixels: Largest image accepted, in pixels (height times width), before resizing.
        side: Shorter side of the image the model sees.
        longest: Longest side of the image the model sees.
    """

    max_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    side: int = 224
    longest: int = 448


def check_upload(path: str | Path, limits: Limits) -> tuple[int, int]:
    """The ``(H, W)`` of an image file, after checking it against ``limits`` without decoding.

    Raises:
        ImageError: The file is missing or is not an image Pillow reads.
        OutputTooLargeError: The file or the image is larger than the limits.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageError(f"cannot read {path.name!r}: {err.strerror}") from err
    if size > limits.max_bytes:
        raise OutputTooLargeError(
            f"{path.name!r} is {size / 2**20:.1f} MiB; the explorer accepts images up to "
            f"{limits.max_bytes / 2**20:.0f} MiB",
            need=size,
            limit=limits.max_bytes,
            what=f"the upload {path.name!r}",
        )
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ImageError(
            f"{path.name!r} is not an image the explorer can read (PNG, JPEG, WebP, ...)"
        ) from err
    if width * height > limits.max_pixels:
        raise OutputTooLargeError(
            f"{path.name!r} is {width}x{height} = {width * height / 1e6:.1f} megapixels; the "
            f"explorer accepts images up to {limits.max_pixels / 1e6:.0f} megapixels",
            need=width * height,
            limit=limits.max_pixels,
            detail="pixels",
            what=f"the upload {path.name!r}",
        )
    if width == 0 or height == 0:
        raise ImageError(f"{path.name!r} has no pixels ({width}x{height})")
    return height, width


def model_size(size: tuple[int, int], limits: Limits) -> tuple[int, int]:
    """The ``(H, W)`` an image of ``size`` is shown at: shorter side ``limits.side``, longer
    side at most ``limits.longest``."""
    h, w = size
    scale = limits.side / min(h, w)
    scale = min(scale, limits.longest / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))
