"""Run a model once and follow the receptive-field geometry of every tensor, op by op.

The model runs eagerly (Python control flow in ``forward`` just works) on *meta* tensors, so no
arithmetic is done: a ``TorchDispatchMode`` sees every ATen op, moves its tensor arguments to
the meta device, runs it for the output shape, and derives the output's geometry from its
inputs'. Forward hooks read the geometry of each module's output.

Each tensor derived from the input carries a :class:`State`: per tensor dimension, the factors
it is made of (a flattened ``(H, W)`` token axis is two factors), and for spatial factors their
exact :class:`~hypercolumns.rf.geometry.Axis`. Tensors that do not depend on the input (weights,
constants) carry none.

Conventions beyond the textbook (``docs/geometry.md``):

* *Global context*, a tensor pooled over the image that keeps no positions (a squeeze-and-
  excitation gate, a pooled ASPP branch, normalisation statistics), is a per-image constant
  when it meets a map: it does not widen the map's receptive field.
* A *mixed* map keeps its positions but each unit depends on the whole image (after
  self-attention, or a softmax over positions); its receptive field is the whole input.
* An op whose geometry is unknown and that changes spatial size makes its output *unknown*
  and raises a :class:`~hypercolumns.errors.GeometryWarning`.

Modules, each using only those before it: :mod:`.state` (the tensor-state model),
:mod:`.rules` (one rule per op, and the op table), :mod:`._meta` (shortcuts of the meta run)
and :mod:`._tracer` (the dispatch mode, module hooks and :func:`trace`).
"""

from hypercolumns.rf.trace._tracer import ModuleRecord, Trace, trace
from hypercolumns.rf.trace.state import Dim, Factor, Split, State, joined_axes

__all__ = ["Dim", "Factor", "ModuleRecord", "Split", "State", "Trace", "joined_axes", "trace"]
