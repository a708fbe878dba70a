"""Graph rewrite: a 3x3 stride-1 convolution as Winograd F(m x m, 3x3), m = 4 or 2.

Each m x m output tile of a 3x3 conv is A^T [(G g G^T) . (B^T d B)] A over the a x a input
window d (a = m + 2): a^2 multiplies per tile and input channel where the direct conv has 9 m^2,
so 4x (F(4x4)) or 2.25x (F(2x2)) fewer FMAs at the cost of two transforms (winograd_tir.py) and
the transformed tensors' memory traffic (a^2 / m^2 of the output: 2.25x for F(4x4), 4x for
F(2x2)). The FMAs become a^2 independent GEMMs (K x C by C x tiles); here they are one grouped
1x1 conv (a^2 groups), so that they are legalised, scheduled and tuned like every other
pointwise conv, and the weights' transform U = G g G^T is done once, at build time (numpy).

relu?(add?(conv2d(x, W), bias)) -> input transform -> grouped 1x1 conv -> output transform with
the bias and the ReLU in its stores (a value read twice ends the chain there). Where
(tile_size): groups 1, padding 1, batch 1, float32, constant weights, at least MIN_CHANNELS
channels in and out, at least MIN_TILES tiles of the m taken (F(4x4) first), two a row.

Why: SqueezeNet's expand 3x3 convs carry half of its FLOPs, and ONNX Runtime runs them direct
(MLAS NCHWc) at the FMA peak, as our direct conv did (110 GFLOP/s on one Zen 4 core), so only
fewer FMAs could beat it. Alone, one Zen 4 thread, default schedules, direct / F(2x2) / F(4x4)
(ms, ONNX Runtime's direct conv beside them): 16 -> 64 @55 0.656 / 0.407 / 0.367 (0.53),
32 -> 128 @27 0.518 / 0.364 / 0.247 (0.51), FasterNet's PConv 16 @56 0.176 / 0.141 / 0.119,
32 @28 0.150 / 0.138 / 0.094; at 13x13 and 14x14 F(4x4) has 16 tiles, too few, and F(2x2) is
taken: 48 -> 192 @13 0.270 / 0.196 (0.25). (20 @28, FasterNet-T0's, ran 0.060 with F(2x2) and
0.070 with F(4x4), channels no register divides: 0.02 ms of its 3.8, not special-cased.) SqueezeNet 1.1 with
records, F(2x2) -> F(4x4) on its 55 and 27 maps: 0.86-0.96 of its latency (paired runs, 1 and
2 threads); F(2x2) had made it 0.87-0.94 of the direct conv's.
"""
from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir import Op

from . import winograd_tir
from .graph_chains import bias_after, chain_rewrite, plain_conv_shape, scan
from .legalize import _const_array
from .tags import WINOGRAD_INPUT, WINOGRAD_OUTPUT
from .target_info import cpu_info

_CONV = Op.get("relax.nn.conv2d")
_RELU = Op.get("relax.nn.relu")

# The GEMMs' reduction is the input channels; 16 is the fewest measured (gains above). Fewer
# (FasterNet-T0's 10-channel PConv) stay direct until measured.
MIN_CHANNELS = 16
# Tiles per map below which the GEMMs stream their weights (16/9 of the direct conv's) for too
# few positions. Measured in context, one Zen 4 thread, direct -> Winograd: SqueezeNet's 64 ->
# 256 @13 (49 tiles) 0.454 -> 0.406 ms, FasterNet-T1's 64 @14 (49) 0.132 -> 0.105, its
# 128 @7 (16 tiles) 0.138 -> 0.227. The same bound for F(4x4): on 16 tiles (13x13) it won alone
# (64 -> 256 @13 0.311 ms against F(2x2)'s 0.390) but SqueezeNet 1.1 ran 1.02-1.03x slower whole,
# its output transform at 4 tiles a row (4-lane vectors) 0.074 ms where F(2x2)'s took 0.013.
MIN_TILES = 36
# Output tile sizes tried, largest first: F(4x4, 3x3) needs 4x fewer FMAs than the direct conv
# and its transformed tensors are 2.25x (36/16) the output, where F(2x2)'s are 4x.
TILE_SIZES = (4, 2)


