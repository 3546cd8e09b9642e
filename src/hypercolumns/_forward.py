"""Forward-pass plumbing shared by feature capture, the ERF, the tracer and the ground truth.

Hooks that are always removed, an exception that ends a forward pass once what is needed has
run, the first tensor of a module's output, and eval mode that restores every module's own flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["StopForward", "evaluating", "first_tensor", "hooked"]


class StopForward(Exception):  # noqa: N818 - control flow, never seen by callers
    """Raised by a hook once every module it waits for has run: ends the forward pass early."""


def first_tensor(output: Any) -> torch.Tensor | None:
    """``output`` if it is a tensor, else the first tensor of a tuple or list (or ``None``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


@contextmanager
def hooked(
    modules: Mapping[str, nn.Module], make_hook: Callable[[str], Callable[..., None]]
) -> Iterator[None]:
    """Register ``make_hook(name)`` as a forward hook of each module; remove them all after."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def evaluating(model: nn.Module, *, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Put every submodule in eval mode, restoring each one's own ``training`` flag after.

    ``modules``: ``model.modules()``, when the caller has them already.
    """
    modes = [(m, m.training) for m in (model.modules() if modules is None else modules)]
    try:
        if any(mode for _, mode in modes):  # ``eval()`` costs, even on a model in eval mode
            model.eval()
        yield
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode
