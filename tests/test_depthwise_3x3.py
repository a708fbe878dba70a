"""The 3x3 depthwise rewrite (backend/cpu_schedules/depthwise_3x3.py, depthwise_tir.py).

The kernels are hand-written vector TIR, so they are checked whole, compiled through the
project's compile stage with the real TVM and run against ONNX Runtime, at the three vector
widths this CPU can run (4 lanes as NEON, 8, 16), on the geometries that break them: rows taken
as one chunk, as several, with the last one overlapping the one before (15 and 28 columns at 16
lanes, 14 at 8), the narrowest row taken, non-square maps, channel counts no vector divides (3,
24, 58), the first and last rows' padding, the map's edge columns, and each epilogue (none,
ReLU, ONNX's Clip, a residual add). Then, which convolutions the rewrite takes. Tolerance:
test_cpu_schedules.py's (9-term sums plus a bias).
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper
from test_cpu_schedules import WIDTHS, _b, _check_against_onnxruntime, _model, _w, conv

from edgecompile.backend import compiler, kernels
from edgecompile.backend.cpu_schedules.depthwise_3x3 import applies
from edgecompile.backend.cpu_schedules.depthwise_tir import left_column
from edgecompile.backend.cpu_schedules.legalize import _const_array
from edgecompile.backend.cpu_schedules.pipeline import fuse_passes
from edgecompile.backend.cpu_schedules.rules.common import overlapping_chunks
from edgecompile.backend.cpu_schedules.tags import DEPTHWISE_S1, DEPTHWISE_S2

pytestmark = pytest.mark.tvm

LANES = {"sse-4": 4, "avx2-8": 8, "avx512-16": 16}

# case -> (channels, rows, columns, activation, stride)
CASES = {
    "96 @112 + ReLU6 (MobileNet v2's first)": (96, 112, 112, "relu6", 2),
    "192 @56, linear (MobileNeXt's: 28 columns, chunks 0 and 12 at 16 lanes)": (192, 56, 56, None, 2),
    "58 @28 + ReLU (ShuffleNet v2's channels; 14 columns: 8 + 8 overlapping)": (58, 28, 28, "relu", 2),
    "3 @30, linear (15 columns: chunks 0 and 7 at 16 lanes)": (3, 30, 30, None, 2),
    "16 @40 + ReLU6 (20 columns: chunks 0 and 4, the 2nd's left column at the row's start)":
        (16, 40, 40, "relu6", 2),
    "24 @20 x 56 + ReLU6 (non-square)": (24, 20, 56, "relu6", 2),
    "5 @8 (4 columns: taken at 4 lanes only)": (5, 8, 8, "relu", 2),
    "7 @2 x 32 (one output row: only the padded top one)": (7, 2, 32, None, 2),
    "stride 1: 32 @112 + ReLU6 (MobileNeXt's first)": (32, 112, 112, "relu6", 1),
    "stride 1: 58 @28, linear (28 columns: 16 + 16 overlapping)": (58, 28, 28, None, 1),
    "stride 1: 3 @15 x 14 + ReLU (14 columns: 8 + 8 at 16 lanes)": (3, 15, 14, "relu", 1),
    "stride 1: 5 @2 x 16 (two rows: first and last only)": (5, 2, 16, None, 1),
    "stride 1: 4 @6 x 4 (4 columns: one chunk, both edges shifted in)": (4, 6, 4, "relu6", 1),
}


def _dw(c: int, h: int, w: int, act: str | None, stride: int = 2, residual: bool = False):
    model = conv(c, c, h, k=3, stride=stride, groups=c, act=act, residual=residual)
    if h != w:  # conv() builds square maps
        model = _model(list(model.graph.node), list(model.graph.initializer), [1, c, h, w])
    return model


def _taken(names: list[str]) -> bool:
    return any(n.startswith((DEPTHWISE_S1, DEPTHWISE_S2)) for n in names)


def _kernels_after_fusion(model, shape, mcpu: str = "skylake-avx512") -> list[str]:
    target = compiler.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    mod = compiler.import_onnx(model, "x", shape)
    with target:
        mod = tvm.transform.Sequential(fuse_passes(target))(mod)
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime(case, width, tmp_path):
    c, h, w, act, stride = CASES[case]
    model = _dw(c, h, w, act, stride)
    taken = _taken(_kernels_after_fusion(model, (1, c, h, w), WIDTHS[width]))
    assert taken == (w // stride >= min(LANES[width], 14)), "the case no longer covers the kernel"
    _check_against_onnxruntime(model, width, tmp_path)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("act", [None, "relu6"])
def test_a_residual_add_is_in_the_stride_1_kernel(act, width, tmp_path):
    """MobileNeXt's second depthwise: conv + bias + the block's input, one kernel."""
    model = _dw(24, 28, 28, act, stride=1, residual=True)
    if act is None:  # conv -> bias -> add(x): the add is in the kernel, no pass of its own
        assert _kernels_after_fusion(model, (1, 24, 28, 28), WIDTHS[width]) == [DEPTHWISE_S1]
    _check_against_onnxruntime(model, width, tmp_path)


@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", list(CASES)[1:4] + list(CASES)[9:11])
def test_with_the_rewrite_off_the_rules_still_match(case, width, tmp_path):
    """The rules' window kernel (de-interleaved plane) still serves the stride-2 depthwise maps
    the rewrite leaves (odd, narrow ones): the same geometries through it."""
    c, h, w, act, stride = CASES[case]
    model = _dw(c, h, w, act, stride)
    assert not _taken(_kernels_after_fusion(model, (1, c, h, w), WIDTHS[width]))
    _check_against_onnxruntime(model, width, tmp_path)


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_the_left_columns_are_read_inside_their_row(lanes):
    """Every chunk after the first reads column 2 x0 - 1 from n columns inside the row: never
    before it (the first row's would be before the tensor), never past 2 x0."""
    for wo in range(1, 80):
        n, starts = overlapping_chunks(lanes, wo)
        for x0 in starts[1:]:
            start, lane = left_column(x0, n)
            assert 0 <= start and start + n <= max(2 * x0, n) <= 2 * wo
            assert start + lane == 2 * x0 - 1 and 0 <= lane < n


@pytest.mark.parametrize("width", ["avx512-16"])
def test_an_add_after_a_stride_2_kernel_stays_an_add(width, tmp_path):
    """conv (stride 2) + bias + a tensor of its output's shape: the stride-2 kernel takes no
    residual, so the add stays a kernel of its own, and the sum is still right."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[2, 2], group=16),
             helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["c", "p"], ["y"])]
    model = _model(nodes, [_w("w", (16, 1, 3, 3)), _b("b", 16)], [1, 16, 56, 56])
    names = _kernels_after_fusion(model, (1, 16, 56, 56), WIDTHS[width])
    assert DEPTHWISE_S2 in names and any("add" in n for n in names), names
    _check_against_onnxruntime(model, width, tmp_path)


def test_the_epilogue_is_in_the_kernel():
    """The bias and the Clip (imported as `maximum` and `minimum` kernels) are stored by the
    kernel: no pass over its output is left."""
    names = _kernels_after_fusion(_dw(96, 56, 56, "relu6"), (1, 96, 56, 56))
    assert names == [DEPTHWISE_S2], names
    names = _kernels_after_fusion(_dw(96, 56, 56, "relu"), (1, 96, 56, 56))
    assert names == [DEPTHWISE_S2], names


def test_a_value_read_twice_ends_the_chain():
    """conv + bias read by a ReLU and by an add: the kernel stores the biased conv, and the ReLU
    stays a kernel of its own (its input is still needed)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[2, 2], group=32),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["c", "r"], ["y"])]
    model = _model(nodes, [_w("w", (32, 1, 3, 3)), _b("b", 32)], [1, 32, 56, 56])
    names = _kernels_after_fusion(model, (1, 32, 56, 56))
    assert DEPTHWISE_S2 in names and any("relu" in n for n in names), names


