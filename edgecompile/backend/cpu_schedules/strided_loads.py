"""A TIR pass: a vector load of stride s becomes one contiguous load and a lane shuffle.

TVM's LLVM code generator emits a load whose index is a ramp of stride s > 1 as one scalar load
and one insert per lane, and LLVM does not put them back together. The de-interleaving copy of a
stride-2 convolution's input (rules/conv.py) is such a load: x[2j + phase] for j along a vector.
Loading the s * (lanes - 1) + 1 elements the ramp spans and keeping every s-th is a few vector
loads and permutes instead (LLVM picks the permutes for the ISA). The wide load covers exactly the
elements between the ramp's first and last lane, so it reads nothing the scalar loads did not
bracket.

Runs after TVM's own lowering (vectorised loops are ramps by then), before code generation, in
the TIR pipeline of tir_pipeline.py.
"""
from __future__ import annotations

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.ir.prim.expr import IntImm, Ramp

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
    contiguous = tirx.BufferLoad(load.source, [tirx.Ramp(idx.base, 1, wide)])
    return tirx.Shuffle([contiguous], [tirx.IntImm("int32", stride * i) for i in range(lanes)])


@tirx.transform.prim_func_pass(opt_level=0, name="EdgeStridedLoadsToShuffles")
def strided_loads_to_shuffles(func, _mod, _ctx):
    return tvm_ffi.structural_map(func, [(TensorLoad, _as_shuffle)])
