"""Block names that legalize.py gives its TE computes and that the schedule rules look for."""
PW_FVEC_TAG = "edge_pw_fvec"  # pointwise conv, vector along output channels (blocked weights)
DENSE_TAG = "edge_dense"  # matmul with constant weights, re-blocked [J/T, K, T] (legalize.py)
DW_FLAT_TAG = "edge_dw_flat"  # stride-1 depthwise conv along the flattened map (legalize.py)
PLANE_MAP_ATTR = "edge_plane_map"  # [start, end) of the map in a flat depthwise plane (its margins)
CONV_TAG = "edge_conv"  # NCHW conv (regular / grouped / depthwise), vector along the row
FLAT_PAD_TAG = "edge_flat_pad"  # a pointwise conv's input, flattened and rounded up (legalize.py)
# A block annotation: vector_tails.py gives this block's lane-guarded vector loop a whole-vector path.
VECTOR_TAIL_ATTR = "edge_vector_tail"
# A partial convolution that stands for one piece of a removed concat (concat_split.py) is
# its own kernel, named after its function with this suffix.
CONCAT_PART_SUFFIX = "_part"
POOL_ROWS_TAG = "edge_pool_rows"  # an unpadded max pool's max over window rows (separable_pool.py)
POOL_COLS_TAG = "edge_pool_cols"  # and over the window's columns of that
# The transforms of a Winograd convolution (winograd.py): their kernels' function names.
WINOGRAD_INPUT = "winograd_input"
WINOGRAD_OUTPUT = "winograd_output"
# 3x3 depthwise convs written as vector TIR (depthwise_3x3.py): their kernels' function names.
DEPTHWISE_S1 = "depthwise_s1_rows"
DEPTHWISE_S2 = "depthwise_s2_rows"
# Kernel function attributes: dlight's ApplyDefaultSchedule marks a scheduled kernel (and skips
# one so marked); FuseOps reads a kernel's op pattern and fuses nothing into or with an opaque one.
SCHEDULED_ATTR = "tirx.is_scheduled"
OP_PATTERN_ATTR = "op_pattern"
OPAQUE = 8  # TVM's OpPatternKind kOpaque


def is_scheduled(func) -> bool:
    """True for a kernel (PrimFunc or a module holding one) that carries the scheduled flag."""
    attrs = func.attrs
    return attrs is not None and bool(attrs.get(SCHEDULED_ATTR, False))
