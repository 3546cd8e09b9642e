"""Scores of dense predictions, accumulated image by image: a confusion matrix for labels
(pixel accuracy, per-class IoU, mIoU) and squared errors for values (RMSE, PSNR)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Confusion", "SquaredError"]


class Confusion:
    """A ``(K, K)`` confusion matrix (rows: target, columns: prediction) over labelled pixels.

    Args:
        names: The class names, in label order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        k = len(self.names)
        self.matrix = torch.zeros(k, k, dtype=torch.int64)
        self.images = 0

    def add(self, target: torch.Tensor, predicted: torch.Tensor, valid: torch.Tensor) -> None:
        """One image: ``(H, W)`` target and predicted labels, ``valid`` the pixels to count."""
        k = len(self.names)
        t, p = target[valid].long().cpu(), predicted[valid].long().cpu()
        self.matrix += torch.bincount(t * k + p, minlength=k * k).view(k, k)
        self.images += 1

    def scores(self) -> dict[str, Any]:
        """``pixel_accuracy``, ``per_class_iou`` (name to IoU; ``None`` for a class neither in
        the targets nor in the predictions), ``miou`` (mean over the classes present in the
        targets or the predictions, ``miou_over`` says so), ``pixels``, ``images``."""
        m = self.matrix.double()
        total = float(m.sum())
        hits = m.diag()
        union = m.sum(0) + m.sum(1) - hits
        per_class: dict[str, float | None] = {}
        for i, name in enumerate(self.names):
            per_class[name] = None if union[i] == 0 else float(hits[i] / union[i])
        present = [v for v in per_class.values() if v is not None]
        return {
            "miou": sum(present) / len(present) if present else float("nan"),
            "miou_over": "classes present in the targets or the predictions",
            "pixel_accuracy": float(hits.sum()) / total if total else float("nan"),
            "per_class_iou": per_class,
            "pixels": int(total),
            "images": self.images,
        }


class SquaredError:
    """Squared errors of ``(K, H, W)`` values; PSNR against a ``peak`` value (1 for pixel
    values in ``[0, 1]``)."""

    def __init__(self, peak: float = 1.0) -> None:
        self.peak = peak
        self.total = 0.0
        self.count = 0
        self.images = 0

    def add(self, target: torch.Tensor, predicted: torch.Tensor) -> None:
        """One image: ``(K, H, W)`` target and predicted values."""
        diff = (predicted.double() - target.double().to(predicted.device)) ** 2
        self.total += float(diff.sum())
        self.count += diff.numel()
        self.images += 1

    def scores(self) -> dict[str, Any]:
        """``rmse``, ``psnr`` (dB, against ``psnr_peak``), ``pixels``, ``images``."""
        rmse = math.sqrt(self.total / self.count) if self.count else float("nan")
        psnr = float("inf") if rmse == 0 else 20 * math.log10(self.peak / rmse)
        return {
            "rmse": rmse,
            "psnr": psnr,
            "psnr_peak": self.peak,
            "values": self.count,
            "images": self.images,
        }
