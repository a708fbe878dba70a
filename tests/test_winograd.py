"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions (backend/cpu_schedules/winograd.py,
winograd_tir.py).

The transforms are hand-written vector TIR, so they are checked alone, compiled with the real
TVM, against numpy's B^T d B and A^T M A (the matrices themselves, not the shared-term spelling
the TIR uses) on every awkward geometry: odd and even rows and columns (the last tile partly
outside the map), rows of 2 tiles (the narrowest vector) and rows that take several chunks (the
last one overlapping), at 4, 8 and 16 lanes. Whole convolutions (rewrite -> transforms ->
grouped GEMM conv) are checked against ONNX Runtime in test_cpu_schedules.py's CASES; here,
which convolutions the rewrite takes, and with which tile.

Tolerance: 1e-6 of the scale times the sum of the transform's |coefficients| per output: F(2)'s
are sums of at most 9 terms with coefficients +-1, F(4)'s of up to 36 with coefficients up to
25 (B^T) and 64 (A^T), so float32 rounding grows with them (measured: 3e-6 and 1.2e-5 of the
scale for F(4)'s input and output transforms).
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import helper
from test_cpu_schedules import CASES, WIDTHS, _b, _check_against_onnxruntime, _model, _w, conv

from edgecompile.backend import compiler
from edgecompile.backend.cpu_schedules import TIR_PIPELINE, winograd, winograd_tir
from edgecompile.backend.cpu_schedules.pipeline import fuse_passes
from edgecompile.backend.cpu_schedules.tags import WINOGRAD_INPUT, WINOGRAD_OUTPUT

pytestmark = pytest.mark.tvm

rng = np.random.default_rng(0)
HOST = {"kind": "llvm"}

# (channels, rows, columns, lanes): odd / even maps, 2-tile rows, several overlapping chunks
GEOMETRIES = [(16, 55, 55, 16), (3, 13, 13, 16), (5, 12, 31, 8), (2, 2, 4, 16), (4, 7, 70, 16),
              (3, 27, 27, 4), (1, 6, 9, 4), (2, 13, 13, 8), (3, 5, 5, 4), (2, 28, 28, 8)]
# F(4)'s own: 2-tile rows at 8 columns, a 1-row overhang (13 = 4 x 3 + 1), a 3-row one (56 + 1)
GEOMETRIES_4 = [g for g in GEOMETRIES if g[2] > 4] + [(3, 8, 8, 16), (2, 57, 57, 16), (2, 14, 9, 16)]
TILED = [(2, *g) for g in GEOMETRIES] + [(4, *g) for g in GEOMETRIES_4]


def _tolerance(matrix: np.ndarray) -> float:
    """1e-6 times the largest sum of |coefficients| of one output of the 2-D transform."""
    return 1e-6 * float(np.abs(matrix).sum(axis=1).max() ** 2)


def _run(func: tvm.tirx.PrimFunc, *arrays: np.ndarray) -> list[np.ndarray]:
    """Compile one transform for this host and run it; the last array is its output."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=compiler.make_target(HOST),
                      tir_pipeline=TIR_PIPELINE)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib(*args)
    return args[-1].numpy()


def _input_reference(x: np.ndarray, m: int) -> np.ndarray:
    _, c, h, w = x.shape
    a, bt = m + 2, winograd_tir.BT[m]
    th, tw = winograd_tir.tiles(h, w, m)
    padded = np.zeros((c, m * th + 2, m * tw + 2), np.float32)
    padded[:, 1:h + 1, 1:w + 1] = x[0]
    windows = np.stack([np.stack([padded[:, m * y:m * y + a, m * t:m * t + a] for t in range(tw)], -1)
                        for y in range(th)], -2)  # [c, a, a, th, tw]
    v = np.einsum("ai,cijyx,bj->abcyx", bt, windows, bt)
    return v.reshape(1, a * a * c, th, tw)


def _output_reference(mt: np.ndarray, bias: np.ndarray, h: int, w: int, relu: bool, m: int) -> np.ndarray:
    k, a, at = bias.size, m + 2, winograd_tir.AT[m]
    th, tw = winograd_tir.tiles(h, w, m)
    y = np.einsum("ia,abkyx,jb->kyixj", at, mt.reshape(a, a, k, th, tw), at)
    y = y.reshape(k, m * th, m * tw)[:, :h, :w] + bias[:, None, None]
    return (np.maximum(y, 0) if relu else y)[None]


@pytest.mark.parametrize("m, c, h, w, lanes", TILED)
def test_input_transform_matches_numpy(m, c, h, w, lanes):
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    th, tw = winograd_tir.tiles(h, w, m)
    # NaN-filled output: a tile the kernel does not write shows up
    out = np.full((1, (m + 2) ** 2 * c, th, tw), np.nan, np.float32)
    got = _run(winograd_tir.input_transform(c, h, w, lanes, m), x, out)
    np.testing.assert_allclose(got, _input_reference(x, m), rtol=0,
                               atol=_tolerance(winograd_tir.BT[m]) * np.abs(x).max())


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("m, k, h, w, lanes", TILED)
def test_output_transform_matches_numpy(m, k, h, w, lanes, relu):
    th, tw = winograd_tir.tiles(h, w, m)
    mt = rng.standard_normal((1, (m + 2) ** 2 * k, th, tw)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    out = np.full((1, k, h, w), np.nan, np.float32)
    got = _run(winograd_tir.output_transform(k, h, w, lanes, relu, m), mt, bias, out)
    np.testing.assert_allclose(got, _output_reference(mt, bias, h, w, relu, m), rtol=0,
                               atol=_tolerance(winograd_tir.AT[m]) * np.abs(mt).max())


@pytest.mark.parametrize("m", [2, 4])
def test_weight_transform_and_transforms_compute_the_convolution(m):
    """numpy end to end: V, U's GEMMs per tile point, A^T M A == the direct 3x3 conv."""
    c, k, h, w = 5, 3, 9, 8
    a = m + 2
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    v = _input_reference(x, m).reshape(a * a, c, -1)
    u = winograd.weight_transform(wt, m).reshape(a * a, k, c)
    mt = np.einsum("tkc,tcp->tkp", u, v).reshape(1, a * a * k, *winograd_tir.tiles(h, w, m))
    got = _output_reference(mt, np.zeros(k, np.float32), h, w, relu=False, m=m)
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    want = np.einsum("kcij,cyxij->kyx", wt, np.lib.stride_tricks.sliding_window_view(padded, (3, 3), (1, 2)))
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith(("regular 3x3", "fire module"))])
def test_direct_3x3_rule_matches_onnxruntime(case, width, tmp_path, monkeypatch):
    """test_cpu_schedules.py's 3x3 convs with the rewrite off: the direct rule still serves the
    convolutions the rewrite does not take (strides, groups, small maps, few channels)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 << 30)
    _check_against_onnxruntime(CASES[case], width, tmp_path)


def _kernels_after_fusion(model, shape) -> list[str]:
    target = compiler.make_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    mod = compiler.import_onnx(model, "x", shape)
    with target:
        mod = tvm.transform.Sequential(fuse_passes(target))(mod)
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


# case -> (conv, the tile m it is rewritten with, None: left direct)
REWRITE = {
    "64->256 @13 + relu (SqueezeNet's expand: 16 tiles of 4, 49 of 2)": ((64, 256, 13, {"act": "relu"}), 2),
    "16->64 @55 + relu (SqueezeNet's first expand)": ((16, 64, 55, {"act": "relu"}), 4),
    "32->32 @27 (49 tiles of 4)": ((32, 32, 27, {}), 4),
    "20->24 @28, no activation (no block divides 20 or 24)": ((20, 24, 28, {}), 4),
    "16->16 @12 (9 tiles of 4, 36 of 2: the fewest taken)": ((16, 16, 12, {}), 2),
    "16->16 @24 (36 tiles of 4)": ((16, 16, 24, {}), 4),
    "128->128 @7 (16 tiles: the GEMMs would stream their weights)": ((128, 128, 7, {}), None),
    "8->64 @28 (8 input channels: too short a GEMM)": ((8, 64, 28, {}), None),
    "stride 2": ((32, 32, 28, {"stride": 2}), None),
    "groups 8": ((32, 32, 28, {"groups": 8}), None),
    "no padding": ((32, 32, 28, {"pad": 0}), None),
    "5x5": ((32, 32, 28, {"k": 5}), None),
}


@pytest.mark.parametrize("case", REWRITE)
def test_rewrite_takes_the_convolutions_that_pay(case):
    (cin, cout, hw, kw), m = REWRITE[case]
    model = conv(cin, cout, hw, **{"k": 3, **kw})
    names = _kernels_after_fusion(model, (1, cin, hw, hw))
    assert any(n.startswith(WINOGRAD_INPUT) for n in names) == (m is not None), names
    assert any(n.startswith(WINOGRAD_OUTPUT) for n in names) == (m is not None), names
    if m is not None:  # and with the tile the case names
        mod = compiler.import_onnx(model, "x", (1, cin, hw, hw))
        call = next(b.value for b in mod["main"].body.blocks[0].bindings
                    if getattr(b.value, "op", None) is not None and b.value.op.name == "relax.nn.conv2d")
        assert winograd.tile_size(call, winograd._const_array(call.args[1])) == m


def test_bias_and_relu_are_stored_by_the_output_transform():
    """No kernel of its own is left for the bias add or the ReLU (a pass over the output each)."""
    names = _kernels_after_fusion(conv(32, 64, 27, k=3, act="relu"), (1, 32, 27, 27))
    assert not [n for n in names if "add" in n or "relu" in n], names


def test_chain_stops_at_a_value_read_twice():
    """conv + bias read by a ReLU and by a residual add: the output transform stores the biased
    conv, the ReLU stays a kernel of its own (its input is still needed)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["c", "r"], ["y"])]
    model = _model(nodes, [_w("w", (32, 16, 3, 3)), _b("b", 32)], [1, 16, 20, 20])
    names = _kernels_after_fusion(model, (1, 16, 20, 20))
    assert any(n.startswith(WINOGRAD_OUTPUT) for n in names), names
    assert any("relu" in n for n in names), names
