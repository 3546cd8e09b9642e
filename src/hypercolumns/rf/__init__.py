"""Where a network looks: exact receptive fields, effective receptive fields, the gradient oracle.

``geometry`` is pure receptive-field arithmetic (no torch); ``trace`` follows a model's ATen ops
on meta tensors and applies it; ``layers`` turns the trace into the per-layer table and selects
layers by name or index; ``erf`` measures effective receptive fields from gradients;
``groundtruth`` measures theoretical ones from gradients, independently of the analysis.

The functions ``layers()`` and ``erf()`` are exported by :mod:`hypercolumns` only, so that
``hypercolumns.rf.layers`` and ``hypercolumns.rf.erf`` stay the modules.
"""

from hypercolumns.rf.geometry import ReceptiveField
from hypercolumns.rf.layers import Layer, MapLayout, select

__all__ = ["Layer", "MapLayout", "ReceptiveField", "select"]
