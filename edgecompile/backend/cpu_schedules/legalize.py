"""Custom legalisation for CPU (LegalizeOps(customize_legalize_map=make_legalize_map(target))).

Every NCHW convolution with constant weights becomes one of two TE computes, chosen by which
vector fills more SIMD lanes (the graph itself stays NCHW: no layout transforms anywhere):

* `edge_conv`: vector along the output row (regular, grouped and depthwise convs, one formula).
  Rows that no vector divides well (111, 55, 27) are computed rounded up to whole vectors on a
  wider padded input and cropped by the store.
* `edge_pw_fvec` (any k x k, grouped if the group's channels hold whole vectors): vector along
  output channels, for small maps (7x7, 14x14, 13x13...) whose rows would leave lanes idle, yet
  which carry most of a MobileNet's FLOPs. Needs weights blocked [C_out/b, C_in/g, kh, kw, b];
  they are constants, so they are reordered here once, at build time (numpy), never at run time.
* `edge_dw_flat` (flat_depthwise.py): a stride-1 depthwise conv on a map narrower than a
  register (7x7 at 16 lanes), along the flattened map, the whole map one register tile.

Also: a matmul with constant weights (the classifier) -> `edge_dense` on weights re-blocked
[J/T, K, T] (see _dense), and erf -> TOPI's fast_erf (see _fast_erf).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.ir import Op
from tvm.target import Target

from .flat_depthwise import FlatPlan, flat_depthwise, flat_plan
from .rules.common import split_vector, vector_pieces, window_vector
from .separable_pool import separable_max_pool
from .tags import CONV_TAG, DENSE_TAG, FLAT_PAD_TAG, PW_FVEC_TAG
from .target_info import cpu_info

# A row vector that fills less than this share of the SIMD lanes is computed on a rounded-up row
# (garbage columns in registers, cropped when stored): 111 -> 112 instead of 3-wide vectors.
MIN_ROW_UTIL = 0.8


def make_legalize_map(target: Target) -> dict:
    """The ops whose TOPI legalisation we replace for CPU."""
    return {"relax.nn.conv2d": make_conv2d_legalizer(target), "relax.matmul": make_dense_legalizer(target),
            "relax.erf": _fast_erf, "relax.nn.max_pool2d": _max_pool2d}


def _max_pool2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A max pool with no padding, stride s and a k x k window: two passes over the rows
    (separable_pool.py); other pools: TOPI's. A ceil-mode pool whose windows tile the input
    exactly is a floor-mode one first: TOPI would still pad its input by stride - 1 columns no
    window reads, and the odd padded width (111 -> 112) cannot take the rules' vectorised
    de-interleaving copy (every pool of SqueezeNet, 111, 55 and 27, is such a pool)."""
    default = Op.get("relax.nn.max_pool2d").get_attr("FLegalize")
    a = call.attrs
    shape = getattr(call.args[0].ty, "shape", None)
    if str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW" or shape is None or len(shape) != 4 \
            or not all(isinstance(d, tvm.tirx.IntImm) for d in (shape[2], shape[3])):
        return default(bb, call)
    k, st, dil, pad = ([int(v) for v in t] for t in (a.pool_size, a.strides, a.dilation, a.padding))
    exact = all((int(shape[2 + i]) + pad[i] + pad[i + 2] - dil[i] * (k[i] - 1) - 1) % st[i] == 0
                for i in (0, 1))
    if a.ceil_mode and not exact:
        return default(bb, call)
    if not any(pad) and dil == [1, 1] and str(call.args[0].ty.dtype) == "float32" \
            and all(int(shape[2 + i]) >= k[i] for i in (0, 1)):
        return bb.call_te(separable_max_pool, call.args[0], tuple(k), tuple(st),
                          primfunc_name_hint="max_pool2d")
    if not a.ceil_mode:
        return default(bb, call)
    floor = relax.op.nn.max_pool2d(call.args[0], k, st, pad, dil, ceil_mode=False,
                                   count_include_pad=bool(a.count_include_pad), layout="NCHW",
                                   out_layout=str(a.out_layout))
    return default(bb, bb.normalize(floor))


