"""The strided-load pass (cpu_schedules/strided_loads.py), on a hand-written kernel and on the
de-interleaving copy our rules give a stride-2 depthwise convolution.

A vector load of stride s must come out as one contiguous load and a shuffle, and compute the
same values; TVM's own pipeline (the control) leaves the strided load, which its LLVM code
generator emits lane by lane.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from test_cpu_schedules import conv
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.ir.prim.expr import Ramp, Shuffle
from tvm.script import tirx as T
from tvm.sym import Analyzer

from edgecompile.backend import compiler
from edgecompile.backend.cpu_schedules import TIR_PIPELINE
from edgecompile.backend.cpu_schedules.pipeline import schedule_passes
from edgecompile.backend.cpu_schedules.rules import planes

pytestmark = pytest.mark.tvm

TARGET = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


def _strided(lanes: int, stride: int, offset: int):
    """b[p, j] = a[stride * j + p + offset], vectorised along j: a stride-s ramp per phase p."""
    @T.prim_func(s_tir=True)
    def strided(a: T.Buffer((128,), "float32"), b: T.Buffer((stride, lanes), "float32")):
        for p, j in T.grid(stride, lanes):
            with T.sblock("copy"):
                vp, vj = T.axis.remap("SS", [p, j])
                b[vp, vj] = a[vj * stride + vp + offset]

    sch = tvm.s_tir.Schedule(strided)
    sch.vectorize(sch.get_loops(sch.get_sblock("copy"))[-1])
    return sch.mod


def _lowered(mod, tir_pipeline: str, target_dict=TARGET):
    target = compiler.make_target(target_dict)
    # Public functions, as the build makes them (MakePackedAPI lowers only those).
    mod = tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in mod.functions.items()})
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    lower, _, _ = tvm.tirx.get_tir_pipeline(tir_pipeline)
    return lower(mod)


def _loads(mod) -> tuple[int, int]:
    """(strided vector loads, shuffles) in a lowered module."""
    found = {"strided": 0, "shuffles": 0}

    def on_load(load):
        idx = load.indices[-1]
        if isinstance(idx, Ramp) and int(idx.stride) != 1:
            found["strided"] += 1

    def on_shuffle(_):
        found["shuffles"] += 1

    for func in mod.functions.values():
        tvm_ffi.structural_walk(func, [(TensorLoad, on_load), (Shuffle, on_shuffle)])
    return found["strided"], found["shuffles"]


@pytest.mark.parametrize("offset", [0, 1, 31])
def test_strided_load_becomes_a_shuffle_with_the_same_values(offset):
    mod = _strided(16, 2, offset)
    assert _loads(_lowered(mod, "default"))[0] >= 1  # the control: TVM keeps the stride-2 load
    strided, shuffles = _loads(_lowered(mod, TIR_PIPELINE))
    assert strided == 0 and shuffles == 1  # in the loop over phase rows

    lib = tvm.compile(mod, target=compiler.make_target(TARGET), tir_pipeline=TIR_PIPELINE)
    a = np.arange(128, dtype=np.float32)
    b = tvm.runtime.tensor(np.zeros((2, 16), np.float32))
    lib(tvm.runtime.tensor(a), b)
    want = np.stack([a[offset + p:offset + p + 32:2] for p in range(2)])
    np.testing.assert_array_equal(b.numpy(), want)


@pytest.mark.parametrize("lanes, stride", [(16, 2), (7, 2), (11, 2), (8, 3), (5, 4), (2, 2)])
def test_any_lane_count_and_stride_keeps_the_values_and_reads_only_the_span(lanes, stride):
    """Odd lane counts (a row's rest: 7 of 55) and strides up to 4, as whole-register loads whose
    last one overlaps the one before. The last phase's span ends at the buffer's last element:
    a load past its span would read outside the buffer, which a run need not show, so every
    load's elements are checked against its phase's span [offset + p, offset + p + s(lanes-1)]."""
    offset = 128 - stride * (lanes - 1) - stride  # phase stride-1 reads element 127
    mod = _strided(lanes, stride, offset)
    lowered = _lowered(mod, TIR_PIPELINE)
    assert _loads(lowered) == (0, 1)
    ramps = []
    for func in lowered.functions.values():
        tvm_ffi.structural_walk(func, [(TensorLoad, lambda ld: ramps.append(ld.indices[-1])
                                        if isinstance(ld.indices[-1], Ramp) else None)])
    assert ramps
    for ramp in ramps:
        n = int(ramp.lanes)
        assert n & (n - 1) == 0  # whole registers, never LLVM's odd-width pieces
        phase_vars = []
        tvm_ffi.structural_walk(ramp.base, [(tvm.tirx.Var, phase_vars.append)])
        for p in range(stride):
            analyzer = Analyzer()
            for v in phase_vars:
                analyzer.bind(v, p)
            first = int(analyzer.simplify(ramp.base))
            assert offset + p <= first and first + n - 1 <= offset + p + stride * (lanes - 1)

    lib = tvm.compile(mod, target=compiler.make_target(TARGET), tir_pipeline=TIR_PIPELINE)
    a = np.arange(128, dtype=np.float32)
    b = tvm.runtime.tensor(np.zeros((stride, lanes), np.float32))
    lib(tvm.runtime.tensor(a), b)
    want = np.stack([a[offset + p:offset + p + stride * lanes:stride] for p in range(stride)])
    np.testing.assert_array_equal(b.numpy(), want)


@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("mcpu", ["x86-64", "haswell", "skylake-avx512"])  # 4, 8, 16 lanes
@pytest.mark.parametrize("width, vector_copy", [(56, True), (112, True), (15, False)])
def test_stride2_depthwise_copies_its_plane_with_shuffles(width, vector_copy, mcpu):
    """The rules de-interleave a stride-2 input by vector loads (then shuffles) where the input
    row divides by the stride; an odd row keeps the scalar copy, and the pass leaves it be.
    (Lowered only, never run: any vector width can be checked on any CPU. A rule that fails
    declines silently, and the kernel still runs, as Fallback's slow loops: this catches it.)"""
    model = conv(24, 24, width, k=3, stride=2, groups=24, act="relu6")
    mod = compiler.import_onnx(model, "x", (1, 24, width, width))
    target_dict = {"kind": "llvm", "mcpu": mcpu, "num-cores": 2}
    target = compiler.make_target(target_dict)
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    kernels = tvm.IRModule({gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)})
    strided, _ = _loads(_lowered(kernels, "default", target_dict))
    assert (strided > 0) == vector_copy
    strided, shuffles = _loads(_lowered(kernels, TIR_PIPELINE, target_dict))
    assert strided == 0
    assert (shuffles > 0) == vector_copy


def _allocations(mod) -> dict[str, int]:
    """Name -> flat extent of every buffer a lowered module allocates."""
    found = {}

    def on_alloc(node):
        found[node.buffer.name] = int(np.prod([int(d) for d in node.buffer.shape]))

    for func in mod.functions.values():
        tvm_ffi.structural_walk(func, [(tirx.AllocBuffer, on_alloc)])
    return found


# (mcpu, lanes) x map: a padded row of 114 / 58 / 30 columns, rounded up where the rows are computed
# in whole vectors, then split in two phases
@pytest.mark.usefixtures("rules_for_depthwise_3x3")
@pytest.mark.parametrize("mcpu, lanes", [("x86-64", 4), ("haswell", 8), ("skylake-avx512", 16)])
@pytest.mark.parametrize("hw", [112, 56, 28])
def test_stride2_plane_rows_start_on_whole_vectors(mcpu, lanes, hw, monkeypatch):
    """Each phase row of a stride-2 depthwise's de-interleaved plane is padded to whole vectors
    (planes.align_phase_rows: 57 floats become 64 at 8 or 16 lanes, 60 at 4), so the copy's
    vector stores and the window's loads start on a vector: the plane grows, and its size
    becomes a whole number of two-phase rows of whole vectors. Not where that takes the plane
    past PLANE_BAND_BYTES: 56 px at 16 lanes (rows of 33 -> 48, 15 -> 22 KB). The numerics at
    every width are test_cpu_schedules.py's stride-2 cases."""
    model = conv(24, 24, hw, k=3, stride=2, groups=24, act="relu6")
    target_dict = {"kind": "llvm", "mcpu": mcpu, "num-cores": 2}
    target = compiler.make_target(target_dict)

    def plane_floats() -> int:
        with target:
            mod = tvm.transform.Sequential(schedule_passes(target))(
                compiler.import_onnx(model, "x", (1, 24, hw, hw)))
        kernels = tvm.IRModule({gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)})
        return _allocations(_lowered(kernels, TIR_PIPELINE, target_dict))["pad_temp"]

    aligned = plane_floats()
    monkeypatch.setattr(planes, "align_phase_rows", lambda *_: None)
    packed = plane_floats()
    assert packed % (2 * lanes) != 0
    if (hw, lanes) == (56, 16):
        assert aligned == packed and 4 * aligned * 48 / 33 > planes.PLANE_BAND_BYTES
        return
    assert aligned % (2 * lanes) == 0 and packed < aligned < 2 * packed, (aligned, packed)
    assert 4 * aligned <= planes.PLANE_BAND_BYTES
