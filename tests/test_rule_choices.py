"""The rules' ranked choices (cpu_schedules/knobs.py), which `tune --search rules` times.

Every combination a rule offers is a schedule of its own (tile, K chunks, how cores split the
work): each must compute the same convolution, and replay from a tuning record exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from test_cpu_schedules import WIDTHS, conv

from edgecompile.backend import compiler, metaschedule, runtime
from edgecompile.backend.cpu_schedules import knobs, schedule_one, schedule_variants
from edgecompile.pipeline import ort
from edgecompile.pipeline.stages.compile import compile_onnx
from edgecompile.targets import TargetPreset

rng = np.random.default_rng(0)


def test_explore_times_every_combination_default_first():
    """A choice asked only under another (K chunks only with a tile that may chunk) is branched
    where it is asked; the first result is the all-defaults one; limit caps the count."""
    def rule():
        tile = knobs.choose("tile", [(4, 4), (2, 7), (4, 4)])  # duplicates dropped
        chunks = knobs.choose("chunks", [False, True]) if tile == (4, 4) else None
        return tile, chunks, knobs.choose("single", ["only"])

    found = knobs.explore(rule, limit=10)
    assert [r for _, r in found] == [((4, 4), False, "only"), ((4, 4), True, "only"),
                                     ((2, 7), None, "only")]
    assert found[0][0] == {"tile": (4, 4), "chunks": False}  # the build's own choices
    assert len(knobs.explore(rule, limit=2)) == 2
    assert rule() == ((4, 4), False, "only")  # outside explore: the cost model's picks
    with knobs.fixed({"tile": (2, 7)}):
        assert rule() == ((2, 7), None, "only")
    with knobs.fixed({"tile": (3, 3)}):  # not among the options (another CPU's record): default
        assert rule() == ((4, 4), False, "only")


AVX512 = {"kind": "llvm", "mcpu": WIDTHS["avx512-16"], "num-cores": 2}

# Kernels whose rules offer choices: channel-vector pointwise with K chunks (512 @14), a short-K
# window conv on a prime map (SqueezeNet's expand), the row kernel with super-blocks and a
# channel count no tile divides (58), a grouped 1x1 (ShuffleNet v1), the 10-class head.
CASES = {
    "pointwise 512->512 @14": conv(512, 512, 14, act="relu6"),
    "3x3 64->256 @13": conv(64, 256, 13, k=3, act="relu"),
    "pointwise 58->58 @28 + residual": conv(58, 58, 28, act="relu", residual=True),
    "grouped 1x1 g3 240->480 @14": conv(240, 480, 14, groups=3, act="relu"),
    "pointwise 16->96 @56": conv(16, 96, 56),
}


def _kernel(model, shape):
    target = compiler.make_target(AVX512)
    prepared = metaschedule.prepare(model, "x", shape, target)
    (task,) = [t for t in metaschedule.extract_tasks(prepared, target) if "conv" in t.name]
    return target, task


@pytest.mark.tvm
@pytest.mark.parametrize("case", CASES)
def test_every_choice_computes_the_same_convolution(case, tmp_path):
    if not compiler.can_run_here(AVX512):
        pytest.skip("this CPU cannot run AVX-512 code")
    model = CASES[case]
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    target, task = _kernel(model, shape)
    variants = schedule_variants(metaschedule._main_func(task.workload), target, 17)
    assert len(variants) >= 2, "no choice offered: nothing for tuning to time"
    x = rng.standard_normal(shape).astype(np.float32)
    want = ort.session(model).run(None, {"x": x})[0]
    scale = float(np.abs(want).max())
    preset = TargetPreset(name="test-avx512", description="", device="cpu", target=AVX512)
    for i, (choices, _) in enumerate(variants):
        # The whole build under the choices: what a record of this variant gives the kernel.
        with knobs.fixed(choices):
            lib = compile_onnx(model, "x", shape, preset, tmp_path / f"v{i}.so", records="none")
        got = runtime.load_local(lib.path, "cpu", "x").run(x)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-4 * scale + 1e-5,
                                   err_msg=str(choices))


@pytest.mark.tvm
@pytest.mark.parametrize("case", ["pointwise 512->512 @14", "pointwise 58->58 @28 + residual"])
def test_variants_are_distinct_and_replay_from_a_record(case, tmp_path):
    """Each variant is another schedule than the default (else tuning times it twice), and its
    trace, stored in a JSON database and read back, gives the very same kernel."""
    model = CASES[case]
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    target, task = _kernel(model, shape)
    func = metaschedule._main_func(task.workload)
    variants = schedule_variants(func, target, 17)
    hashes = [tvm_ffi.structural_hash(sch.mod) for _, sch in variants]
    assert len(set(hashes)) == len(hashes)
    default = schedule_one(func, target)["main"]
    assert tvm_ffi.structural_equal(variants[0][1].mod["main"].body, default.body)
    ms = metaschedule.ms_module()
    db = metaschedule.open_database(tmp_path)
    wl = db.commit_workload(task.workload)
    args = ms.arg_info.ArgInfo.from_prim_func(func)
    for _, sch in variants[1:]:
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [1e-3], target, args))
    again = metaschedule.open_database(tmp_path)
    replayed = [r.trace for r in again.get_top_k(again.commit_workload(task.workload), 100)]
    assert len(replayed) == len(variants) - 1
    for trace in replayed:
        sch = tvm.s_tir.Schedule(task.workload)
        trace.apply_to_schedule(sch, remove_postproc=False)
        assert tvm_ffi.structural_hash(sch.mod) in hashes[1:]


@pytest.mark.tvm
def test_the_row_kernel_offers_rows_of_up_to_8_vectors():
    """784 = 49 x 16 positions: one 16-lane vector a tile by default (no divisor of 49 up to 4),
    7 vectors a choice for tuning (a stem's 112-wide row is the same case)."""
    target, task = _kernel(CASES["pointwise 58->58 @28 + residual"], (1, 58, 28, 28))
    asked: list = []
    with knobs.fixed({}, asked):
        schedule_one(metaschedule._main_func(task.workload), target)
    assert ("row.vectors", ((1, 16), (7, 16))) in asked
