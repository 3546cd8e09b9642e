"""Colorization data: a colour image's grey version as the model input and its own colour as
the regression target (the probe predicts the colour channels from the grey image)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["LUMA", "colour_target", "grey_input"]

LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G and B in the grey value."""


def _pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = x.shape[-3]
    m = torch.tensor([*mean] * (c if len(mean) == 1 else 1), dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor([*std] * (c if len(std) == 1 else 1), dtype=x.dtype).view(-1, 1, 1)
    return x * s.to(x.device) + m.to(x.device)


def colour_target(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The ``(3, H, W)`` colour in ``[0, 1]`` of a normalised ``(1, 3, H, W)`` model input."""
    return _pixels(x[0], mean, std).clamp(0, 1)


def grey_input(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The grey version of a normalised ``(B, 3, H, W)`` model input, as a normalised model
    input again (the grey value in all three channels)."""
    rgb = torch.stack([_pixels(v, mean, std) for v in x]).clamp(0, 1)
    luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    grey = (rgb * luma).sum(1, keepdim=True).expand_as(rgb)
    c = x.shape[1]
    m = torch.tensor([*mean] * (c if len(mean) == 1 else 1), dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor([*std] * (c if len(std) == 1 else 1), dtype=x.dtype).view(1, -1, 1, 1)
    return (grey - m.to(x.device)) / s.to(x.device)
