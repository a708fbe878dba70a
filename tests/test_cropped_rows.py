"""Rows computed rounded up to whole registers and cropped when stored (legalize.py): their
stores. The numerics of such rows at every vector width are cases of test_cpu_schedules.py
(SqueezeNet's stem without padding, odd maps)."""

from __future__ import annotations

import pytest
import tvm
import tvm_ffi
from test_cpu_schedules import WIDTHS, conv

from edgecompile.backend import compiler
from edgecompile.backend.cpu_schedules.pipeline import schedule_passes
from edgecompile.backend.cpu_schedules.tags import FLAT_PAD_TAG
from edgecompile.backend.cpu_schedules.vector_tails import vector_tails

pytestmark = pytest.mark.tvm


def _scheduled(model, shape, mcpu: str):
    target = compiler.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with target:
        return tvm.transform.Sequential(schedule_passes(target))(compiler.import_onnx(model, "x", shape))


def _guarded_stores(model, shape, mcpu: str) -> list[str]:
    """Names of the non-reduction blocks that store under a guard (a block predicate)."""
    mod = _scheduled(model, shape, mcpu)
    guarded = []

    def on_realize(realize):
        name = realize.block.name_hint
        always = isinstance(realize.predicate, tvm.tirx.IntImm) and int(realize.predicate) == 1
        if not always and not name.endswith(("_init", "_update")) and not name.startswith("pad_temp"):
            guarded.append(name)

    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc):
            tvm_ffi.structural_walk(f, [(tvm.s_tir.SBlockRealize, on_realize)])
    return guarded


# SqueezeNet's stem at 224, 160 and 96 px (no padding: 111, 79, 47 outputs a row) and an odd map
@pytest.mark.parametrize("hw", [224, 160, 96, 33])
@pytest.mark.parametrize("width", WIDTHS)
def test_cropped_row_is_stored_tile_by_tile_in_whole_vectors(hw, width):
    """Each tile of a cropped row is stored from its registers. The last tile's crop (111 = 6 x 16
    + 15) is a guard on the lane, which made TVM store every tile of the row in part-register
    pieces; vector_tails.py leaves it to the one tile whose last lane is past the row: no
    vectorised loop keeps a lane guard, and every guarded store runs as whole vectors under the
    last-lane test. (A row buffer on the stack, stored after the row, had avoided the guard at
    the price of a pass: the stem 0.84x alone with tile stores, paired, one Zen 4 thread.)"""
    model = conv(3, 64, hw, k=3, stride=2, act="relu", pad=0)
    shape = (1, 3, hw, hw)
    cropped = _guarded_stores(model, shape, WIDTHS[width])
    guarded, tested = _vector_loops(_scheduled(model, shape, WIDTHS[width]))
    assert guarded == []
    assert set(cropped) <= set(tested), (cropped, tested)
    if hw == 224:  # 111 outputs: no register width divides them
        assert cropped, "the stem's row is computed rounded up and cropped"


def _vector_loops(mod) -> tuple[list[str], list[str]]:
    """After vector_tails: (blocks in a vectorised loop under a lane guard, blocks in a whole-vector
    loop that vector_tails put under its last-lane test)."""
    funcs = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    lowered = vector_tails(tvm.IRModule(funcs))
    guarded, tested = [], []

    def on_loop(loop):
        if loop.kind == tvm.tirx.ForKind.VECTORIZED and isinstance(loop.body, tvm.s_tir.SBlockRealize):
            pred = loop.body.predicate
            if not (isinstance(pred, tvm.tirx.IntImm) and int(pred) == 1):
                guarded.append(loop.body.block.name_hint)

    def on_if(branch):
        then = branch.then_case
        if isinstance(then, tvm.tirx.For) and then.kind == tvm.tirx.ForKind.VECTORIZED:
            tested.append(then.body.block.name_hint)

    for f in lowered.functions.values():
        tvm_ffi.structural_walk(f, [(tvm.tirx.For, on_loop), (tvm.tirx.IfThenElse, on_if)])
    return guarded, tested


@pytest.mark.parametrize("cin, cout, hw, flat", [
    (16, 64, 55, True),  # SqueezeNet's expand layers: 3025 positions
    (32, 128, 27, True),  # 729
    (64, 16, 55, False),  # a projection: copying its input flat costs more than the tiles save
    (64, 256, 13, False),  # 169 positions: under FLAT_ROUND_MIN_POSITIONS
    (16, 64, 56, False),  # 3136 = 196 x 16: whole registers already
])
@pytest.mark.parametrize("width", WIDTHS)
def test_expanding_pointwise_on_an_odd_map_runs_flat_and_stores_whole_vectors(cin, cout, hw, flat, width):
    """Rounded up to whole registers, the flat row kernel's last pixel tile reaches past the map
    (3025 -> 3040): its epilogue's guard depends on the lane, which made TVM scalarise every
    tile's stores (0.253 vs 0.139 ms alone). vector_tails.py leaves the guard to the last tile:
    no vectorised loop keeps a lane guard, the epilogue's vector loop sits under the test."""
    mod = _scheduled(conv(cin, cout, hw, act="relu"), (1, cin, hw, hw), WIDTHS[width])
    names = []
    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc):
            tvm_ffi.structural_walk(f, [(tvm.s_tir.SBlock, lambda b: names.append(b.name_hint))])
    assert any(n.startswith(FLAT_PAD_TAG) for n in names) == flat
    if flat:
        guarded, tested = _vector_loops(mod)
        assert guarded == []
        assert tested, "the flat conv's epilogue runs as whole vectors under its last-lane test"


def test_vector_tails_leaves_the_loops_no_rule_marked():
    """Channel vectors on a 7x7 map (49 positions, four a tile: the last tile guarded) keep
    TVM's own loop: there the whole-vector path ran 1.3x slower (MobileNeXt's 960 -> 160)."""
    mod = _scheduled(conv(960, 160, 7), (1, 960, 7, 7), WIDTHS["avx512-16"])
    guarded, tested = _vector_loops(mod)
    assert guarded and not tested


def test_a_guard_that_loosens_with_the_lane_is_left_to_tvm():
    """Only a guard that tightens as the lane grows (a + lane < n) passes for every lane when the
    last one passes; a lower bound (n <= a + lane) does not, and keeps its loop as it was."""
    from edgecompile.backend.cpu_schedules.vector_tails import _tightens_with

    lane, a = tvm.tirx.Var("lane", "int64"), tvm.tirx.Var("a", "int64")
    n = tvm.tirx.IntImm("int64", 3025)
    assert _tightens_with(a * 32 + lane < n, lane)
    assert _tightens_with(tvm.tirx.And(a + lane < n, lane <= n), lane)
    assert not _tightens_with(n <= a + lane, lane)
    assert not _tightens_with(a - lane < n, lane)
