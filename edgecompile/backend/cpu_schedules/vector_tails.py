"""A TIR pass: a vectorised loop whose block is guarded per lane runs as whole vectors wherever
its last lane passes the guard, lane by lane only where it does not.

A guard that depends on the lane (a tile's positions past the end of a map: `p < 3025` in the
epilogue of a flat-rounded pointwise conv, rules/conv.py) makes TVM's VectorizeLoop scalarise the
whole loop -- every tile's stores, though only the last tile has lanes to drop. Where the guard
only tightens as the lane grows (`a + lane < n`), the last lane passing means every lane does:
this pass puts that test around the loop, the vector loop (no guard) in its true branch and the
guarded loop, unrolled, in the other (16 -> 64 @55 flat-rounded, alone, one thread: 0.253 ms
with every tile's epilogue scalar, 0.139 with the test). It runs on the scheduled TIR, before
TVM's lowering, and only on the blocks a rule marks (VECTOR_TAIL_ATTR): on the channel-vector
epilogues of guarded position tiles (MobileNeXt's 960 -> 160 @7, four positions a vector) and
on the dense layers' guarded tiles, inside the inference, it ran 1.3x slower than TVM's loop.
"""
from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx

from ..tir_exprs import uses_var
from .rules.common import linear_coef
from .tags import VECTOR_TAIL_ATTR


def _tightens_with(cond, var) -> bool:
    """Is ``cond`` a conjunction of ``a < b`` / ``a <= b`` with a - b non-decreasing in ``var``?"""
    if isinstance(cond, tirx.And):
        return _tightens_with(cond.a, var) and _tightens_with(cond.b, var)
    if isinstance(cond, (tirx.LT, tirx.LE)):
        coef = linear_coef(cond.a - cond.b, var)
        return coef is not None and coef >= 0
    return False


def _substitute(expr, var, value):
    return tvm_ffi.structural_map(expr, [(type(var), lambda v: value if v.same_as(var) else v)])


def _split_guarded(loop):
    if loop.kind != tirx.ForKind.VECTORIZED or not isinstance(loop.body, s_tir.SBlockRealize):
        return loop
    realize = loop.body
    if VECTOR_TAIL_ATTR not in (realize.block.annotations or {}):
        return loop
    pred, var = realize.predicate, loop.loop_var
    if isinstance(pred, tirx.IntImm) or not uses_var(pred, var) or not _tightens_with(pred, var):
        return loop
    last_lane = _substitute(pred, var, loop.min + loop.extent - 1)
    whole = tirx.For(var, loop.min, loop.extent, tirx.ForKind.VECTORIZED,
                     s_tir.SBlockRealize(realize.iter_values, True, realize.block),
                     annotations=loop.annotations)
    lane = tirx.Var(var.name + "_lane", var.ty)
    lanes = tirx.For(lane, loop.min, loop.extent, tirx.ForKind.UNROLLED,
                     s_tir.SBlockRealize([_substitute(v, var, lane) for v in realize.iter_values],
                                         _substitute(pred, var, lane), realize.block),
                     annotations=loop.annotations)
    return tirx.IfThenElse(last_lane, whole, lanes)


@tirx.transform.prim_func_pass(opt_level=0, name="EdgeVectorTails")
def vector_tails(func, _mod, _ctx):
    return tvm_ffi.structural_map(func, [(tirx.For, _split_guarded)])
