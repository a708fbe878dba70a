"""Which part of each kernel's output the first of two threads writes: read from the scheduled
TIR, per rule (rules/common.py, "a core keeps its rows").

TVM's thread pool splits a parallel loop statically; kernels next to each other that split
differently make each core read what the other wrote. Compiled for AVX-512 (code generation only,
so any x86 machine checks it).
"""

from __future__ import annotations

import onnx
import pytest
import tvm
from test_cpu_schedules import WIDTHS, conv, maxpool, shuffle

from edgecompile.backend import compiler
from edgecompile.backend.cpu_schedules.pipeline import schedule_passes

pytestmark = pytest.mark.tvm


def _stmts(node, found: list) -> list:
    """Every statement under node (loops, sequences, blocks, block realizations), pre-order."""
    found.append(node)
    for attr in ("block", "body", "then_case", "else_case"):
        child = getattr(node, attr, None)
        if isinstance(child, (tvm.tirx.Stmt, tvm.s_tir.SBlock)):
            _stmts(child, found)
    for child in getattr(node, "seq", None) or []:
        _stmts(child, found)
    return found


def _first_core_share(model, shape) -> list[tuple[int, int]]:
    """Per output axis, the range of indices the first of two threads writes (a bound that may
    over-reach, never fall short): TVM's pool gives the first half of a parallel loop's iterations
    to the first thread."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(model, "x", shape)
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    nodes = _stmts(func.body, [])
    loops = [s for s in nodes if isinstance(s, tvm.tirx.For)]
    assert any(s.kind == tvm.tirx.ForKind.PARALLEL for s in loops)
    domain = {}
    for s in loops:
        extent = int(s.extent)
        if s.kind == tvm.tirx.ForKind.PARALLEL:
            extent = -(-extent // 2)
        domain[s.loop_var] = tvm.sym.IntervalSet(s.min, s.min + extent - 1)
    analyzer = tvm.sym.Analyzer()
    ranges = []
    for s in nodes:
        if not isinstance(s, tvm.s_tir.SBlockRealize):
            continue
        block_domain = {iv.var: analyzer.int_set(v, domain)
                        for iv, v in zip(s.block.iter_vars, s.iter_values, strict=True)}
        store = s.block.body
        for w in s.block.writes:
            if not w.source.same_as(func.params[-1]):
                continue
            if isinstance(store, tvm.tirx.BufferStore) and store.buffer.same_as(w.source):
                # The store's own indices: a block that loop_partition made declares the
                # whole buffer as its write region.
                bounds = [(i, i) for i in store.indices]
            else:
                bounds = [(r.min, r.min + r.extent - 1) for r in w.region]
            ranges.append([(int(analyzer.int_set(lo, block_domain).min_value),
                            int(analyzer.int_set(hi, block_domain).max_value)) for lo, hi in bounds])
    assert ranges
    return [(min(r[i][0] for r in ranges), max(r[i][1] for r in ranges)) for i in range(4)]


@pytest.mark.parametrize("model, shape, split", [
    (conv(116, 116, 14), (1, 116, 14, 14), "rows"),  # ShuffleNet v2's 1x1 convs
    (shuffle(116, 2, 56), (1, 116, 56, 56), "channels"),  # a copy keeps whole planes
    (shuffle(58, 2, 28), (1, 58, 28, 28), "channels"),  # 45K elements: on both cores too
    (conv(3, 24, 224, k=3, stride=2), (1, 3, 224, 224), "rows"),  # a stem
    (maxpool(64, 112), (1, 64, 112, 112), "rows"),  # the max pool after it
    (conv(480, 120, 14, groups=3), (1, 480, 14, 14), "channels"),  # a group reads its own inputs
    (conv(232, 232, 7), (1, 232, 7, 7), "channels"),  # more channels than positions
], ids=["pointwise-116@14", "shuffle-116@56", "shuffle-58@28", "stem-3x3s2", "maxpool-64@112",
        "grouped-g3", "pointwise-232@7"])
def test_each_core_keeps_its_rows_between_kernels(model, shape, split):
    """TVM splits a parallel loop statically; a kernel split by channels after one split by rows
    reads half its input from the other core's cache (rules/common.py, "a core keeps its rows").
    Convolutions with every input feeding each output, and pooling, give each core a band of
    rows and every channel; grouped convolutions, channel-heavy small maps and copies (whole
    planes: fallback.py) keep channels. Every case must have a parallel loop (a 45K-element
    shuffle too: fallback.MIN_PARALLEL_ELEMENTS)."""
    first = _first_core_share(model, shape)
    dims = onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim
    channels, rows = dims[1].dim_value, dims[2].dim_value
    if split == "rows":
        assert first[1][1] >= channels - 1 and first[2][1] <= rows * 0.6, first
    else:
        assert first[1][1] <= channels * 0.75 and first[2] == (0, rows - 1), first
