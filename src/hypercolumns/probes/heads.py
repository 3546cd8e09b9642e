"""Per-pixel heads trained on standardised hypercolumn samples, in torch, deterministic for a
seed: multinomial logistic regression (full-batch L-BFGS, small L2), ridge regression (closed
form) and a one-hidden-layer perceptron (full-batch L-BFGS from a seeded initialisation).

A head holds its tensors by name (what :class:`~hypercolumns.probes.probe.Probe` saves):
``weight`` ``(K, C)`` and ``bias`` ``(K,)`` for the linear heads; ``hidden.weight``
``(D, C)``, ``hidden.bias``, ``out.weight`` ``(K, D)``, ``out.bias`` for the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hypercolumns.errors import OptionError

__all__ = ["HEADS", "Head", "HeadKind", "fit_head"]

HeadKind = Literal["linear", "mlp"]
HEADS: tuple[str, ...] = ("linear", "mlp")


@dataclass(frozen=True)
class Head:
    """A trained head: ``kind`` (``"linear"`` or ``"mlp"``) and its tensors by name."""

    kind: str
    tensors: dict[str, torch.Tensor]

    @property
    def outputs(self) -> int:
        """``K``: classes or regressed channels."""
        key = "bias" if self.kind == "linear" else "out.bias"
        return int(self.tensors[key].shape[0])

    @property
    def channels(self) -> int:
        """``C``: hypercolumn channels it reads."""
        key = "weight" if self.kind == "linear" else "hidden.weight"
        return int(self.tensors[key].shape[1])

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Outputs ``(..., K)`` of standardised hypercolumns ``z`` ``(..., C)``."""
        t = {k: v.to(z) for k, v in self.tensors.items()}
        if self.kind == "linear":
            return F.linear(z, t["weight"], t["bias"])
        hidden = F.relu(F.linear(z, t["hidden.weight"], t["hidden.bias"]))
        return F.linear(hidden, t["out.weight"], t["out.bias"])


def _lbfgs(params: list[torch.Tensor], loss_fn: object, max_iter: int) -> None:
    opt = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss: torch.Tensor = loss_fn()  # type: ignore[operator]
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]


def _logistic(z: torch.Tensor, y: torch.Tensor, k: int, l2: float, max_iter: int) -> Head:
    weight = torch.zeros(k, z.shape[1], requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)

    def loss() -> torch.Tensor:
        return F.cross_entropy(F.linear(z, weight, bias), y) + 0.5 * l2 * (weight**2).sum()

    _lbfgs([weight, bias], loss, max_iter)
    return Head("linear", {"weight": weight.detach(), "bias": bias.detach()})


def _ridge(z: torch.Tensor, y: torch.Tensor, l2: float) -> Head:
    """``min |z W^T + b - y|^2 / M + l2 |W|^2`` in closed form (float64)."""
    zd, yd = z.double(), y.double()
    m, c = zd.shape
    zm, ym = zd.mean(0), yd.mean(0)
    zc, yc = zd - zm, yd - ym
    lam = l2 * m
    if c <= m:
        gram = zc.T @ zc + lam * torch.eye(c, dtype=torch.float64)
        w = torch.linalg.solve(gram, zc.T @ yc).T
    else:  # the dual: an M x M system
        gram = zc @ zc.T + lam * torch.eye(m, dtype=torch.float64)
        w = (zc.T @ torch.linalg.solve(gram, yc)).T
    b = ym - w @ zm
    return Head("linear", {"weight": w.float().contiguous(), "bias": b.float()})


def _mlp(
    z: torch.Tensor,
    y: torch.Tensor,
    k: int,
    task: str,
    hidden: int,
    l2: float,
    max_iter: int,
    seed: int,
) -> Head:
    gen = torch.Generator().manual_seed(seed)
    c = z.shape[1]
    w1 = (torch.randn(hidden, c, generator=gen) * (2.0 / c) ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(k, hidden, generator=gen) * (1.0 / hidden) ** 0.5).requires_grad_()
    b2 = torch.zeros(k, requires_grad=True)
    target = y if task == "classify" else y.float()

    def loss() -> torch.Tensor:
        out = F.linear(F.relu(F.linear(z, w1, b1)), w2, b2)
        fit = F.cross_entropy(out, target) if task == "classify" else F.mse_loss(out, target)
        total: torch.Tensor = fit + 0.5 * l2 * ((w1**2).sum() + (w2**2).sum())
        return total

    _lbfgs([w1, b1, w2, b2], loss, max_iter)
    return Head(
        "mlp",
        {"hidden.weight": w1.detach(), "hidden.bias": b1.detach(),
         "out.weight": w2.detach(), "out.bias": b2.detach()},
    )  # fmt: skip


def fit_head(
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str,
    head: str = "linear",
    outputs: int,
    l2: float = 1e-4,
    hidden: int = 256,
    max_iter: int = 200,
    seed: int = 0,
) -> Head:
    """Train a head on standardised samples.

    Args:
        z: ``(M, C)`` standardised hypercolumns.
        y: ``(M,)`` int64 labels in ``[0, outputs)`` (``task="classify"``) or ``(M, K)``
            float values (``"regress"``).
        task: ``"classify"`` or ``"regress"``.
        head: ``"linear"`` (logistic or ridge regression) or ``"mlp"`` (one hidden layer).
        outputs: ``K``.
        l2: Weight of the L2 penalty (per sample: the loss is a mean).
        hidden: Hidden units of the MLP.
        max_iter: L-BFGS iterations (logistic regression and MLP).
        seed: Initialisation of the MLP (the linear heads start from zero).
    """
    if head not in HEADS:
        raise OptionError(f"head must be one of {', '.join(map(repr, HEADS))}, got {head!r}")
    if not (l2 >= 0):  # also NaN
        raise OptionError(f"l2 must be a non-negative number, got {l2!r}")
    z = z.float()
    with torch.enable_grad():
        if head == "mlp":
            return _mlp(z, y, outputs, task, hidden, l2, max_iter, seed)
        if task == "classify":
            return _logistic(z, y, outputs, l2, max_iter)
    return _ridge(z, y, l2)