def weight_transform(w: np.ndarray, m: int) -> np.ndarray:
    """[K, C, 3, 3] -> the grouped 1x1 conv's [a^2 K, C, 1, 1] (a = m + 2): row t * K + k holds
    point t = a xi + nu of G g G^T for every (k, c)."""
    k, c = w.shape[:2]
    g = winograd_tir.G[m]
    u = np.einsum("ai,kcij,bj->abkc", g, w.astype(np.float64), g)
    return np.ascontiguousarray(u.reshape(len(g) ** 2 * k, c, 1, 1).astype(w.dtype))


def tile_size(call: relax.Call, wnp: np.ndarray | None) -> int | None:
    """The output tile m of F(m x m, 3x3) this convolution is rewritten with: the largest whose
    tiles are enough for the GEMMs (MIN_TILES), at least two a row (the transforms' narrowest
    vector); None where the rewrite does not pay or does not apply."""
    shape = plain_conv_shape(call, wnp)
    if shape is None:
        return None
    n, c, h, w = shape
    a = call.attrs
    applies = (n == 1 and wnp.shape[2:] == (3, 3) and int(a.groups) == 1
               and [int(v) for v in a.strides] == [1, 1] and [int(v) for v in a.padding] == [1, 1, 1, 1]
               and c >= MIN_CHANNELS and wnp.shape[0] >= MIN_CHANNELS)
    if not applies:
        return None
    for m in TILE_SIZES:
        th, tw = winograd_tir.tiles(h, w, m)
        if tw >= 2 and th * tw >= MIN_TILES:
            return m
    return None


def _chains(func: relax.Function) -> dict[relax.Var, tuple]:
    """Each conv that the rewrite takes, by the var its chain ends at: (conv call, bias [K],
    ReLU or not, the chain's vars before the end, which the rewrite drops)."""
    bound, reader = scan(func)

    def call_of(var, op):
        value = bound.get(var)
        return value if isinstance(value, relax.Call) and value.op.same_as(op) else None

    chains = {}
    for var in bound:
        conv = call_of(var, _CONV)
        m = tile_size(conv, _const_array(conv.args[1])) if conv is not None else None
        if m is None:
            continue
        k = int(conv.ty.shape[1])
        end, bias, relu, dropped = var, np.zeros(k, np.float32), False, []
        b = bias_after(bound, reader, end, k)
        if b is not None:
            dropped.append(end)
            end, bias = reader[end], b
        if call_of(reader.get(end), _RELU) is not None:
            dropped.append(end)
            end, relu = reader[end], True
        chains[end] = (conv, m, bias, relu, dropped)
    return chains


def _emit(lanes: int):
    def emit(mutator, binding, chain) -> None:
        conv, m, bias, relu, _ = chain
        x = mutator.visit_expr(conv.args[0])
        wnp = _const_array(conv.args[1])
        k, c = wnp.shape[:2]
        _, _, h, w = (int(d) for d in x.ty.shape)
        th, tw = winograd_tir.tiles(h, w, m)
        points = (m + 2) ** 2
        bb = mutator.builder_
        f_in = bb.add_func(winograd_tir.input_transform(c, h, w, lanes, m), WINOGRAD_INPUT)
        f_out = bb.add_func(winograd_tir.output_transform(k, h, w, lanes, relu, m), WINOGRAD_OUTPUT)
        v = bb.emit(relax.call_tir(f_in, [x], relax.TensorType([1, points * c, th, tw], "float32")))
        gemm = bb.emit(relax.op.nn.conv2d(v, relax.const(weight_transform(wnp, m)), groups=points))
        y = relax.call_tir(f_out, [gemm, relax.const(bias)], relax.TensorType([1, k, h, w], "float32"))
        bb.emit_normalized(relax.VarBinding(binding.var, bb.normalize(y)))

    return emit


def winograd_convs(target):
    """The rewrite as a module pass (before legalisation: the grouped conv is legalised with
    every other conv)."""
    lanes = cpu_info(target).lanes
    return chain_rewrite("EdgeWinograd", _chains, _emit(lanes))
