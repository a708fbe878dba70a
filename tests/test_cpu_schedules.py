"""Our default CPU schedules, rule by rule, on awkward shapes, against ONNX Runtime.

Each case is a small real ONNX graph compiled through the project's compile stage (our CPU
pipeline: custom legalisation + schedule rules) and run with the TVM runtime. Shapes are the
ones that break register-blocked kernels: channels that no vector width divides (58, 116,
1000), 1x1 and odd maps, strides, groups of 3 and 8, depthwise, 10-class heads. Each runs at
three vector widths on this CPU: SSE (4 lanes, as NEON), AVX2 (8) and, where this CPU has it,
AVX-512 (16), so the NEON-width code paths are checked natively too.

Tolerance: float32 sums of up to a few thousand products, in another order than ONNX
Runtime's: 1e-4 of the output scale plus 1e-5 absolute.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper

from edgecompile.backend import compiler, runtime
from edgecompile.backend.cpu_schedules import winograd
from edgecompile.backend.cpu_schedules.pipeline import schedule_passes
from edgecompile.backend.cpu_schedules.rules.conv import SUPERBLOCK_INPUT_BYTES, _pixel_superblock
from edgecompile.backend.cpu_schedules.rules.planes import PLANE_BAND_BYTES
from edgecompile.backend.cpu_schedules.tags import CONCAT_PART_SUFFIX
from edgecompile.pipeline import ort
from edgecompile.pipeline.stages.compile import compile_onnx
from edgecompile.targets import TargetPreset

pytestmark = pytest.mark.tvm

rng = np.random.default_rng(0)

# name -> LLVM CPU whose vector width selects the rule's parameters (lanes 4, 8, 16)
WIDTHS = {"sse-4": "x86-64", "avx2-8": "haswell", "avx512-16": "skylake-avx512"}


def _w(name: str, shape) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:]))
    return numpy_helper.from_array(
        (rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5).astype(np.float32), name)


def _b(name: str, n: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.uniform(-0.1, 0.1, n).astype(np.float32), name)


def _model(nodes, inits, in_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    # The output's shape as inferred: TVM's importer wants the graph output fully typed.
    inferred = {v.name: v for v in m.graph.value_info}
    m.graph.output[0].CopyFrom(inferred.get("y", m.graph.output[0]))
    onnx.checker.check_model(m)
    return m


def conv(cin, cout, hw, k=1, stride=1, groups=1, act=None, residual=False, pad=None):
    pad = k // 2 if pad is None else pad
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k],
                              strides=[stride, stride], pads=[pad] * 4, group=groups)]
    inits = [_w("w", (cout, cin // groups, k, k)), _b("b", cout)]
    last = "c"
    if act == "relu6":  # how torch exports ReLU6: Clip(0, 6)
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["a"]))
        last = "a"
    elif act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["a"]))
        last = "a"
    if residual:
        nodes.append(helper.make_node("Add", [last, "x"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return _model(nodes, inits, [1, cin, hw, hw])


def dense(cin, classes):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    return _model(nodes, [_w("w", (classes, cin)), _b("b", classes)], [1, cin, 7, 7])


def maxpool(c, hw, pad=0, ceil=0, k=3, stride=2, relu=False):
    nodes = [helper.make_node("MaxPool", ["x"], ["p" if relu else "y"], kernel_shape=[k, k],
                              strides=[stride] * 2, pads=[pad] * 4, ceil_mode=ceil)]
    if relu:
        nodes.append(helper.make_node("Relu", ["p"], ["y"]))
    return _model(nodes, [], [1, c, hw, hw])


def global_pool(c, hw):
    return _model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [], [1, c, hw, hw])


def shuffle(c, groups, hw):
    """ShuffleNet's channel shuffle as torch exports it: Reshape, Transpose, Reshape."""
    s1 = numpy_helper.from_array(np.array([1, groups, c // groups, hw, hw], np.int64), "s1")
    s2 = numpy_helper.from_array(np.array([1, c, hw, hw], np.int64), "s2")
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "s2"], ["y"])]
    return _model(nodes, [s1, s2], [1, c, hw, hw])


