"""A TIR pass: a vector load of stride s becomes one contiguous load and a lane shuffle.

TVM's LLVM code generator emits a load whose index is a ramp of stride s > 1 as one scalar load
and one insert per lane, and LLVM does not put them back together. The de-interleaving copy of a
stride-2 convolution's input (rules/conv.py) is such a load: x[2j + phase] for j along a vector.
Loading the s * (lanes - 1) + 1 elements the ramp spans and keeping every s-th is a few vector
loads of whole registers and permutes instead (LLVM picks the permutes for the ISA). The loads
cover exactly the elements between the ramp's first and last lane (the last one overlapping the
one before), so they read nothing the scalar loads did not bracket.

Runs after TVM's own lowering (vectorised loops are ramps by then), before code generation, in
the TIR pipeline of tir_pipeline.py.
"""
from __future__ import annotations

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.ir.prim.expr import IntImm, Ramp

from .rules.common import overlapping_chunks

MAX_STRIDE = 4
MAX_WIDE_LANES = 64  # wider vectors than 4 AVX-512 registers: leave them to the scalar path


def _as_shuffle(load):
    if len(load.indices) != 1:
        return load
    idx = load.indices[0]
    if not (isinstance(idx, Ramp) and isinstance(idx.stride, IntImm) and isinstance(idx.lanes, IntImm)):
        return load
    stride, lanes = int(idx.stride), int(idx.lanes)
    wide = stride * (lanes - 1) + 1
    if not (1 < stride <= MAX_STRIDE) or wide > MAX_WIDE_LANES:
        return load
    # The span as whole registers, the last overlapping: one load of the span's own width (31
    # lanes for a 16-lane ramp of stride 2) was legalised by LLVM as 16 + 8 + 4 + 2 + 1 pieces,
    # permuted per 128-bit piece; as two registers it is one vpermt2ps. Alone, one thread, Zen 4:
    # MobileNet v2's 96 @112 s2 depthwise 0.252 -> 0.225 ms, SqueezeNet's 111 -> 55 max pool
    # 0.135 -> 0.118. Inside the inference both wait on memory instead: no model moved (A/B
    # 0.999-1.008).
    chunk, starts = overlapping_chunks(lanes, wide)
    pieces = [tirx.BufferLoad(load.source, [tirx.Ramp(idx.base + s, 1, chunk)]) for s in starts]
    picks = []
    for i in range(lanes):
        e = stride * i  # the element's place in the span; the chunk that holds it, by its start
        k = min(e // chunk, len(starts) - 1)
        picks.append(tirx.IntImm("int32", k * chunk + e - starts[k]))
    return tirx.Shuffle(pieces, picks)


@tirx.transform.prim_func_pass(opt_level=0, name="EdgeStridedLoadsToShuffles")
def strided_loads_to_shuffles(func, _mod, _ctx):
    return tvm_ffi.structural_map(func, [(TensorLoad, _as_shuffle)])
