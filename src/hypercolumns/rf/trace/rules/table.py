"""The op table: every ATen op whose geometry the tracer follows, by family, with its rule.

Ops are named as ``OpOverloadPacket``s (``aten.NAME``); an in-place variant (``NAME_``) takes
the rule of ``NAME``. Besides the ops listed:

* ops tagged ``pointwise`` by PyTorch, and those in :data:`_ELEMENTWISE`, combine their inputs
  elementwise (:func:`~hypercolumns.rf.trace.rules.mixing._broadcast`);
* ops whose name holds one of :data:`_ATTENTION` are fused attention
  (:func:`~hypercolumns.rf.trace.rules.mixing._rule_attention`);
* composite ops without a rule are followed through their decomposition;
* any other op on an image-derived tensor makes its outputs unknown, with a warning.
"""

from __future__ import annotations

from hypercolumns.rf.trace.rules.call import _Rule
from hypercolumns.rf.trace.rules.mixing import (
    _matmul_rule,
    _rule_along,
    _rule_global,
    _rule_reduce,
)
from hypercolumns.rf.trace.rules.shape import (
    _rule_cat,
    _rule_constant,
    _rule_copy,
    _rule_expand,
    _rule_first,
    _rule_index,
    _rule_moves,
    _rule_permute,
    _rule_select,
    _rule_slice,
    _rule_split,
    _rule_transpose,
    _rule_unbind,
    _rule_unsqueeze,
    _rule_view,
)
from hypercolumns.rf.trace.rules.spatial import (
    _adaptive_rule,
    _pool_rule,
    _rule_conv,
    _rule_pad,
    _rule_pixel_shuffle,
    _rule_rnn,
    _rule_roll,
    _upsample_rule,
)
from hypercolumns.rf.trace.rules.windows import _rule_col2im, _rule_im2col, _rule_unfold


def _each(rule: _Rule, *names: str) -> dict[str, _Rule]:
    return dict.fromkeys(names, rule)