# case -> (conv() arguments, rows, whether the rewrite takes it at 16 lanes)
DW = {"stride": 2, "groups": 32}
WHICH = {
    "stride-2 depthwise, 28 columns": ((32, 32, 56, DW), True),
    "14 columns (the narrowest taken at 16 lanes)": ((32, 32, 28, DW), True),
    "7 columns (4-lane chunks: the rules' kernel was faster)": ((32, 32, 14, DW), False),
    "odd map (the window would read a right padding column)": ((32, 32, 55, DW), False),
    "stride 1, 56 columns": ((32, 32, 56, {"groups": 32}), True),
    "stride 1, 7 columns (the rules' kernel along the flattened map)": ((32, 32, 7, {"groups": 32}), False),
    "grouped, not depthwise": ((32, 32, 56, {"stride": 2, "groups": 8}), False),
    "5x5": ((32, 32, 56, {**DW, "k": 5}), False),
    "no padding": ((32, 32, 56, {**DW, "pad": 0}), False),
    "channel multiplier 2": ((32, 64, 56, DW), False),
}


@pytest.mark.parametrize("case", WHICH)
def test_which_convolutions_are_taken(case):
    (cin, cout, hw, kw), taken = WHICH[case]
    model = conv(cin, cout, hw, **{"k": 3, **kw})
    names = _kernels_after_fusion(model, (1, cin, hw, hw))
    assert _taken(names) == taken, names
    mod = compiler.import_onnx(model, "x", (1, cin, hw, hw))
    call = next(b.value for b in mod["main"].body.blocks[0].bindings
                if getattr(b.value, "op", None) is not None and b.value.op.name == "relax.nn.conv2d")
    assert applies(call, _const_array(call.args[1]), 16) == taken


def test_the_kernel_table_calls_it_depthwise():
    target = compiler.make_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    mod = compiler.import_onnx(_dw(96, 56, 56, "relu6"), "x", (1, 96, 56, 56))
    with target:
        mod = tvm.transform.Sequential(fuse_passes(target))(mod)
    (row,) = kernels.kernel_table(mod)["kernels"]
    assert row["name"] == DEPTHWISE_S2 and row["op_class"] == "depthwise"
    assert row["args"][0]["shape"] == [1, 96, 56, 56] and row["args"][-1]["shape"] == [1, 96, 28, 28]
    assert row["flops"] > 0
    assert np.isfinite(row["bytes"])
