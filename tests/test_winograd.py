"""Winograd F(2x2, 3x3) convolutions (backend/cpu_schedules/winograd.py, winograd_tir.py).

The transforms are hand-written vector TIR, so they are checked alone, compiled with the real
TVM, against numpy's B^T d B and A^T M A on every awkward geometry: odd and even rows and
columns (the last tile half outside the map), rows of 2 tiles (the narrowest vector) and rows
that take several chunks (the last one overlapping), at 4, 8 and 16 lanes. Whole convolutions
(rewrite -> transforms -> grouped GEMM conv) are checked against ONNX Runtime in
test_cpu_schedules.py's CASES; here, which convolutions the rewrite takes.

Tolerance: the transforms are sums of at most 9 terms with coefficients +-1: 1e-5 of the scale.
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
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
HOST = {"kind": "llvm"}

# (channels, rows, columns, lanes): odd / even maps, 2-tile rows, several overlapping chunks
GEOMETRIES = [(16, 55, 55, 16), (3, 13, 13, 16), (5, 12, 31, 8), (2, 2, 4, 16), (4, 7, 70, 16),
              (3, 27, 27, 4), (1, 6, 9, 4), (2, 13, 13, 8)]


def _run(func: tvm.tirx.PrimFunc, *arrays: np.ndarray) -> list[np.ndarray]:
    """Compile one transform for this host and run it; the last array is its output."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=compiler.make_target(HOST),
                      tir_pipeline=TIR_PIPELINE)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib(*args)
    return args[-1].numpy()


def _input_reference(x: np.ndarray) -> np.ndarray:
    _, c, h, w = x.shape
    th, tw = winograd_tir.tiles(h, w)
    padded = np.zeros((c, 2 * th + 2, 2 * tw + 2), np.float32)
    padded[:, 1:h + 1, 1:w + 1] = x[0]
    windows = np.stack([np.stack([padded[:, 2 * y:2 * y + 4, 2 * t:2 * t + 4] for t in range(tw)], -1)
                        for y in range(th)], -2)  # [c, 4, 4, th, tw]
    v = np.einsum("ai,cijyx,bj->abcyx", BT, windows, BT)
    return v.reshape(1, 16 * c, th, tw)


def _output_reference(m: np.ndarray, bias: np.ndarray, h: int, w: int, relu: bool) -> np.ndarray:
    k = bias.size
    th, tw = winograd_tir.tiles(h, w)
    y = np.einsum("ia,abkyx,jb->kyixj", AT, m.reshape(4, 4, k, th, tw), AT)
    y = y.reshape(k, 2 * th, 2 * tw)[:, :h, :w] + bias[:, None, None]
    return (np.maximum(y, 0) if relu else y)[None]


@pytest.mark.parametrize("c, h, w, lanes", GEOMETRIES)
def test_input_transform_matches_numpy(c, h, w, lanes):
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    th, tw = winograd_tir.tiles(h, w)
    # NaN-filled output: a tile the kernel does not write shows up
    out = np.full((1, 16 * c, th, tw), np.nan, np.float32)
    got = _run(winograd_tir.input_transform(c, h, w, lanes), x, out)
    np.testing.assert_allclose(got, _input_reference(x), rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("k, h, w, lanes", GEOMETRIES)
def test_output_transform_matches_numpy(k, h, w, lanes, relu):
    th, tw = winograd_tir.tiles(h, w)
    m = rng.standard_normal((1, 16 * k, th, tw)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    out = np.full((1, k, h, w), np.nan, np.float32)
    got = _run(winograd_tir.output_transform(k, h, w, lanes, relu), m, bias, out)
    np.testing.assert_allclose(got, _output_reference(m, bias, h, w, relu), rtol=0,
                               atol=1e-5 * np.abs(m).max())


def test_weight_transform_and_transforms_compute_the_convolution():
    """numpy end to end: V, U's GEMMs per tile point, A^T M A == the direct 3x3 conv."""
    c, k, h, w = 5, 3, 9, 8
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    v = _input_reference(x).reshape(16, c, -1)
    u = winograd.weight_transform(wt).reshape(16, k, c)
    m = np.einsum("tkc,tcp->tkp", u, v).reshape(1, 16 * k, *winograd_tir.tiles(h, w))
    got = _output_reference(m, np.zeros(k, np.float32), h, w, relu=False)
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


REWRITE = {
    "64->256 @13 + relu (SqueezeNet's expand)": ((64, 256, 13, {"act": "relu"}), True),
    "20->24 @28, no activation (no block divides 20 or 24)": ((20, 24, 28, {}), True),
    "16->16 @12 (36 tiles: the fewest taken)": ((16, 16, 12, {}), True),
    "128->128 @7 (16 tiles: the GEMMs would stream their weights)": ((128, 128, 7, {}), False),
    "8->64 @28 (8 input channels: too short a GEMM)": ((8, 64, 28, {}), False),
    "stride 2": ((32, 32, 28, {"stride": 2}), False),
    "groups 8": ((32, 32, 28, {"groups": 8}), False),
    "no padding": ((32, 32, 28, {"pad": 0}), False),
    "5x5": ((32, 32, 28, {"k": 5}), False),
}


@pytest.mark.parametrize("case", REWRITE)
def test_rewrite_takes_the_convolutions_that_pay(case):
    (cin, cout, hw, kw), taken = REWRITE[case]
    names = _kernels_after_fusion(conv(cin, cout, hw, **{"k": 3, **kw}), (1, cin, hw, hw))
    assert any(n.startswith(WINOGRAD_INPUT) for n in names) == taken, names
    assert any(n.startswith(WINOGRAD_OUTPUT) for n in names) == taken, names


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