_RULES: dict[str, _Rule] = {
    # --- The axes of a map (spatial.py) ----------------------------------------------------
    # Convolution and pooling: windows of the grid (or of windows stacked in the batch).
    "convolution": _rule_conv,
    **_each(_pool_rule(1), "max_pool1d", "max_pool1d_with_indices", "avg_pool1d"),
    **_each(_pool_rule(2), "max_pool2d", "max_pool2d_with_indices", "avg_pool2d"),
    **_each(_pool_rule(3), "max_pool3d", "max_pool3d_with_indices", "avg_pool3d"),
    "adaptive_max_pool1d": _adaptive_rule(1),
    "_adaptive_avg_pool2d": _adaptive_rule(2),
    "adaptive_max_pool2d": _adaptive_rule(2),
    "_adaptive_avg_pool3d": _adaptive_rule(3),
    "adaptive_max_pool3d": _adaptive_rule(3),
    # Resampling.
    "upsample_nearest1d": _upsample_rule("nearest", 1),
    "upsample_nearest2d": _upsample_rule("nearest", 2),
    "upsample_nearest3d": _upsample_rule("nearest", 3),
    "_upsample_nearest_exact1d": _upsample_rule("nearest-exact", 1),
    "_upsample_nearest_exact2d": _upsample_rule("nearest-exact", 2),
    "_upsample_nearest_exact3d": _upsample_rule("nearest-exact", 3),
    "upsample_linear1d": _upsample_rule("linear", 1),
    "upsample_bilinear2d": _upsample_rule("linear", 2),
    "upsample_bicubic2d": _upsample_rule("cubic", 2),
    "upsample_trilinear3d": _upsample_rule("linear", 3),
    "pixel_shuffle": _rule_pixel_shuffle(False),
    "pixel_unshuffle": _rule_pixel_shuffle(True),
    # Padding and shifts.
    **_each(
        _rule_pad,
        "constant_pad_nd",
        "reflection_pad1d",
        "reflection_pad2d",
        "reflection_pad3d",
        "replication_pad1d",
        "replication_pad2d",
        "replication_pad3d",
        "_pad_circular",
    ),
    "roll": _rule_roll,
    # Recurrences along an axis.
    **_each(_rule_rnn, "mkldnn_rnn_layer", "lstm", "gru", "rnn_tanh", "rnn_relu"),
    # --- Sliding windows (windows.py) ------------------------------------------------------
    "unfold": _rule_unfold,
    "im2col": _rule_im2col,
    "col2im": _rule_col2im,
    # --- Moving dims and values (shape.py) -------------------------------------------------
    # Reshapes (which may cut axes into blocks or join them back) and permutes.
    **_each(
        _rule_view,
        "view",
        "_unsafe_view",
        "reshape",
        "_reshape_alias",
        "squeeze",
        "flatten",
        "unflatten",
    ),
    "permute": _rule_permute,
    "transpose": _rule_transpose,
    "t": _rule_transpose,
    "unsqueeze": _rule_unsqueeze,
    "expand": _rule_expand,
    # Parts and wholes.
    "slice": _rule_slice,
    "select": _rule_select,
    "index": _rule_index,
    "cat": _rule_cat,
    "stack": lambda call: _rule_cat(call, stack=True),
    **_each(_rule_split, "split", "split_with_sizes", "unsafe_split"),
    "unbind": _rule_unbind,
    # Ops that may move values between positions: unknown along spatial dims.
    **_each(
        _rule_moves,
        "flip",
        "rot90",
        "index_select",
        "gather",
        "scatter",
        "scatter_add",
        "scatter_reduce",
        "index_put",
        "index_add",
        "take",
        "take_along_dim",
        "masked_scatter",
        "grid_sampler_2d",
        "grid_sampler_3d",
        "grid_sampler",
        "_upsample_bilinear2d_aa",
        "_upsample_bicubic2d_aa",
        "repeat",
        "as_strided",
        "nonzero",
        "masked_select",
        "diagonal",
        "tril",
        "triu",
    ),
    # Copies, and ops whose output 0 has the geometry of their input (norms, dropout).
    "copy_": _rule_copy,
    "copy": _rule_copy,
    **_each(
        _rule_first,
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional",
        "native_layer_norm",
        "native_group_norm",
        "_fused_rms_norm",
        "rms_norm",
        "cudnn_batch_norm",
        "miopen_batch_norm",
        "clone",
        "alias",
        "detach",
        "_to_copy",
        "lift_fresh",
        "contiguous",
        "native_dropout",
        "dropout",
        "feature_dropout",
        "alpha_dropout",
        "as_strided_",
        "_conj",
        "conj",
        "resolve_conj",
        "resolve_neg",
        "to",
        "type_as",
    ),
    # Outputs that hold no image values.
    **_each(
        _rule_constant,
        "zero_",
        "fill_",
        "normal_",
        "uniform_",
        "empty_like",
        "zeros_like",
        "ones_like",
        "full_like",
        "rand_like",
        "randn_like",
    ),
    # --- Combining values (mixing.py) ------------------------------------------------------
    # Matrix products: fully connected over positions, or attention.
    "mm": _matmul_rule(("self", "mat2"), False),
    "addmm": _matmul_rule(("mat1", "mat2"), False),
    "bmm": _matmul_rule(("self", "mat2"), True),
    "baddbmm": _matmul_rule(("batch1", "batch2"), True),
    "matmul": _matmul_rule(("self", "other"), True),
    "mv": _matmul_rule(("self", "vec"), False),
    # Reductions.
    **_each(
        _rule_reduce,
        "mean",
        "sum",
        "amax",
        "amin",
        "max",
        "min",
        "var",
        "std",
        "var_mean",
        "std_mean",
        "logsumexp",
        "norm",
        "linalg_vector_norm",
        "prod",
        "argmax",
        "argmin",
        "any",
        "all",
        "nansum",
        "nanmean",
        "median",
        "nanmedian",
        "mode",
        "count_nonzero",
        "aminmax",
    ),
    # Shape-preserving ops that mix values along one dim.
    **_each(
        _rule_along,
        "_softmax",
        "_log_softmax",
        "softmax",
        "log_softmax",
        "_safe_softmax",
        "cumsum",
        "cumprod",
        "logcumsumexp",
        "cummax",
        "cummin",
        "sort",
        "argsort",
        "topk",
    ),
    "embedding": _rule_global,
}

# Elementwise ops that PyTorch does not tag ``pointwise``.
_ELEMENTWISE = {"hardswish", "log_sigmoid_forward", "_prelu_kernel", "rrelu_with_noise"}

# Substrings of the names of fused attention ops.
_ATTENTION = (
    "scaled_dot_product",
    "flash_attention",
    "efficient_attention",
    "multi_head_attention",
    "_cudnn_attention",
)
