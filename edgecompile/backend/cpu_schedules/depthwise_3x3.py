"""Graph rewrite: a 3x3 depthwise convolution, stride 2 or 1 -> depthwise_tir's kernels.

clamp?(add?(add?(conv2d(x, W), bias), residual)) -> one call of the kernel, the bias, a
residual add (stride 1) and the clamp in its stores (a ReLU, or ONNX's Clip -- ReLU6 -- which
the importer emits as `maximum` and `minimum` kernels of a constant). Where: groups =
channels, 3x3, padding 1, dilation 1, batch 1, float32, constant weights, output rows at
least min(lanes, 14) wide; stride 2 on an even map, stride 1 on at least 2 rows. (7x7 maps keep
the rules' kernel along the flattened map.)

Stride 2, alone, one Zen 4 thread, the rules' window kernel (de-interleaved plane) -> this one: 192 @56
116 -> 59 us, 96 @112 167-184 -> 114, 288 @28 57 -> 31, 144 @48 61 -> 44, 192 @40 57 -> 42,
96 @80 98 -> 61, 32 @32 6.3 -> 3.0; narrower output rows stay with the rules, which were as
fast or faster there (288 @20 20.6 vs 21.7, 64 @18 4.0 vs 4.8, 32 @16 1.3 vs 1.5, 576 @14
15.9 vs 23.5: chunks of 8 or 4 lanes on a 16-lane machine, or mostly overlapping).
"""
from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir import Op

from .depthwise_tir import depthwise_s1, depthwise_s2
from .graph_chains import ADD, CALL_TIR, bias_after, chain_rewrite, plain_conv_shape, scalar, scan
from .legalize import _const_array
from .tags import DEPTHWISE_S1, DEPTHWISE_S2
from .target_info import cpu_info

_CONV = Op.get("relax.nn.conv2d")
_RELU = Op.get("relax.nn.relu")

# Output row width from which the kernel is taken, as min(lanes, MIN_OUT_WIDTH) (see above).
MIN_OUT_WIDTH = 14


def applies(conv: relax.Call, wnp: np.ndarray | None, lanes: int) -> bool:
    shape = plain_conv_shape(conv, wnp)
    if shape is None:
        return False
    n, c, h, w = shape
    a = conv.attrs
    stride = [int(v) for v in a.strides]
    if stride not in ([1, 1], [2, 2]):
        return False
    s = stride[0]
    fits = (h % 2 == 0 and w % 2 == 0) if s == 2 else h >= 2
    return (n == 1 and wnp.shape == (c, 1, 3, 3) and int(a.groups) == c
            and [int(v) for v in a.padding] == [1, 1, 1, 1]
            and fits and w // s >= min(lanes, MIN_OUT_WIDTH))


def _residual_of(value, end) -> relax.Var | None:
    """The other operand where ``value`` adds a tensor of ``end``'s shape to it (a block's
    shortcut), not a constant."""
    if not (isinstance(value, relax.Call) and value.op.same_as(ADD)):
        return None
    a, b = value.args
    other = b if a.same_as(end) else a if b.same_as(end) else None
    if not isinstance(other, relax.Var) or other.same_as(end):
        return None
    shape, want = getattr(other.ty, "shape", None), end.ty.shape
    if shape is None or len(shape) != len(want) or str(other.ty.dtype) != "float32":
        return None
    return other if all(int(p) == int(q) for p, q in zip(shape, want, strict=True)) else None


def _clamp_of(value, end) -> tuple[str, float] | None:
    """("lo", v) / ("hi", v) where ``value`` is max(end, v) / min(end, v) of a float constant v:
    a ReLU (relax.nn.relu), or half of an ONNX Clip, imported as `maximum` / `minimum` kernels."""
    if not isinstance(value, relax.Call):
        return None
    if value.op.same_as(_RELU) and value.args[0].same_as(end):
        return ("lo", 0.0)
    if not value.op.same_as(CALL_TIR) or not isinstance(value.args[1], relax.Tuple):
        return None
    name = value.args[0].name_hint
    args = value.args[1].fields
    if len(args) != 2 or not args[0].same_as(end) or scalar(args[1]) is None:
        return None
    for prefix, side in (("maximum", "lo"), ("minimum", "hi")):
        if name == prefix or (name.startswith(prefix) and name[len(prefix):].isdigit()):
            return (side, scalar(args[1]))
    return None


def _chains(func: relax.Function, lanes: int) -> dict[relax.Var, tuple]:
    """Each convolution the rewrite takes, by the var its chain ends at: (conv call, bias [C],
    residual var or None, lo, hi, the chain's vars before the end, which the rewrite drops)."""
    bound, reader = scan(func)
    chains = {}
    for var, conv in bound.items():
        if not (isinstance(conv, relax.Call) and conv.op.same_as(_CONV)) \
                or not applies(conv, _const_array(conv.args[1]), lanes):
            continue
        c = int(conv.ty.shape[1])
        end, bias, clamp, dropped = var, np.zeros(c, np.float32), {}, []
        b = bias_after(bound, reader, end, c)
        if b is not None:
            dropped.append(end)
            end, bias = reader[end], b
        # Stride 1 only: depthwise_s2 has no residual input (no network here adds one there).
        stride_1 = int(conv.attrs.strides[0]) == 1
        residual = _residual_of(bound.get(reader.get(end)), end) if stride_1 else None
        if residual is not None:
            dropped.append(end)
            end = reader[end]
        while (step := _clamp_of(bound.get(reader.get(end)), end)) is not None and step[0] not in clamp:
            dropped.append(end)
            end, clamp[step[0]] = reader[end], step[1]
        chains[end] = (conv, bias, residual, clamp.get("lo"), clamp.get("hi"), dropped)
    return chains


def _emit(lanes: int):
    def emit(mutator, binding, chain) -> None:
        conv, bias, residual, lo, hi, _ = chain
        bb = mutator.builder_
        x = mutator.visit_expr(conv.args[0])
        wnp = _const_array(conv.args[1])
        _, c, h, w = (int(d) for d in x.ty.shape)
        s = int(conv.attrs.strides[0])
        args = [x, relax.const(np.ascontiguousarray(wnp.reshape(c, 9))), relax.const(bias)]
        if s == 2:
            kernel = bb.add_func(depthwise_s2(c, h, w, lanes, lo, hi), DEPTHWISE_S2)
        else:
            kernel = bb.add_func(depthwise_s1(c, h, w, lanes, lo, hi, residual is not None), DEPTHWISE_S1)
            args += [mutator.visit_expr(residual)] if residual is not None else []
        out = relax.TensorType([1, c, h // s, w // s], "float32")
        bb.emit_normalized(relax.VarBinding(binding.var, bb.normalize(relax.call_tir(kernel, args, out))))

    return emit


def depthwise_3x3_convs(target):
    """The rewrite as a module pass (before legalisation, after the constants are folded: the
    Clip's bounds are constants then)."""
    lanes = cpu_info(target).lanes
    return chain_rewrite("EdgeDepthwise3x3", lambda func: _chains(func, lanes), _emit(lanes))