def fire(cin, squeeze, expand, hw, pool=False):
    """SqueezeNet's fire module, then the next squeeze conv: the concat of the two expand convs
    feeds a conv (or a max-pool, then the conv): the graph rewrite removes the concat
    (concat_split.py: the conv takes the pieces with its weight split, the pool goes first)."""
    nodes = [helper.make_node("Conv", ["x", "ws", "bs"], ["s"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["s"], ["sr"]),
             helper.make_node("Conv", ["sr", "w1", "b1"], ["e1"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["e1"], ["e1r"]),
             helper.make_node("Conv", ["sr", "w3", "b3"], ["e3"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["e3"], ["e3r"]),
             helper.make_node("Concat", ["e1r", "e3r"], ["cat"], axis=1)]
    last = "cat"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                                      ceil_mode=1))
        last = "p"
    nodes += [helper.make_node("Conv", [last, "wn", "bn"], ["n"], kernel_shape=[1, 1]),
              helper.make_node("Relu", ["n"], ["y"])]
    inits = [_w("ws", (squeeze, cin, 1, 1)), _b("bs", squeeze), _w("w1", (expand, squeeze, 1, 1)),
             _b("b1", expand), _w("w3", (expand, squeeze, 3, 3)), _b("b3", expand),
             _w("wn", (squeeze, 2 * expand, 1, 1)), _b("bn", squeeze)]
    return _model(nodes, inits, [1, cin, hw, hw])


CASES = {
    "fire module, concat -> 1x1 conv @13": fire(32, 16, 64, 13),
    "fire module, concat -> maxpool (ceil) -> 1x1 conv @27": fire(64, 16, 64, 27, pool=True),
    "pointwise 512->512 @14 (MobileNet v1)": conv(512, 512, 14, act="relu6"),
    "pointwise 116->116 @14 (odd-width rows: channels padded to a register)": conv(116, 116, 14),
    "pointwise 24->58 @14 (58: no vector width divides it)": conv(24, 58, 14),
    "pointwise 116->116 @7 + relu": conv(116, 116, 7, act="relu"),
    "pointwise 64->1000 @1 (a classifier as a 1x1 conv, 1x1 map)": conv(64, 1000, 1),
    "pointwise 512->1000 @13 (SqueezeNet's head)": conv(512, 1000, 13, act="relu"),
    "pointwise 32->32 @28 + relu6 + residual": conv(32, 32, 28, act="relu6", residual=True),
    "pointwise 16->96 @56 + relu6 (pixel super-blocks)": conv(16, 96, 56, act="relu6"),
    "pointwise 16->64 @23 + relu (short K, prime row: a guarded tile)": conv(16, 64, 23, act="relu"),
    "pointwise 16->64 @55 + relu (expanding on 3025 positions: flat, rounded up to whole registers)":
        conv(16, 64, 55, act="relu"),
    "pointwise 24->96 @23 (529 positions: flat-rounded at every width, the crop the only epilogue)":
        conv(24, 96, 23),
    "stem 3x3 s2 3->24 @33 (odd map)": conv(3, 24, 33, k=3, stride=2, act="relu"),
    "stem 3x3 s2 3->64 @64, no padding (SqueezeNet's: odd padded row)":
        conv(3, 64, 64, k=3, stride=2, act="relu", pad=0),
    "winograd F(4x4) 16->64 @55 + relu (SqueezeNet's expand: 14 tiles a row, two chunks)":
        conv(16, 64, 55, k=3, act="relu"),
    "winograd F(2x2) 20->24 @12 (no block divides the channels, 6 tiles a row)": conv(20, 24, 12, k=3),
    # Winograd's by default; test_winograd.py runs the "regular 3x3" ones on the direct rule too.
    "regular 3x3 16->64 @13": conv(16, 64, 13, k=3, act="relu"),
    "regular 3x3 64->256 @13 (SqueezeNet's expand: channel vectors, padded input its own pass)":
        conv(64, 256, 13, k=3, act="relu"),
    "regular 3x3 32->128 @27 (window tile within a row: 2 vectors x 9)": conv(32, 128, 27, k=3, act="relu"),
    "regular 3x3 32->128 @19 (prime row: a guarded tile across rows)": conv(32, 128, 19, k=3, act="relu"),
    "regular 3x3 16->64 @23 (prime row, all weights in L1)": conv(16, 64, 23, k=3, act="relu"),
    "depthwise 3x3 s1 58 @7": conv(58, 58, 7, k=3, groups=58),
    "depthwise 3x3 s1 96 @7 + relu6 (flat map: 4 vectors of 16, masked at row ends)":
        conv(96, 96, 7, k=3, groups=96, act="relu6"),
    "depthwise 3x3 s1 144 @7 + relu6 + residual (flat map, residual in the epilogue)":
        conv(144, 144, 7, k=3, groups=144, act="relu6", residual=True),
    "depthwise 5x5 s1 40 @10 (flat map, two masked columns each side)": conv(40, 40, 10, k=5, groups=40),
    "depthwise 3x3 s1 24 @3 (flat map shorter than a register)": conv(24, 24, 3, k=3, groups=24),
    "depthwise 3x3 s1 72 @14 (rows: the flat map would take two tiles)": conv(72, 72, 14, k=3, groups=72),
    "depthwise 3x3 s1 no padding 16 @9 (output rows shorter than input rows: row kernel)":
        conv(16, 16, 9, k=3, groups=16, pad=0),
    "depthwise 3x3 s2 144 @56 + relu6": conv(144, 144, 56, k=3, stride=2, groups=144, act="relu6"),
    "depthwise 3x3 s2 96 @112 (de-interleaved by vector loads and shuffles)":
        conv(96, 96, 112, k=3, stride=2, groups=96, act="relu6"),
    "depthwise 5x5 s2 padding 2 64 @56 (plane rows in parts: 2 border columns each side)":
        conv(64, 64, 56, k=5, stride=2, groups=64, pad=2),
    "depthwise 3x3 s2 24 @15 (odd input row: no vector de-interleave)":
        conv(24, 24, 15, k=3, stride=2, groups=24),
    "stem 3x3 s2 3->32 @64, padding 1 (even map)": conv(3, 32, 64, k=3, stride=2, act="relu6"),
    "patch embedding 4x4 s4 3->40 @64 (FasterNet's stem)": conv(3, 40, 64, k=4, stride=4, pad=0),
    "merging 2x2 s2 40->80 @28 (FasterNet)": conv(40, 80, 28, k=2, stride=2, pad=0, act="relu"),
    "depthwise 3x3 s1 32 @1 (1x1 map)": conv(32, 32, 1, k=3, groups=32),
    "grouped 1x1 g3 240->240 @28 (ShuffleNet v1 g3)": conv(240, 240, 28, groups=3, act="relu"),
    "grouped 3x3 g8 64->64 @14": conv(64, 64, 14, k=3, groups=8),
    "dense 1024->10 (10-class head)": dense(1024, 10),
    "dense 960->1000": dense(960, 1000),
    "dense 512->256 (whole tiles, no crop)": dense(512, 256),
    "maxpool 3x3 s2 64 @111": maxpool(64, 111),
    "maxpool 3x3 s2 padding 1 24 @112 (ShuffleNet's)": maxpool(24, 112, pad=1),
    "maxpool 3x3 s2 ceil 64 @111 (SqueezeNet's: the windows tile the input, ceil adds nothing)":
        maxpool(64, 111, ceil=1),
    "maxpool 3x3 s2 ceil 16 @56 (the ceil adds an output column and row)": maxpool(16, 56, ceil=1),
    "maxpool 3x3 s2 ceil 32 @27 (rows then columns: 27 and 13 wide, a register and a piece)":
        maxpool(32, 27, ceil=1),
    "maxpool 2x2 s2 8 @9 (floor: the last input column unread)": maxpool(8, 9, k=2),
    "maxpool 3x3 s1 4 @5 (stride 1, rows shorter than a register)": maxpool(4, 5, stride=1),
    "maxpool 7x7 s1 16 @7 (one window: a 1x1 output)": maxpool(16, 7, k=7, stride=1),
    "maxpool 3x3 s2 16 @27 + relu (fused behind the pool: inlined into its columns pass)":
        maxpool(16, 27, relu=True),
    "channel shuffle 116 in 2 groups @14": shuffle(116, 2, 14),
    "global average pool 1000 @13 (SqueezeNet's head)": global_pool(1000, 13),
    "global average pool 58 @7 (58: two chains, no 8 divides it)": global_pool(58, 7),
}


def _here_can_run(mcpu: str) -> bool:
    return compiler.can_run_here({"kind": "llvm", "mcpu": mcpu})


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", CASES)
def test_rule_matches_onnxruntime(case, width, tmp_path):
    _check_against_onnxruntime(CASES[case], width, tmp_path)


def _check_against_onnxruntime(model, width, tmp_path):
    mcpu = WIDTHS[width]
    if not _here_can_run(mcpu):
        pytest.skip(f"this CPU cannot run {mcpu} code")
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    preset = TargetPreset(name=f"test-{width}", description="", device="cpu",
                          target={"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    lib = compile_onnx(model, "x", shape, preset, tmp_path / "model.so", records="none")
    assert lib.schedules == "edgecompile-cpu-rules"
    x = rng.standard_normal(shape).astype(np.float32)
    want = ort.session(model).run(None, {"x": x})[0]
    got = runtime.load_local(lib.path, "cpu", "x").run(x)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-4 * scale + 1e-5)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_rule_fails_on_a_kernel_it_claims(width, caplog):
    """A rule that raises on a kernel declines quietly (SafeRule) and the kernel still runs, as
    the next rule's or Fallback's much slower loops: numerics stay right, so only this shows it.
    Scheduling only (no code is run), so every vector width is checked on any CPU."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS[width], "num-cores": 2})
    for case, model in CASES.items():
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        mod = compiler.import_onnx(model, "x", shape)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cpu_schedules"), target:
            tvm.transform.Sequential(schedule_passes(target))(mod)
        declined = [r.getMessage() for r in caplog.records if "declined" in r.getMessage()]
        assert not declined, (case, declined)


# blocks of 64 pixels, input channels, tiles per super-block: as many as fit 64 KB of input
# (16 x 64 x 4 B = 4 KB a tile: 16 fit) that divide the count (196: 14), one where none does
@pytest.mark.parametrize("blocks, c_in, want", [(196, 16, 14), (49, 24, 7), (96, 8, 32), (49, 116, 1),
                                                (13, 58, 1), (1, 1024, 1)])
def test_pixel_superblock_divides_the_tiles_and_keeps_its_input_near_l1(blocks, c_in, want):
    """A pointwise kernel walks its pixel tiles in super-blocks (conv._pixel_superblock): a whole
    number of them (a partial one predicates every tile), their input within the budget."""
    per = _pixel_superblock(blocks, c_in, 64)
    assert per == want
    assert blocks % per == 0 and (per == 1 or per * c_in * 64 * 4 <= SUPERBLOCK_INPUT_BYTES)


# (channels, map, stride, bands): the de-interleaved plane of 96 @112 s2 is 114 x 114 floats
def _pad_blocks(sch):
    """The blocks that build a window's padded plane: (the one under its loops, one that writes
    it) -- `pad_temp` for both, or where the plane row is built in parts (planes.copy_row_parts),
    the block holding the parts and the middle part."""
    try:
        pad = sch.get_sblock("pad_temp")
        return pad, pad
    except tvm.s_tir.schedule.ScheduleError:
        return sch.get_sblock("pad_temp_ax2_common"), sch.get_sblock("pad_temp_ax21")


# (52 KB): 4 bands of 14 output rows (29 input rows, 13 KB); 32 @112 s1 (114 rows of 128, 58 KB):
# 4 bands of 28 (30 rows, 15 KB); 144 @56 s2 fits whole (58 x 58, 13 KB)
@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("c, hw, stride, bands", [(96, 112, 2, 4), (32, 112, 1, 4), (144, 56, 2, 1)])
def test_window_plane_is_built_in_bands_that_stay_in_l1(c, hw, stride, bands):
    """A depthwise window builds its padded input plane per channel; one over PLANE_BAND_BYTES
    is built band by band inside the channel loop (planes.plane_band), each band's input rows
    within the budget."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(conv(c, c, hw, k=3, stride=stride, groups=c), "x", (1, c, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = tvm.s_tir.Schedule(func)
    pad, writer = _pad_blocks(sch)
    loops = [sch.get(lp) for lp in sch.get_loops(pad)]
    assert loops[0].kind == tvm.tirx.ForKind.PARALLEL  # one channel per iteration
    band_loops = [lp for lp in loops[1:] if lp.loop_var.name.startswith("yy")]
    assert [int(lp.extent) for lp in band_loops] == ([bands] if bands > 1 else [])
    plane = [int(d) for d in sch.get(writer).writes[0].source.shape]  # [n, c, rows, (phases,) row]
    row_bytes = 4 * int(np.prod(plane[3:]))
    rows_in = (hw // stride // bands - 1) * stride + 3
    assert rows_in * row_bytes <= PLANE_BAND_BYTES < plane[2] * row_bytes if bands > 1 \
        else plane[2] * row_bytes <= PLANE_BAND_BYTES


@pytest.mark.parametrize("case", [(512, 512, 14, 1), (576, 96, 14, 1), (64, 256, 13, 3)])
def test_small_map_input_is_read_in_place_not_copied_channels_last(case, monkeypatch):
    """A channel-vector convolution on a small map reads its NCHW input where it is (its padded
    copy, for a 3x3): no [n, h, w, c] copy first, on several cores either (pointwise_fvec.py:
    the copy cost more than it saved, 0.83-0.97 of whole models' latency without it). The 3x3
    on the direct rule (Winograd off)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 << 30)
    cin, cout, hw, k = case
    target = compiler.make_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 4})
    mod = compiler.import_onnx(conv(cin, cout, hw, k=k, act="relu6"), "x", (1, cin, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    text = func.script()
    assert "edge_pw_fvec" in text  # the channel-vector rule, not the row one
    for rows in {hw, hw + k - 1}:  # the input, or its padded copy
        assert f"T.int64({rows}), T.int64({rows}), T.int64({cin}))" not in text


@pytest.mark.parametrize("c, hw, chains", [(1000, 13, 8), (1280, 7, 8), (58, 7, 2), (7, 7, 7)])
def test_reduction_runs_several_outputs_side_by_side(c, hw, chains):
    """A global average pool reduces `chains` channels at once, the unrolled channel loop inside
    the reduction loops (fallback.REDUCE_CHAINS): one channel at a time is one chain of dependent
    adds, 3x ONNX Runtime's time inside an inference."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(global_pool(c, hw), "x", (1, c, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = tvm.s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    (update,) = [b for b in blocks if sch.get(b).name_hint.endswith("_update")]
    loops = [sch.get(lp) for lp in sch.get_loops(update)]
    assert loops[-1].kind == tvm.tirx.ForKind.UNROLLED and int(loops[-1].extent) == chains
    assert [int(lp.extent) for lp in loops[-3:-1]] == [hw, hw]  # the reduction, outside the chains


@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("c, hw, whole_fill", [(192, 56, False), (96, 112, False), (64, 56, False),
                                                (576, 14, True)])
def test_strided_window_plane_is_written_once(c, hw, whole_fill):
    """A strided window's de-interleaved plane is built row by row in parts (border, input's
    columns, border: planes.copy_row_parts), each element written once, where the input's part
    of a row holds a whole register; shorter rows keep the zero fill of the whole plane before
    the copy (decompose_padding's `pad_temp_pad_const` block)."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    k = 5 if c == 64 else 3
    model = conv(c, c, hw, k=k, stride=2, groups=c, pad=k // 2)
    mod = compiler.import_onnx(model, "x", (1, c, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    text = func.script()
    assert ('sblock("pad_temp_pad_const")' in text) == whole_fill
    assert ('sblock("pad_temp_ax21")' in text) == (not whole_fill)
    tvm.s_tir.Schedule(func)  # well-formed TIR (a partition of a split loop is not)


@pytest.mark.parametrize("cin, cout, hw, chunked", [(512, 512, 14, False), (256, 512, 14, False),
                                                  (320, 1280, 7, True), (1024, 1024, 7, True)])
def test_k_chunks_only_where_a_channel_blocks_accumulators_fit_l1(cin, cout, hw, chunked):
    """A wide channel-vector convolution walks its input channels in chunks (each chunk's weights
    stay in L1, every position per chunk) only where the accumulators of a whole channel block
    fit L1_ACCUMULATOR_BYTES: 7x7 maps, not 14x14 (49 KB, which spilled and ran slower)."""
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(conv(cin, cout, hw), "x", (1, cin, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = tvm.s_tir.Schedule(func)
    extents = [int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock("edge_pw_fvec_update"))]
    assert (cin not in extents) == chunked  # the whole K as one loop, or chunks of it


def test_fire_module_runs_without_concat(tmp_path):
    """The concat of a fire module is gone from the compiled graph (its consumers read the
    pieces), and the partial convolutions keep bias, sum and activation in one kernel."""
    preset = TargetPreset(name="test", description="", device="cpu",
                          target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    for i, case in enumerate(("fire module, concat -> 1x1 conv @13",
                              "fire module, concat -> maxpool (ceil) -> 1x1 conv @27")):
        model = CASES[case]
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        table = compile_onnx(model, "x", shape, preset, tmp_path / f"{i}.so", records="none").kernel_table
        names = [k["name"] for k in table["kernels"]]
        assert not [n for n in names if "concat" in n], (case, names)
        assert [n for n in names if n.endswith(CONCAT_PART_SUFFIX)], (case, names)
        # No kernel holds only a bias add / activation: they went into a convolution.
        assert not [n for n in names if n.startswith("fused_add")], (case, names)


def test_every_kernel_is_scheduled_not_left_naive(tmp_path):
    """The rules leave no kernel as TVM's untouched loops: a model's compute functions all come
    out parallel or vectorised (a naive kernel is what made untuned builds 30-180x slower)."""
    preset = TargetPreset(name="test", description="", device="cpu",
                          target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    for case in ("pointwise 24->58 @14 (58: no vector width divides it)",
                 "grouped 1x1 g3 240->240 @28 (ShuffleNet v1 g3)", "channel shuffle 116 in 2 groups @14"):
        model = CASES[case]
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        assert compiler.unscheduled_cpu_kernels(model, "x", shape, preset.target) == [], case


def _llvm_pieces(width: int, lanes: int) -> int:
    """Vector instructions LLVM splits a <width x float> operation into: whole registers, then
    one power-of-two piece per set bit of the rest (14 lanes of 16: 8 + 4 + 2)."""
    return width // lanes + bin(width % lanes).count("1")


@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("case, window_too", [
    ("depthwise 3x3 s2 96 @112 (de-interleaved by vector loads and shuffles)", True),  # 56 = 7 x 8
    ("depthwise 3x3 s1 58 @7", True),  # rounded up to one 8-lane vector
    ("depthwise 3x3 s2 144 @56 + relu6", True),  # 28 = 2 x 14 (8 + 4 + 2): rounded up to 2 x 16
    # A pool's 28 = 2 x 14 keeps its 14-lane window (pools are not rounded up)
    ("maxpool 3x3 s2 ceil 16 @56 (the ceil adds an output column and row)", False)])
def test_window_rows_are_whole_vectors_not_llvm_pieces(case, window_too):
    """Rows of 56, 28 and 7 outputs (16 lanes): epilogues are stored in widths LLVM emits as few
    instructions (28 as 16 + 12, 7 as scalar stores), never as 14- or 7-lane vectors of 3 pieces
    (the depthwise 192 @28 ran 2.3x slower so), and a 56-wide window is computed 8 lanes at a
    time, not 14. The padded-plane copies are left out: their widths follow the input row."""
    lanes = 16
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    model = CASES[case]
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(compiler.import_onnx(model, "x", shape))
    widths = []

    def on_for(loop):
        name = getattr(getattr(loop.body, "block", None), "name_hint", "")
        if loop.kind == tvm.tirx.ForKind.VECTORIZED and not name.startswith("pad_temp"):
            widths.append((name, int(loop.extent)))

    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc):
            tvm_ffi.structural_walk(f, [(tvm.tirx.For, on_for)])
    window = [(n, w) for n, w in widths if n.endswith(("_init", "_update"))]
    epilogue = [(n, w) for n, w in widths if not n.endswith(("_init", "_update"))]
    assert window, (case, widths)
    for name, w in epilogue + (window if window_too else []):
        assert _llvm_pieces(w, lanes) <= -(-w // lanes) + 1, (case, name, w)


# (channels, map, vector width, outputs computed flat (whole registers), or None: row kernel)
@pytest.mark.parametrize("c, hw, width, flat", [
    (96, 7, "avx512-16", 64),  # 49 outputs: 4 registers (rows: 7 of 8 lanes, 7 used)
    (24, 3, "avx512-16", 16),  # 9 outputs: one register (rows: 3 of 4-lane vectors)
    (40, 10, "avx512-16", 112),  # 100 outputs: 7 registers
    (144, 14, "avx512-16", None),  # 196 outputs: 13 registers, more than one tile holds
    (32, 112, "avx512-16", None),  # rows of whole registers
    (96, 7, "avx2-8", 56),  # 7 registers, no more than 7 rows of 8 lanes
    (144, 14, "avx2-8", None),  # rows longer than a register
    (96, 7, "sse-4", None)])
def test_small_map_depthwise_runs_along_the_flat_map(c, hw, width, flat):
    """A stride-1 depthwise conv whose rows are shorter than a register runs along the
    flattened map (flat_depthwise.py, rules/depthwise_flat.py): the whole map in one tile of
    whole registers, at most 8 (32 registers) or 7 (16), so that the row-end masks are
    constants; the tap loop vectorised one register wide."""
    lanes = int(width.split("-")[1])
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS[width], "num-cores": 2})
    mod = compiler.import_onnx(conv(c, c, hw, k=3, groups=c, act="relu6"), "x", (1, c, hw, hw))
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert ("edge_dw_flat_update" in func.script()) == (flat is not None)
    if flat is not None:
        sch = tvm.s_tir.Schedule(func)
        update = sch.get_sblock("edge_dw_flat_update")
        assert [int(d) for d in sch.get(update).writes[0].source.shape] == [1, c, flat]
        vector = sch.get(sch.get_loops(update)[-1])
        assert vector.kind == tvm.tirx.ForKind.VECTORIZED and int(vector.extent) == lanes


def _host_llvm_ir(executable) -> str:
    """The LLVM IR of an executable's compiled kernels (its LLVM modules; the VM's has none)."""
    return "".join(m.inspect_source("ll") for m in compiler._walk(executable.mod) if m.kind == "llvm")


# Each: a 16 x 96 pointwise tile (6 x 4 AVX-512 registers, 1.5 KB of accumulators) per pixel
# tile, the 576 @14 s2 depthwise's padded plane (1.2 KB) per channel; the padded input of the
# 3x3 64->256 @13 (64 planes of 15 x 15, 56 KB), built once in a pass of its own, stays in the
# workspace pool.
@pytest.mark.parametrize("case, workspace_calls", [
    ((16, 96, 112, 1, 1, 1), False), ((576, 576, 14, 3, 2, 576), False), ((64, 256, 13, 3, 1, 1), True)])
def test_scratch_buffers_are_allocas_not_workspace_calls(case, workspace_calls, monkeypatch):
    """A register tile's accumulator and a window's padded plane are allocated inside the
    parallel loop, once per tile or channel: as TVM's workspace allocations they cost two runtime
    calls each and kept the accumulators out of registers (stack_buffers.py). Compiled for
    AVX-512 (code generation only, so any x86 machine checks it); the 3x3 on the direct rule."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 << 30)
    cin, cout, hw, k, stride, groups = case
    target = compiler.make_target({"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2})
    mod = compiler.import_onnx(conv(cin, cout, hw, k=k, stride=stride, groups=groups),
                               "x", (1, cin, hw, hw))
    ir = _host_llvm_ir(compiler.compile_module(mod, target))
    assert ("TVMBackendAllocWorkspace" in ir) == workspace_calls
