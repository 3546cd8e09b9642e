"""The traced run: a dispatch mode that gives every ATen op's outputs their states, module
hooks that record each module's output, and the fallback from meta to real tensors.

:func:`trace` runs the model on meta tensors (no arithmetic); when the model needs real values
(data-dependent control flow, ops without meta kernels) it runs again on a real zero image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from hypercolumns._forward import evaluating, first_tensor
from hypercolumns.errors import GeometryWarning, HypercolumnsError, InputSizeError, ModelError
from hypercolumns.rf import geometry as g
from hypercolumns.rf._aten import bind
from hypercolumns.rf.trace._meta import _meta_shortcut, _Op, _shortcuts, _to_meta
from hypercolumns.rf.trace.rules.call import _Call, _tensors
from hypercolumns.rf.trace.rules.mixing import _broadcast
from hypercolumns.rf.trace.state import Dim, Factor, State, _flat, _OpError, _plain, _States


@dataclass
class ModuleRecord:
    """What one module did the first time it ran."""

    name: str
    module: nn.Module
    order: int
    is_leaf: bool
    output: torch.Tensor | None = None
    state: State | None = None


@dataclass
class Trace:
    """The result of one traced run."""

    input_size: tuple[int, int]
    records: list[ModuleRecord]
    warnings: list[str] = field(default_factory=list)
    meta: bool = True


class _Tracer(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, meta: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.meta = meta
        self.states = _States(meta)
        self.stack: list[str] = []
        self.warnings: dict[str, None] = {}
        self.ops: dict[Any, _Op] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = self.ops.get(func)
        if op is None:
            op = self.ops[func] = _Op.of(func)
        kwargs = kwargs or {}
        if op.decompose:
            # Composite ops reach the mode undecomposed in inference mode or with inference
            # tensors: follow their decomposition instead of guessing.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        if self.meta and any(t.is_meta for t in tensors):
            out = _meta_shortcut(op, args)
            if out is None:
                args = tuple(_to_meta(a) for a in args)
                kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        states = [self.states.get(t) for t in tensors]
        if any(s is not None for s in states):  # else: weights, constants
            self.record(
                op.name,
                out,
                states,
                lambda: self._apply(func, op, args, kwargs, out, tensors, states),
            )
        return out

    def record(
        self, name: str, out: Any, states: Sequence[State | None], derive: Callable[[], Any]
    ) -> None:
        """Give the outputs of op ``name`` their states; ``derive`` applies the op's rule."""
        if all(s is None for s in states):
            return
        outs = [
            o
            for o in (out if isinstance(out, tuple | list) else (out,))
            if isinstance(o, torch.Tensor)
        ]
        if not outs:
            return
        if any(s is not None and s.unknown for s in states):
            for o in outs:
                self.states[o] = _flat(o.shape, unknown=True)
            return
        try:
            result = derive()
        except _OpError as err:
            self._unknown(name, str(err), outs)
            return
        results = result if isinstance(result, list) else [result] + [None] * (len(outs) - 1)
        mixed = any(s is not None and s.mixed for s in states)
        windows = frozenset().union(*(s.windows for s in states if s is not None and s.windows))
        for o, st in zip(outs, results, strict=False):
            if st is None:
                self.states.pop(o)
            else:
                if not st.is_global and (
                    (mixed and not st.mixed) or not windows.issubset(st.windows)
                ):
                    st = replace(st, mixed=st.mixed or mixed, windows=st.windows | windows)
                self.states[o] = st
                self._check_size(o, st)

    def _apply(
        self,
        func: Any,
        op: _Op,
        args: Any,
        kwargs: Any,
        out: Any,
        tensors: list[torch.Tensor],
        states: list[State | None],
    ) -> Any:
        out0 = out[0] if isinstance(out, tuple | list) else out
        if op.rule is not None:
            return op.rule(_Call(func, bind(func, args, kwargs), out, self.states))
        live = [(s, tuple(t.shape)) for s, t in zip(states, tensors, strict=True) if s is not None]
        if op.elementwise:
            try:
                return _broadcast(live, tuple(out0.shape))
            except _OpError:
                raise
            except Exception as err:  # shapes that do not broadcast: not elementwise after all
                raise _OpError("is not elementwise") from err
        if all(shp == tuple(out0.shape) for _, shp in live):
            raise _OpError("is not a known op (it keeps the shape but may mix positions)")
        raise _OpError("changes the shape of a spatial tensor in a way that is not known")

    def _unknown(self, name: str, why: str, outs: list[torch.Tensor]) -> None:
        where = f" in module {self.stack[-1]!r}" if self.stack else " in the model's forward"
        message = (
            f"receptive field unknown: op aten.{name}{where} {why}; layers after it are "
            "marked unknown"
        )
        if message not in self.warnings:
            self.warnings[message] = None
            warnings.warn(message, GeometryWarning, stacklevel=2)
        for o in outs:
            self.states[o] = _flat(o.shape, unknown=True)

    def _check_size(self, out: torch.Tensor, st: State) -> None:
        for dim in st.dims:
            for f in dim.factors:
                if f.axis and f.size == 0:
                    where = self.stack[-1] if self.stack else "(top level)"
                    raise InputSizeError(
                        f"the input is too small for this model: layer {where!r} "
                        f"collapses the {'height' if f.axis == 'y' else 'width'} to zero "
                        f"(output shape {tuple(out.shape)}); use a larger input size (--input-size)"
                    )


