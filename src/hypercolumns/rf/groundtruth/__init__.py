"""Ground-truth receptive fields measured from input gradients, to check the analysis against.

:func:`hypercolumns.rf.layers.layers` derives receptive fields from shapes and op arguments on
meta tensors. This package measures them independently, the way one would by hand: make the
network linear and positive, back-propagate from one output unit, and read which input pixels
received a non-zero gradient. Those pixels are exactly the unit's theoretical receptive field.

The network is turned into a *surrogate* (a deep copy; the caller's model is never modified):

* float64, eval mode; every weight of a convolution or linear layer (any parameter named
  ``*weight`` with two or more dims) is set to a random positive value near ``1 / fan_in``,
  every ``*bias`` to 0 and every other parameter (layer scale, gains, embeddings) to 1, so all
  activations stay positive and no two paths cancel;
* nonlinearities (ReLU, GELU, SiLU, sigmoid, hard-swish, ...) and normalisations (batch, layer,
  group, RMS, evo and filter-response norms, and timm's norm + activation modules) become
  identities, both as modules and when called as functions;
* max pooling becomes average pooling over the same windows (same kernel, stride, padding,
  dilation and ``ceil_mode``); padding with ``-inf`` becomes padding with 0;
* *global context* is detached: a tensor computed from the image that keeps no spatial
  dimension (a squeeze-and-excitation gate, ``x.mean((2, 3))``, ``adaptive_avg_pool2d(x, 1)``,
  attention pooling) is a per-image constant, the convention of the analysis.

Which tensor dimensions are spatial is followed by a small tagger at the ATen level (the input's
last two dims are spatial; reshapes, permutes, reductions and matrix products move the tags);
it knows nothing of receptive fields, so the measured geometry owes nothing to the analysis.

The ground truth is independent of the analysis: it uses :func:`~hypercolumns.rf.layers.layers`
only to choose where to measure (input size and units, so that no unit's receptive field is
clipped by the image border), and a clipped measurement is detected and repeated on a larger
input, so a wrong analysis cannot make a wrong measurement.

Modules, each using only those before it: :mod:`._tags` (the spatial tagger),
:mod:`._surrogate` (the surrogate network) and :mod:`._probe` (measuring). Besides choosing
where to measure, the ground truth shares only plumbing with the analysis, none of its geometry:
forward hooks (:mod:`hypercolumns._forward`) and naming ATen arguments
(:mod:`hypercolumns.rf._aten`).
"""

from hypercolumns.errors import MeasurementError
from hypercolumns.rf.groundtruth._probe import (
    GradientRF,
    gradient_boxes,
    gradient_rf,
    rf_mismatches,
)

__all__ = [
    "GradientRF",
    "MeasurementError",
    "gradient_boxes",
    "gradient_rf",
    "rf_mismatches",
]
