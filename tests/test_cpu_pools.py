"""Max pools on CPU: which pools are legalised how, and the schedule of the two-pass one.
Numerics of every pool case against ONNX Runtime: test_cpu_schedules.test_rule_matches_onnxruntime."""
import pytest
import tvm
from test_cpu_schedules import WIDTHS, maxpool

from edgecompile.backend import compiler
from edgecompile.backend.cpu_schedules.pipeline import schedule_passes
from edgecompile.backend.cpu_schedules.tags import POOL_COLS_TAG, POOL_ROWS_TAG


@pytest.mark.parametrize("hw, padded", [(111, False), (55, False), (56, True)])
def test_ceil_mode_max_pool_pads_only_where_a_window_reads_the_pad(hw, padded):
    """TOPI pads a ceil-mode pool's input by stride - 1 even where the windows tile the input
    exactly (SqueezeNet's 111, 55, 27): those pools are legalised as floor-mode ones, with no
    padded copy of the input (legalize._max_pool2d)."""
    target = compiler.make_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    mod = compiler.import_onnx(maxpool(8, hw, ceil=1), "x", (1, 8, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    scripts = [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("pad_temp" in s for s in scripts) == padded


@pytest.mark.parametrize("c, hw, ceil, parallel, band", [(64, 111, 1, True, 11), (128, 27, 1, True, 13),
                                                         (8, 9, 0, False, 4)])
def test_unpadded_max_pool_takes_rows_then_columns(c, hw, ceil, parallel, band):
    """An unpadded max pool is two passes (separable_pool.py): the row maxima of a band of output
    rows (the core's band, or the whole channel) inside the parallel loop, then the columns;
    every pass along the row in vectors (whole registers, then one shorter vector)."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(maxpool(c, hw, ceil=ceil), "x", (1, c, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    for tag in (POOL_ROWS_TAG, POOL_COLS_TAG):
        nests = _loops_of(func.body, tag)
        assert nests, tag
        for loops in nests:
            assert (loops[0].kind == tvm.tirx.ForKind.PARALLEL) == parallel
            assert loops[-1].kind == tvm.tirx.ForKind.VECTORIZED
            if tag == POOL_ROWS_TAG:  # one pass of row maxima per band, before its columns
                assert int(loops[1].extent) == band


def _loops_of(stmt, prefix, outer=()):
    """The loops over each innermost block whose name starts with ``prefix``."""
    found = []
    if isinstance(stmt, tvm.tirx.For):
        return _loops_of(stmt.body, prefix, (*outer, stmt))
    if isinstance(stmt, tvm.tirx.SeqStmt):
        for s in stmt.seq:
            found += _loops_of(s, prefix, outer)
        return found
    if isinstance(stmt, tvm.s_tir.stmt.SBlockRealize):
        inner = _loops_of(stmt.block.body, prefix, outer)
        if not inner and stmt.block.name_hint.startswith(prefix) and not _has_block(stmt.block.body):
            return [list(outer)]
        return inner
    return found


def _has_block(stmt) -> bool:
    if isinstance(stmt, tvm.tirx.For):
        return _has_block(stmt.body)
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return any(_has_block(s) for s in stmt.seq)
    return isinstance(stmt, tvm.s_tir.stmt.SBlockRealize)