@contextmanager
def _hooks(
    modules: Sequence[tuple[str, nn.Module]], tracer: _Tracer, records: list[ModuleRecord]
) -> Iterator[None]:
    """Record each named module the first time it runs, keeping ``tracer.stack`` current.

    One global pair of module hooks serves every module (registering a pair per module costs
    more than the rest of a trace of a small model). Global hooks run before a module's own
    forward hooks, so a module that has forward hooks of its own (which may replace its output)
    gets a hook of its own, registered after them, as a plain ``register_forward_hook`` would.
    """
    names = {id(m): name for name, m in modules if name}
    seen: dict[int, ModuleRecord] = {}

    def pre(mod: nn.Module, args: Any) -> None:
        name = names.get(id(mod))
        if name is None:
            return
        tracer.stack.append(name)
        if id(mod) not in seen:
            is_leaf = next(mod.children(), None) is None
            rec = ModuleRecord(name, mod, len(records), is_leaf)
            seen[id(mod)] = rec
            records.append(rec)

    def post(mod: nn.Module, args: Any, output: Any) -> None:
        if tracer.stack:
            tracer.stack.pop()
        rec = seen[id(mod)]
        if rec.output is None:
            t = first_tensor(output)
            if t is not None:
                rec.output = t
                rec.state = tracer.states.get(t)

    own = {id(m) for name, m in modules if name and m._forward_hooks}

    def post_global(mod: nn.Module, args: Any, output: Any) -> None:
        if id(mod) in names and id(mod) not in own:
            post(mod, args, output)

    handles = [
        register_module_forward_pre_hook(pre),
        register_module_forward_hook(post_global),
    ]
    try:
        handles.extend(m.register_forward_hook(post) for name, m in modules if id(m) in own)
        yield
    finally:
        for h in handles:
            h.remove()


def _input_state(shape: Sequence[int]) -> State:
    b, c, h, w = shape
    return State(
        (
            _plain(b),
            _plain(c),
            Dim((Factor(h, "y", g.IDENTITY),)),
            Dim((Factor(w, "x", g.IDENTITY),)),
        )
    )


def trace(model: nn.Module, input_size: tuple[int, int], in_channels: int) -> Trace:
    """Run ``model`` once on a ``(1, in_channels, H, W)`` input and follow the geometry.

    Runs on meta tensors (no arithmetic); when the model needs real values (data-dependent
    control flow, ops without meta kernels) it runs again on a real zero image.

    Raises:
        InputSizeError: A layer's output would have zero height or width.
        ModelError: The model raised for another reason (the message names the module).
    """
    shape = (1, in_channels, *input_size)
    try:
        return _run(model, shape, meta=True)
    except HypercolumnsError:
        raise
    except Exception:
        pass
    return _run(model, shape, meta=False)


def _run(model: nn.Module, shape: tuple[int, ...], meta: bool) -> Trace:
    records: list[ModuleRecord] = []
    modules = list(model.named_modules())
    tracer = _Tracer(meta)
    x = torch.empty(shape, device="meta") if meta else torch.zeros(shape)
    tracer.states[x] = _input_state(shape)
    try:
        # Outside inference mode: there, composite ops (aten.conv2d) are not decomposed.
        with (
            evaluating(model, modules=[m for _, m in modules]),
            torch.inference_mode(False),
            torch.no_grad(),
            _hooks(modules, tracer, records),
            _shortcuts(modules, tracer),
            tracer,
        ):
            model(x)
    except HypercolumnsError:
        raise
    except Exception as err:
        if meta:
            raise
        where = tracer.stack[-1] if tracer.stack else None
        culprit = ""
        if where:
            module = model.get_submodule(where)
            culprit = f" in module {where!r} ({type(module).__name__})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "too small" in first or "size per channel" in first or "Output size" in first:
            raise InputSizeError(
                f"the input {shape[2]}x{shape[3]} is too small for this model: it fails"
                f"{culprit}: {first}"
            ) from err
        raise ModelError(
            f"the model raised{culprit} on a {tuple(shape)} input: {type(err).__name__}: {first}"
        ) from err
    return Trace((shape[2], shape[3]), records, list(tracer.warnings), meta)
