"""Op rules: how each ATen op maps the states of its inputs to the states of its outputs.

:mod:`.table` lists every supported op with its rule (start there); the rules live by family:
:mod:`.spatial` (the axes of a map: convolution, pooling, resampling, padding), :mod:`.windows`
(blocks and sliding windows), :mod:`.shape` (reshapes, slices, concatenation, copies) and
:mod:`.mixing` (elementwise, reductions, matrix products, attention); :mod:`.call` is what a
rule is given, and the helpers rules share.
"""