def _fast_erf(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """GELU's erf: libm's scalar erff call blocks vectorisation (FasterNet's GELU epilogues took
    12 of its 20 ms); TOPI's fast_erf is Eigen's rational approximation (float32, a few ulp)."""
    if str(call.args[0].ty.dtype) != "float32":
        return Op.get("relax.erf").get_attr("FLegalize")(bb, call)
    return bb.call_te(topi.fast_erf, call.args[0])


def dense_tile(columns: int, lanes: int) -> int:
    """Output columns per dense tile: whole registers, up to 4 (columns rounded up to a register)."""
    regs = -(-columns // lanes)
    return lanes * max(d for d in range(1, 5) if regs % d == 0)


def make_dense_legalizer(target: Target):
    lanes = cpu_info(target).lanes

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        x, w = call.args
        wnp = _const_array(w)
        shape = getattr(x.ty, "shape", None)
        out_dtype = call.attrs.out_dtype
        if (wnp is None or wnp.ndim != 2 or shape is None or len(shape) != 2
                or not all(isinstance(d, tvm.tirx.IntImm) for d in shape)
                or str(x.ty.dtype) != "float32" or str(wnp.dtype) != "float32"
                or (out_dtype not in ("", None) and str(out_dtype) != "float32")):
            return Op.get("relax.matmul").get_attr("FLegalize")(bb, call)
        return _dense(bb, x, wnp, dense_tile(wnp.shape[1], lanes))

    return legalize


def _dense(bb: relax.BlockBuilder, x: relax.Expr, wnp: np.ndarray, tile: int) -> relax.Expr:
    """y = x @ W with W [K, J] stored [J/T, K, T] (zero columns up to a whole tile, cropped).

    A tile of T output columns then streams its weights as one contiguous run. Stored [K, J], a
    tile read 32-256 bytes of each 4 KB row. Inside a whole inference the 5 MB classifier of
    mobilenet_v2_100 is never in cache; there it took 0.38 ms (one thread; 0.22 on two) where
    ONNX Runtime's Gemm takes 0.19 (0.10); blocked, 0.23 (0.12). Timed alone, with the weights
    in cache, both layouts ran alike."""
    k_ext, j_real = wnp.shape
    j_pad = -(-j_real // tile) * tile
    if j_pad > j_real:
        wnp = np.concatenate([wnp, np.zeros((k_ext, j_pad - j_real), wnp.dtype)], axis=1)
    wb = np.ascontiguousarray(wnp.reshape(k_ext, j_pad // tile, tile).transpose(1, 0, 2))
    m_ext = int(x.ty.shape[0])

    def compute(data, wblk):
        k = te.reduce_axis((0, k_ext), name="k")
        out = te.compute((m_ext, j_pad), lambda i, j: te.sum(data[i, k] * wblk[j // tile, k, j % tile],
                                                             axis=k), name=DENSE_TAG)
        if j_pad != j_real:
            out = _crop(out, (m_ext, j_real))
        return out

    return bb.call_te(compute, x, relax.const(wb, "float32"), primfunc_name_hint="dense")


def _crop(out: te.Tensor, shape: tuple[int, ...]) -> te.Tensor:
    """A tensor computed rounded up (whole registers or tiles) cut to its real shape: the
    schedule rules fold this copy into the store."""
    return te.compute(shape, lambda *i: out(*i), name="edge_crop")


def _default_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)


def _const_array(expr: relax.Expr) -> np.ndarray | None:
    # 0.27: a Relax constant is `GenericConst` with `.value` (earlier: relax.Constant with `.data`).
    for attr in ("value", "data"):
        val = getattr(expr, attr, None)
        if val is not None and hasattr(val, "numpy"):
            return val.numpy()
    return None


def channel_block(channels: int, lanes: int) -> int:
    """Largest power-of-two vector (<= lanes, >= 4) dividing the channel count, else 0."""
    b = lanes
    while b >= 4:
        if channels % b == 0:
            return b
        b //= 2
    return 0


class _Conv:
    """Shapes of one NCHW conv2d call, all static ints."""

    def __init__(self, call: relax.Call, wnp: np.ndarray):
        a = call.attrs
        x = call.args[0]
        self.x = x
        self.n, self.c, self.h, self.w = (int(s) for s in x.ty.shape)
        self.f, self.icpg, self.kh, self.kw = wnp.shape
        self.groups = int(a.groups)
        self.ocpg = self.f // self.groups
        self.sh, self.sw = (int(s) for s in a.strides)
        self.dh, self.dw = (int(d) for d in a.dilation)
        self.pt, self.pl, self.pb, self.pr = (int(p) for p in a.padding)
        self.h_out = (self.h + self.pt + self.pb - self.dh * (self.kh - 1) - 1) // self.sh + 1
        self.w_out = (self.w + self.pl + self.pr - self.dw * (self.kw - 1) - 1) // self.sw + 1
        self.dtype = str(x.ty.dtype)

    def padded(self, data, extra_right: int = 0):
        if self.pt or self.pl or self.pb or self.pr or extra_right:
            return topi.nn.pad(
                data, [0, 0, self.pt, self.pl], [0, 0, self.pb, self.pr + extra_right], name="pad_temp"
            )
        return data


def make_conv2d_legalizer(target: Target):
    info = cpu_info(target)
    lanes = info.lanes

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        a = call.attrs
        x, w = call.args
        wnp = _const_array(w)
        # 0.27 names a Relax expression's type `.ty` (struct_info before).
        if (
            wnp is None
            or getattr(x.ty, "shape", None) is None
            or a.data_layout != "NCHW"
            or a.kernel_layout != "OIHW"
            or a.out_layout != "NCHW"
            or (a.out_dtype not in ("", None) and str(a.out_dtype) != str(x.ty.dtype))
        ):
            return _default_conv2d(bb, call)
        cv = _Conv(call, wnp)
        # Row vector utilisation: along the flat map for a pointwise stride-1 conv, else the row.
        pointwise = (cv.kh, cv.kw, cv.sh, cv.sw, cv.pt, cv.pl, cv.pb, cv.pr) == (1, 1, 1, 1, 0, 0, 0, 0)
        row = cv.h_out * cv.w_out if pointwise else cv.w_out
        if pointwise and _flat_rounds(row, cv.c, cv.f, lanes, cv.groups):
            return _flat_rounded_pointwise(bb, cv, wnp, lanes)
        if pointwise:
            vl = split_vector(row, lanes, 4)[1]
            row_util = vl / lanes if row >= lanes else row / lanes
            # LLVM splits a vector of vl lanes into power-of-two pieces (14 = 8 + 4 + 2 loads,
            # FMAs and shuffles): count what the pieces cost, not the lanes they fill. ShuffleNet
            # v2's 116->116 @14x14: 14-wide rows 95 GFLOP/s, channels padded to 128: 165.
            row_util /= vector_pieces(vl)
        else:
            vl = split_vector(row, lanes, 4)[1]
            row_util = vl / lanes if row >= lanes else row / lanes
            if row > lanes and row_util < MIN_ROW_UTIL:
                row_util = row / (-(-row // lanes) * lanes)  # rounded-up row
        # Channel vectors: b lanes dividing the group's channels, or -- one group, channels that
        # only fill part-width vectors (1000 classes: 8 lanes; ShuffleNet's 116: 4) -- whole
        # registers on zero-padded weights, cropped when stored. Whichever fills more lanes:
        # SqueezeNet's 512->1000 classifier ran 8-lane vectors on AVX-512 (89 GFLOP/s; padded
        # to 1008: see results/), the same for 24, 40, 120, 232 channels.
        b = channel_block(cv.ocpg, lanes) if cv.icpg > 1 or cv.groups == 1 else 0
        f_pad = -(-cv.f // lanes) * lanes if cv.groups == 1 and cv.f % lanes else 0
        use_pad = f_pad and cv.f / f_pad > b / lanes
        fvec_util = cv.f / f_pad if use_pad else b / lanes
        # Channel vectors must win clearly: on large maps the row kernel's contiguous stores and
        # short per-tile overhead win (stem 3->64 @111: 0.40 ms rows vs 1.17 ms channels).
        if fvec_util and fvec_util >= row_util + 0.1:
            return _fvec_conv2d(bb, cv, wnp, lanes, f_pad) if use_pad else _fvec_conv2d(bb, cv, wnp, b)
        return _direct_conv2d(bb, cv, wnp, lanes, info.vregs)

    return legalize


def _fvec_conv2d(
    bb: relax.BlockBuilder, cv: _Conv, wnp: np.ndarray, b: int, f_pad: int = 0
) -> relax.Expr:
    f_real = wnp.shape[0]
    if f_pad > f_real:
        wnp = np.concatenate([wnp, np.zeros((f_pad - f_real,) + wnp.shape[1:], wnp.dtype)])
    f, icpg, kh, kw = wnp.shape
    # [F, Ci, kh, kw] -> [F/b, Ci, kh, kw, b]: one contiguous b-wide vector per (block, tap).
    wb = np.ascontiguousarray(wnp.reshape(f // b, b, icpg, kh, kw).transpose(0, 2, 3, 4, 1))
    wconst = relax.const(wb, cv.dtype)
    blocks_per_group = cv.ocpg // b

    def in_channel(ff, rc):
        # groups == 1: no group term at all (the simplifier cannot always prove ff // b // nblk == 0,
        # and a lane-dependent channel index turns the broadcast into a gather: 0.09 -> 0.35 ms).
        if cv.groups == 1:
            return rc
        return ff // b // blocks_per_group * icpg + rc

    def compute(data, wblk):
        padded = cv.padded(data)
        rc = te.reduce_axis((0, icpg), name="rc")
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")
        # The input channel depends on ff only through ff // b (uniform across the vector lanes),
        # so the input value is one broadcast per (position, tap).
        out = te.compute(
            (cv.n, f, cv.h_out, cv.w_out),
            lambda nn, ff, yy, xx: te.sum(
                padded[
                    nn,
                    in_channel(ff, rc),
                    yy * cv.sh + ry * cv.dh,
                    xx * cv.sw + rx * cv.dw,
                ]
                * wblk[ff // b, rc, ry, rx, ff % b],
                axis=[rc, ry, rx],
            ),
            name=PW_FVEC_TAG,
        )
        if f != f_real:
            out = _crop(out, (cv.n, f_real, cv.h_out, cv.w_out))
        return out

    return bb.call_te(compute, cv.x, wconst, primfunc_name_hint="conv2d_cv")


def _run_width(w_out: int, lanes: int) -> int:
    """Row length actually computed: whole registers (x86: a <14 x float> load is split into
    8+4+2-wide loads and shuffles; measured slower than computing 2 garbage columns)."""
    if w_out % lanes == 0:
        return w_out
    if w_out > lanes:
        return -(-w_out // lanes) * lanes
    p = 4
    while p < w_out:
        p *= 2
    return p


# Positions from which a pointwise conv on a map no register width divides runs the row kernel
# on the flattened map rounded up to whole registers (SqueezeNet's 55 x 55 = 3025 as 3040 and
# 27 x 27 = 729 as 736; not 13 x 13).
FLAT_ROUND_MIN_POSITIONS = 512


def _flat_rounds(positions: int, c_in: int, c_out: int, lanes: int, groups: int) -> bool:
    """Flat-round an expanding pointwise conv (c_out >= 2 c_in) on a large map no register
    width divides. Its alternatives: channel vectors, which store every tile back to the NCHW
    planes a few positions per channel (a cost per output, as large as the FMAs at K = 16-32),
    or the flat row kernel on a divisor of the map (3025 = 275 x 11, LLVM's 8 + 2 + 1 pieces).
    Rounded up, the input is copied flat first: a cost per input, which a projection (64 -> 16)
    does not earn back. Inside SqueezeNet 1.1's inference, two builds interleaved, per kernel
    (one thread / two): 16 -> 64 @55 0.128 -> 0.075 / 0.085 -> 0.079 ms, 32 -> 128 @27 0.072 ->
    0.054 ms; 64 -> 16 @55 0.097 -> 0.117 (not taken); 64 -> 256 @13 0.039 -> 0.050 at two
    threads (169 positions: not taken)."""
    return (groups == 1 and positions % lanes != 0 and c_out >= 2 * c_in
            and positions >= FLAT_ROUND_MIN_POSITIONS)


def _flat_rounded_pointwise(bb: relax.BlockBuilder, cv: _Conv, wnp: np.ndarray, lanes: int) -> relax.Expr:
    """A pointwise conv as one row of the flattened map rounded up to whole registers: the input
    copied flat with zeros after the map's end (rules/flat_rounded.py), the output stored back to
    [n, f, h, w] from the tiles (rules/conv.py; the last tile's guard: vector_tails.py)."""
    positions = cv.h * cv.w
    run = -(-positions // lanes) * lanes
    wconst = relax.const(wnp, cv.dtype)

    def compute(data, weight):
        zero = tvm.tirx.const(0, cv.dtype)
        flat = te.compute(
            (cv.n, cv.c, 1, run),
            lambda nn, cc, _, q: tvm.tirx.if_then_else(
                q < positions, data[nn, cc, q // cv.w, q % cv.w], zero),
            name=FLAT_PAD_TAG,
        )
        rc = te.reduce_axis((0, cv.c), name="rc")
        ry = te.reduce_axis((0, 1), name="ry")
        rx = te.reduce_axis((0, 1), name="rx")
        out = te.compute(
            (cv.n, cv.f, 1, run),
            lambda nn, ff, yy, xx: te.sum(flat[nn, rc, yy + ry, xx + rx] * weight[ff, rc, ry, rx],
                                          axis=[rc, ry, rx]),
            name=CONV_TAG,
        )
        return te.compute((cv.n, cv.f, cv.h, cv.w), lambda nn, ff, y, x: out[nn, ff, 0, y * cv.w + x],
                          name="edge_crop")

    return bb.call_te(compute, cv.x, wconst, primfunc_name_hint="conv2d_flat")


def _splits_narrow(w_out: int, lanes: int) -> bool:
    """Does the window schedule's row vector (window_vector) include a piece narrower than half
    a register? (LLVM splits a d-lane vector into its power-of-two pieces; d & -d is the
    narrowest.)"""
    _, d = window_vector(w_out, lanes)
    return d < lanes and (d & -d) < lanes // 2


def _direct_conv2d(bb: relax.BlockBuilder, cv: _Conv, wnp: np.ndarray, lanes: int, vregs: int) -> relax.Expr:
    """Row-vector conv; a poorly divisible row is rounded up to whole vectors and cropped."""
    depthwise = cv.icpg == 1 and cv.groups > 1
    plan = _flat_plan(cv, lanes, vregs) if depthwise else None
    if plan is not None:
        return bb.call_te(partial(flat_depthwise, plan=plan), cv.x, relax.const(wnp, cv.dtype),
                          primfunc_name_hint="conv2d_dw")
    if depthwise and cv.sw == 1:
        # Stride-1 depthwise: whole registers (x86 splits a <14 x float> load into 8+4+2-wide
        # loads and shuffles; 144ch@56: 0.143 ms rounded to 64 vs 0.166 ms with 14-wide vectors).
        w_run = _run_width(cv.w_out, lanes)
    elif depthwise and _splits_narrow(cv.w_out, lanes):
        # Strided depthwise whose row the window schedule could only vectorise with pieces under
        # half a register (28 = 2 x 14 = 2 x (8 + 4 + 2)): whole registers on garbage columns
        # instead. 144ch@56 s2: 0.129 -> 0.089 ms, 192ch@56 s2: 0.17 -> 0.124 ms (one thread,
        # hot). Half-register pieces are kept: 56 = 7 x 8 beat 64 (96ch@112 s2: 0.255 vs 0.285).
        w_run = _run_width(cv.w_out, lanes)
    else:
        # Strided: rounding widens the deinterleaved plane copy, which dominates (96ch@112 s2:
        # 0.79 vs 0.31 ms); round only rows no divisor fills well (111 -> 112, not 56 -> 64).
        _, vl = split_vector(cv.w_out, lanes, 4)
        w_run = cv.w_out
        if cv.w_out > lanes and vl / lanes < MIN_ROW_UTIL:
            w_run = -(-cv.w_out // lanes) * lanes
    # Right padding so that the rounded-up row reads inside the padded input.
    need_w = (w_run - 1) * cv.sw + cv.dw * (cv.kw - 1) + 1
    extra = max(0, need_w - (cv.w + cv.pl + cv.pr))
    if depthwise and cv.sw == 1 and (cv.pt or cv.pl or cv.pb or cv.pr):
        # Depthwise: the schedule builds a padded plane per channel; a row of whole vectors (x the
        # stride, for the deinterleaved layout) makes its zero fill and copy plain vector stores.
        # (58-wide rows vectorised 2 lanes at a time: the plane cost more than the convolution.)
        unit = lanes
        wp = cv.w + cv.pl + cv.pr + extra
        extra += -(-wp // unit) * unit - wp
    elif cv.sw > 1:
        # The schedule stores a strided conv's input deinterleaved ([.., w % s, w // s]) only when
        # the padded row divides by the stride; otherwise every tap is a strided (gathered) load.
        # (SqueezeNet's stem: 224 + 1 column for the rounded-up row = 225, not deinterleaved.)
        wp = cv.w + cv.pl + cv.pr + extra
        extra += -wp % cv.sw
    wconst = relax.const(wnp, cv.dtype)

    def compute(data, weight):
        padded = cv.padded(data, extra)
        rc = te.reduce_axis((0, cv.icpg), name="rc")
        ry = te.reduce_axis((0, cv.kh), name="ry")
        rx = te.reduce_axis((0, cv.kw), name="rx")
        out = te.compute(
            (cv.n, cv.f, cv.h_out, w_run),
            lambda nn, ff, yy, xx: te.sum(
                padded[nn, ff // cv.ocpg * cv.icpg + rc, yy * cv.sh + ry * cv.dh, xx * cv.sw + rx * cv.dw]
                * weight[ff, rc, ry, rx],
                axis=[rc, ry, rx],
            ),
            name=CONV_TAG,
        )
        if w_run != cv.w_out:
            out = _crop(out, (cv.n, cv.f, cv.h_out, cv.w_out))
        return out

    return bb.call_te(compute, cv.x, wconst, primfunc_name_hint="conv2d")


def _flat_plan(cv: _Conv, lanes: int, vregs: int) -> FlatPlan | None:
    """A plan to run this depthwise conv along its flattened map (flat_depthwise.py): where its
    rows are shorter than a register (stored as scalars, part of each vector idle) and the whole
    map fits one register tile of no more vectors than its rows take: 7x7 and smaller at 16
    lanes, 7x7 at 8. Rows of a register or more keep the row kernel: 192 @28 and 144 @56 ran
    1.07x and 1.37x slower flat (16 lanes, one thread), their accumulators going through a
    stack buffer for the epilogue where rows keep them in registers."""
    # Output columns = input columns: one flat index serves both. (A 1-wide map has nothing to
    # flatten: its masked column index folds away and TVM cannot then vectorize the tile.)
    if (cv.sh, cv.sw, cv.dh, cv.dw) != (1, 1, 1, 1) or cv.pl + cv.pr != cv.kw - 1 or not 1 < cv.w < lanes:
        return None
    plan = flat_plan(cv.h, cv.w, cv.h_out, cv.pt, cv.pl, cv.kh, cv.kw, lanes, vregs)
    rows = cv.h_out * -(-_run_width(cv.w_out, lanes) // lanes)
    return plan if plan is not None and plan.vectors <= rows else None
