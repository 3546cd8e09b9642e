"""Read images from disk and turn them into normalised model inputs.

Any format Pillow reads is accepted. Decoding rules, in order:

* EXIF orientation is applied (``ImageOps.exif_transpose``): the tensor is upright.
* Transparency (RGBA, LA, PA, palette images with a transparent colour) is **composited on
  white**, so transparent pixels look like paper, not like black ink.
* 16-bit images (``I;16`` and friends) are scaled by ``1/65535``, not clipped to 8 bits; 32-bit
  integer images (``I``) are treated as 16-bit data when a value exceeds 255, else as 8-bit;
  float images (``F``) are taken as ``[0, 1]`` when their maximum is at most 1, else ``/255``.
* Channels follow the model's first convolution: 3 (grey images are replicated) or 1 (colour
  images become luminance, ITU-R 601-2).
* A file of several frames (an animated GIF, WebP or PNG, a multi-page TIFF) gives its **first
  frame**, with one :class:`~hypercolumns.errors.ImageWarning` naming the file and its frame
  count, and ``frames`` in its :class:`Preprocessing` record. A model input is one image, and
  the first frame is what every viewer and thumbnail shows for such a file; refusing it would
  stop a folder over one GIF, and reading every frame would turn one path into many keys.
  To use other frames, split the file first (e.g. ``ImageSequence`` of Pillow). Multi-picture
  JPEGs (MPO: a camera's previews or depth maps after the photo) are counted but not warned
  about: their first picture *is* the photo.

Pixel values are in ``[0, 1]`` before normalisation ``(x - mean) / std``. The mean and std come
from the model: timm models carry them in ``model.pretrained_cfg``; torchvision models get the
ImageNet values that every torchvision classification weight uses (``0.485, 0.456, 0.406`` /
``0.229, 0.224, 0.225``); other models get none (mean 0, std 1). ``mean``/``std`` override.

Geometry: by default the image keeps its own size. ``resize="224"`` scales the shorter side to
224 (aspect kept), ``resize="224,320"`` to exactly ``H, W``; ``crop="center:224"`` or
``"center:H,W"`` then cuts the centre. Resizing is antialiased, with the model's interpolation
(timm ``pretrained_cfg``; bilinear otherwise).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from hypercolumns._checks import size_spec
from hypercolumns.errors import ImageError, ImageWarning, InputSizeError, OutputTooLargeError
from hypercolumns.models import INTERPOLATIONS, input_channels, normalization

__all__ = [
    "Preprocessing",
    "check_decoded_size",
    "cropped",
    "image_notes",
    "load_image",
    "per_channel",
    "read_image",
    "read_mask",
    "resized",
    "resized_size",
]


@dataclass(frozen=True)
class Preprocessing:
    """What was done to an image to make the model input (stored as metadata with features).

    Attributes:
        path: The image file.
        mode: Pillow mode of the file (``RGB``, ``L``, ``I;16``, ``RGBA``, ``P``...).
        original_size: ``(H, W)`` of the upright image, before resizing.
        size: ``(H, W)`` of the model input.
        channels: Channels of the model input.
        exif_transposed: The file's EXIF orientation rotated or flipped the pixels.
        alpha: ``composited on white`` when the file had transparency, else ``none``.
        scale: Divisor that brought the pixel values to ``[0, 1]`` (255, 65535 or 1).
        resize: The ``resize`` policy as given (``None``: the image's own size).
        crop: The ``crop`` policy as given (``None``: no crop).
        interpolation: Resampling filter used when resizing.
        mean: Per-channel mean subtracted.
        std: Per-channel divisor.
        normalization: Where ``mean``/``std`` come from (see :class:`Normalization`).
        frames: Frames (or pages) in the file; only the first is used (see the module's notes).
    """

    path: str
    mode: str
    original_size: tuple[int, int]
    size: tuple[int, int]
    channels: int
    exif_transposed: bool
    alpha: str
    scale: float
    resize: str | None
    crop: str | None
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str
    frames: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``(B, C, H, W)`` or ``(C, H, W)`` back to ``[0, 1]`` pixels."""
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return (x * std + mean).clamp(0, 1)


_collecting = threading.local()


@contextmanager
def image_notes() -> Iterator[list[str]]:
    """In this block, and in this thread only, what :func:`load_image` and :func:`read_image`
    would warn about an image (:class:`~hypercolumns.errors.ImageWarning`: a file of several
    frames) is added to the list yielded instead. For code that keeps such notes per image
    while other threads run: ``warnings.catch_warnings`` changes the whole process's
    warnings, so a warning of another thread could land in the list, or one of this thread's
    escape it."""
    notes: list[str] = []
    outer = getattr(_collecting, "notes", None)
    _collecting.notes = notes
    try:
        yield notes
    finally:
        _collecting.notes = outer


def _note(message: str) -> None:
    """Warn about an image (see :func:`image_notes`), for the caller of the public function
    two frames up."""
    notes = getattr(_collecting, "notes", None)
    if notes is not None:
        notes.append(message)
    else:
        warnings.warn(message, ImageWarning, stacklevel=4)


def read_image(path: str | Path) -> Image.Image:
    """Open an image file, fully decoded and upright (EXIF orientation applied).

    Raises:
        ImageError: The file is missing, not an image, or truncated; the message names it.
    """
    return _read(Path(path))[0]


def _read(path: Path, what: str = "image") -> tuple[Image.Image, str, bool, int]:
    """The upright decoded image (the first frame), the file's mode, whether EXIF orientation
    moved pixels, and the file's frame count; errors name the file a ``what``."""
    if not path.is_file():
        raise ImageError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        with Image.open(path) as img:
            frames = max(1, int(getattr(img, "n_frames", 1)))
            img.load()  # decode now: truncated files fail here, not later
            orientation = img.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(img)
            upright.load()
            if frames > 1 and img.format != "MPO":
                _note(
                    f"{what} {str(path)!r} has {frames} frames ({img.format} "
                    f"{'pages' if img.format == 'TIFF' else 'animation'}); only the first is used"
                )
            return upright, img.mode, orientation not in (1, None), frames
    except UnidentifiedImageError as err:
        raise ImageError(f"cannot read {str(path)!r}: not an image format Pillow knows") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageError(f"cannot read {what} {str(path)!r}: {reason}") from err


def _pixels(img: Image.Image) -> tuple[np.ndarray[Any, Any], float, bool]:
    """``(H, W, C)`` pixels with C 1 or 3: float32 in ``[0, 1]``, or uint8 still to be divided
    by the scale (8-bit images, scaled once laid out as channels, in one pass); the scale, and
    whether an alpha channel was composited."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or raw.max(initial=0) > 255 else 255.0
        return (np.clip(raw / scale, 0, 1)[..., None]).astype(np.float32), scale, False
    if mode == "F":
        raw = np.asarray(img, dtype=np.float64)
        scale = 1.0 if raw.max(initial=0) <= 1 else 255.0
        return (np.clip(raw / scale, 0, 1)[..., None]).astype(np.float32), scale, False
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        if mode in ("LA", "La") or (mode == "L"):
            img = img.convert("L")
    elif mode in ("1", "L"):
        img = img.convert("L")
    elif mode != "RGB":
        img = img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV...
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, 255.0, has_alpha


def _to_channels(arr: np.ndarray[Any, Any], scale: float, channels: int) -> torch.Tensor:
    """``(H, W, C)`` pixels (see :func:`_pixels`) as a ``(1, channels, H, W)`` float32 tensor
    in ``[0, 1]``."""
    if arr.dtype == np.uint8:  # laid out as channels first, a quarter of the bytes to move
        x = torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C")).float()[None]
        x.div_(scale)  # the same float32 division as numpy's
    else:
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(1, 3, *x.shape[2:]).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def resized(x: torch.Tensor, spec: str, interpolation: str) -> torch.Tensor:
    """Resize ``(..., H, W)`` by a ``resize`` policy: ``"S"`` (shorter side, aspect kept) or
    ``"H,W"``; antialiased and clamped to ``[0, 1]`` unless ``interpolation`` is ``nearest``
    (masks)."""
    h, w = x.shape[-2:]
    size = resized_size((int(h), int(w)), spec)
    if size == (h, w):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    out = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)
    return out.clamp(0, 1)


def resized_size(size: tuple[int, int], spec: str) -> tuple[int, int]:
    """The ``(H, W)`` that a ``resize`` policy makes of an image of ``size``."""
    parts = size_spec(spec, "resize")
    h, w = size
    if len(parts) == 2:
        return parts[0], parts[1]
    short = parts[0]
    if h <= w:
        return short, max(1, round(w * short / h))
    return max(1, round(h * short / w)), short


def check_decoded_size(
    path: Path, channels: int, resize: str | None, max_bytes: int, name: str = "max_bytes"
) -> None:
    """Refuse, before decoding it, an image whose float tensor (``H * W * channels * 4``
    bytes, plus as much again resized) would take more than ``max_bytes``; the size comes from
    the file's header (Pillow opens lazily). Files whose header cannot be read pass: decoding
    them says why.

    Raises:
        OutputTooLargeError: The decoded (or resized) image is over ``max_bytes``; ``name`` is
            how the message names the budget.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:
        return
    need = h * w * channels * 4
    detail = f"{h}x{w} pixels, {channels} float32 channel(s)"
    if resize is not None:
        rh, rw = resized_size((h, w), resize)
        need += rh * rw * channels * 4
        detail += f", resized to {rh}x{rw} (or turned)"
    if need > max_bytes:
        raise OutputTooLargeError(
            f"decoding image {str(path)!r} would take about {need / 1e9:.2f} GB ({detail}), "
            f"over the {max_bytes / 1e9:.2f} GB allowed ({name}); downscale the file, "
            "resize less, or raise the budget",
            need=need,
            limit=max_bytes,
            detail=detail,
            what=f"decoding {path.name!r}",
        )


def cropped(x: torch.Tensor, spec: str) -> torch.Tensor:
    """The centre of ``(..., H, W)`` by a crop policy: ``"center:S"`` or ``"center:H,W"``."""
    kind, sep, rest = spec.partition(":")
    if kind != "center" or not sep:
        raise InputSizeError(f"crop must be 'center:S', 'center:H,W' or 'none', got {spec!r}")
    parts = size_spec(rest, "crop")
    ch, cw = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        raise InputSizeError(
            f"crop {ch}x{cw} is larger than the image ({h}x{w}); resize first (--resize) "
            "or crop less"
        )
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    """One value per channel from one value, one per channel, or (for grey) three to average."""
    vals = tuple(float(v) for v in values)
    if len(vals) == channels:
        return vals
    if len(vals) == 1:
        return vals * channels
    if len(vals) == 3 and channels == 1:
        return (sum(vals) / 3,)
    raise ImageError(f"{what} has {len(vals)} values but the model takes {channels} channels")


def read_mask(
    path: str | Path,
    image_size: tuple[int, int],
    *,
    resize: str | int | None = None,
    crop: str | None = None,
) -> torch.Tensor:
    """The ``(H, W)`` int64 labels of the label image ``path`` (8- or 16-bit grey or palette),
    which must be ``image_size`` ``(H, W)`` like its image, resized (nearest) and cropped as the
    image was.

    Raises:
        ImageError: The file cannot be read, is not single-channel, or its size differs.
    """
    path = Path(path)
    img = _read(path, "mask")[0]
    if img.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ImageError(
            f"mask {str(path)!r} has mode {img.mode}; masks are single-channel label images "
            "(8- or 16-bit grey or palette PNG)"
        )
    labels = np.asarray(img).astype(np.int64)
    if labels.shape != tuple(image_size):
        raise ImageError(
            f"mask {str(path)!r} is {labels.shape[0]}x{labels.shape[1]}, its image "
            f"{image_size[0]}x{image_size[1]}"
        )
    t = torch.from_numpy(labels)[None, None].double()
    if resize is not None:
        t = resized(t, str(resize), "nearest")
    if crop is not None:
        t = cropped(t, crop)
    return t[0, 0].long()


def load_image(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str | int | None = None,
    crop: str | None = None,
    interpolation: str | None = None,
    max_bytes: int | None = None,
    budget_name: str = "max_bytes",
) -> tuple[torch.Tensor, Preprocessing]:
    """Read an image file as a normalised model input.

    Args:
        path: Any image file Pillow reads.
        model: The model the input is for: gives the channels and the normalisation.
        channels: Input channels (1 or 3); by default those of the model's first convolution,
            or 3 without a model.
        mean: Per-channel mean (one value or one per channel) overriding the model's.
        std: Per-channel std overriding the model's.
        resize: ``None`` (keep the size), ``"S"`` (shorter side to S, aspect kept) or ``"H,W"``.
        crop: ``None``/``"none"`` or ``"center:S"``/``"center:H,W"``, applied after ``resize``.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``; by default the model's.
        max_bytes: Refuse, before decoding, an image whose float tensor (and its resized
            copy) would take more bytes than this (see :func:`check_decoded_size`);
            ``budget_name`` names the budget in the message.

    Returns:
        The ``(1, C, H, W)`` float32 input and a record of what was done.

    Raises:
        ImageError: The file cannot be read, or mean/std do not fit the channels.
        InputSizeError: A malformed resize or crop, or a crop larger than the image.
        OutputTooLargeError: The decoded image would be larger than ``max_bytes``.
    """
    if channels is None:
        channels = input_channels(model) if model is not None else 3
    if channels not in (1, 3):
        raise ImageError(
            f"the model takes {channels} input channels; images give 1 (grey) or 3 (RGB)"
        )
    norm = normalization(model)
    interp = interpolation or norm.interpolation
    if interp not in INTERPOLATIONS:
        raise ImageError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}"
        )
    source = "user" if mean is not None or std is not None else norm.source
    mean_c = per_channel(norm.mean if mean is None else mean, channels, "mean")
    std_c = per_channel(norm.std if std is None else std, channels, "std")
    if any(s == 0 or not math.isfinite(s) for s in std_c):
        raise ImageError(f"std must be finite and non-zero, got {list(std_c)}")
    if not all(math.isfinite(m) for m in mean_c):
        raise ImageError(f"mean must be finite, got {list(mean_c)}")

    resize_s = None if resize is None else str(resize)
    if max_bytes is not None:
        check_decoded_size(Path(path), channels, resize_s, max_bytes, budget_name)
    img, mode, exif_transposed, frames = _read(Path(path))
    arr, scale, composited = _pixels(img)
    x = _to_channels(arr, scale, channels)
    original = (int(x.shape[2]), int(x.shape[3]))
    crop_s = None if crop is None or crop == "none" else crop
    if resize_s is not None:
        x = resized(x, resize_s, interp)
    if crop_s is not None:
        x = cropped(x, crop_s)
    x = x.contiguous()  # normalised in place: the same arithmetic, no more copies
    x.sub_(torch.tensor(mean_c).reshape(1, -1, 1, 1)).div_(torch.tensor(std_c).reshape(1, -1, 1, 1))
    record = Preprocessing(
        path=str(path),
        mode=mode,
        original_size=original,
        size=(int(x.shape[2]), int(x.shape[3])),
        channels=channels,
        exif_transposed=exif_transposed,
        alpha="composited on white" if composited else "none",
        scale=scale,
        resize=resize_s,
        crop=crop_s,
        interpolation=interp,
        mean=mean_c,
        std=std_c,
        normalization=source,
        frames=frames,
    )
    return x, record
