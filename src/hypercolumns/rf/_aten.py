"""ATen plumbing shared by the tracer and the ground truth: no geometry here.

Both see ops as a ``TorchDispatchMode`` does, as an ``OpOverload`` with positional and keyword
arguments; :func:`bind` names those arguments by the op's schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["bind"]


def bind(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The arguments of a call of ``func`` by schema name: given positionally or by keyword,
    else the schema's default, else ``None``."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound
