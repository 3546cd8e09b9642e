"""Spatial tags: which dims of each image-derived tensor hold positions, followed at the ATen
level.

The input's last two dims are spatial; reshapes, permutes, reductions and matrix products move
the tags. The tagger knows nothing of receptive fields: the surrogate uses it only to tell
*global context* (an image-derived tensor that keeps no spatial dim) from maps.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hypercolumns.rf._aten import bind

Tags = tuple[bool, ...]

_REDUCTIONS = frozenset(
    {
        "mean",
        "sum",
        "amax",
        "amin",
        "max",
        "min",
        "std",
        "var",
        "var_mean",
        "std_mean",
        "logsumexp",
        "norm",
        "linalg_vector_norm",
        "prod",
        "argmax",
        "argmin",
        "median",
        "nanmedian",
        "nansum",
        "nanmean",
        "mode",
        "any",
        "all",
        "count_nonzero",
        "aminmax",
    }
)
_VIEWS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "_reshape_alias",
        "squeeze",
        "unsqueeze",
        "flatten",
        "unflatten",
        "alias",
        "view_as",
        "reshape_as",
        "expand_as",
    }
)


def _dims(value: Any, rank: int) -> list[int]:
    if value is None:
        return list(range(rank))
    items = [value] if isinstance(value, int) else list(value)
    if not items:
        return list(range(rank))
    return [int(d) % rank if rank else 0 for d in items]


def _regroup(tags: Tags, shape_in: Sequence[int], shape_out: Sequence[int]) -> Tags:
    """Tags after a reshape: an output dim is spatial when its digits overlap a spatial dim's.

    In row-major order a dim of size ``n`` whose elements are ``s`` apart covers the "digits"
    ``[s, s*n)`` of the flat index; two dims share elements' positions when these overlap.
    """

    def spans(shape: Sequence[int]) -> list[tuple[int, int]]:
        out, stride = [], 1
        for size in reversed(shape):
            out.append((stride, stride * int(size)))
            stride *= int(size)
        return out[::-1]

    source = [(a, b) for t, (a, b) in zip(tags, spans(shape_in), strict=True) if t and b > a]
    return tuple(d > c and any(a < d and c < b for a, b in source) for c, d in spans(shape_out))


class _TagStore:
    """Tags of live tensors, by identity (a tensor's id can be reused once it is freed)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref[torch.Tensor], Tags]] = {}

    def get(self, value: object) -> Tags | None:
        if not isinstance(value, torch.Tensor):
            return None
        item = self._items.get(id(value))
        if item is None or item[0]() is not value:
            return None
        return item[1]

    def set(self, tensor: torch.Tensor, tags: Tags) -> None:
        key = id(tensor)

        def forget(_: object) -> None:
            self._items.pop(key, None)

        self._items[key] = (weakref.ref(tensor, forget), tags)


def _merge(inputs: Sequence[tuple[Tags, Sequence[int]]], shape: Sequence[int]) -> Tags:
    """Right-aligned union of tags (broadcasting); a dim an input broadcasts from size 1 to a
    larger size does not take that input's tag."""
    rank = len(shape)
    merged = [False] * rank
    for tags, shape_in in inputs:
        lead = rank - len(tags)
        for d, t in enumerate(tags):
            if t and d + lead >= 0 and not (shape_in[d] == 1 and shape[d + lead] != 1):
                merged[d + lead] = True
    return tuple(merged)


_MATMUL_ARGS = {
    "mm": ("self", "mat2"),
    "addmm": ("mat1", "mat2"),
    "bmm": ("self", "mat2"),
    "baddbmm": ("batch1", "batch2"),
    "matmul": ("self", "other"),
    "mv": ("self", "vec"),
}
_ADAPTIVE = {
    "_adaptive_avg_pool2d": 2,
    "adaptive_max_pool2d": 2,
    "_adaptive_avg_pool3d": 3,
    "adaptive_max_pool3d": 3,
    "adaptive_max_pool1d": 1,
}


class _Tagger(TorchDispatchMode):
    """Follows which dims of image-derived tensors are spatial, op by op."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.tags = _TagStore()
        self.guessed: dict[str, None] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        inputs = [(t, tags) for t in flat if (tags := self.tags.get(t)) is not None]
        if not inputs:
            return out
        outs = [
            o
            for o in (out if isinstance(out, tuple | list) else (out,))
            if isinstance(o, torch.Tensor)
        ]
        name = func.overloadpacket.__name__.rstrip("_")
        for o in outs:
            self.tags.set(o, self._rule(func, name, args, kwargs, inputs, o))
        return out

    def _rule(
        self,
        func: Any,
        name: str,
        args: Any,
        kwargs: dict[str, Any],
        inputs: list[tuple[torch.Tensor, Tags]],
        out: torch.Tensor,
    ) -> Tags:
        first, tags = inputs[0]
        rank, shape = out.dim(), tuple(out.shape)
        if name in _REDUCTIONS:
            bound = bind(func, args, kwargs)
            reduced = set(_dims(bound.get("dim"), first.dim()))
            if bound.get("keepdim"):
                return tuple(t and d not in reduced for d, t in enumerate(tags))
            kept = tuple(t for d, t in enumerate(tags) if d not in reduced)
            return kept if len(kept) == rank else (False,) * rank
        if name in _ADAPTIVE:
            n = _ADAPTIVE[name]
            if all(s == 1 for s in shape[-n:]) and any(s != 1 for s in first.shape[-n:]):
                return tags[:-n] + (False,) * n
            return tags
        if name in ("permute", "transpose", "t"):
            bound = bind(func, args, kwargs)
            order = list(range(rank))
            if name == "permute":
                order = _dims(bound["dims"], rank)
            elif rank >= 2:
                a, b = int(bound.get("dim0", 0)) % rank, int(bound.get("dim1", 1)) % rank
                order[a], order[b] = order[b], order[a]
            return tuple(tags[d] for d in order)
        if name in _VIEWS:
            return _regroup(tags, tuple(first.shape), shape)
        if name == "convolution" and len(tags) == rank:  # channels are summed over
            return (tags[0], False, *tags[2:])
        if name in ("expand", "repeat"):
            return (False,) * (rank - len(tags)) + tags
        if name in ("select", "unbind"):
            d = int(bind(func, args, kwargs).get("dim", 0)) % first.dim()
            return tags[:d] + tags[d + 1 :]
        if name == "stack":
            d = int(bind(func, args, kwargs).get("dim", 0)) % rank
            merged = _merge(
                [(t, tuple(x.shape)) for x, t in inputs if len(t) == rank - 1],
                shape[:d] + shape[d + 1 :],
            )
            return (*merged[:d], False, *merged[d:])
        if name in _MATMUL_ARGS:
            bound = bind(func, args, kwargs)
            ta, tb = (self.tags.get(bound.get(n)) for n in _MATMUL_ARGS[name])
            rows = ta[:-1] if ta is not None else (False,) * (rank - 1)
            if name == "mv":
                return rows
            cols = tb[-1:] if tb is not None else (False,)
            lead = tb[:-2] if tb is not None and len(tb) == rank else ()
            if lead and len(rows) == len(lead) + 1:
                rows = tuple(x or y for x, y in zip(rows[:-1], lead, strict=True)) + rows[-1:]
            result = (rows + cols)[-rank:]
            bias = self.tags.get(bound.get("self")) if name in ("addmm", "baddbmm") else None
            if bias is not None:
                result = tuple(
                    x or y
                    for x, y in zip(
                        result, _merge([(bias, tuple(bound["self"].shape))], shape), strict=True
                    )
                )
            return result
        same = [(t, tuple(x.shape)) for x, t in inputs if len(t) == rank]
        if not same:
            self.guessed[name] = None
            same = [(t, tuple(x.shape)) for x, t in inputs]
        return _merge(same, shape)
