"""Plans kept for the one-shot functions, so that calling them in a loop costs what a planned
extractor costs.

A plan (a receptive-field analysis, resolved layers, resampling tables) is kept per model and
per key (layers, input size, options), at most :data:`PER_MODEL` per model, least recently
used first out. It is never stale: it is used only while the model's modules are the very
objects it was planned with, under the same names (a module replaced, added, removed or
registered again means a new plan). It never keeps a model alive: the cache holds models
weakly, and a kept plan holds its model weakly too (``weaken``).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from torch import nn

__all__ = ["PER_MODEL", "planned"]

PER_MODEL = 8

P = TypeVar("P")


class _Plans(Generic[P]):
    """The plans of one model, valid for the modules it had when they were made."""

    def __init__(self, model: nn.Module) -> None:
        self.names, modules = _structure(model)
        self.modules = [weakref.ref(m) for m in modules]
        self.plans: OrderedDict[Hashable, P] = OrderedDict()

    def valid_for(self, model: nn.Module) -> bool:
        names, modules = _structure(model)
        return names == self.names and all(
            ref() is m for ref, m in zip(self.modules, modules, strict=True)
        )


def _structure(model: nn.Module) -> tuple[list[str], list[nn.Module]]:
    pairs = list(model.named_modules(remove_duplicate=False))
    return [n for n, _ in pairs], [m for _, m in pairs]


_CACHE: weakref.WeakKeyDictionary[nn.Module, _Plans[object]] = weakref.WeakKeyDictionary()


def planned(
    model: nn.Module, key: Hashable, build: Callable[[], P], weaken: Callable[[P], None]
) -> P:
    """The plan of ``model`` for ``key``: a kept one, or ``build()`` (then kept, after
    ``weaken(plan)`` made it hold the model weakly)."""
    plans = _CACHE.get(model)
    if plans is None or not plans.valid_for(model):
        plans = _CACHE[model] = _Plans(model)
    if key in plans.plans:
        plans.plans.move_to_end(key)
        return plans.plans[key]  # type: ignore[return-value]
    plan = build()
    weaken(plan)
    plans.plans[key] = plan
    if len(plans.plans) > PER_MODEL:
        plans.plans.popitem(last=False)
    return plan
