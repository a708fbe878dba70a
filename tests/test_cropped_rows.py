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

pytestmark = pytest.mark.tvm


def _guarded_stores(model, shape, mcpu: str) -> list[str]:
    """Names of the non-reduction blocks that store under a guard (a block predicate)."""
    target = compiler.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with target:
        mod = tvm.transform.Sequential(schedule_passes(target))(compiler.import_onnx(model, "x", shape))
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
def test_cropped_row_is_stored_after_the_row_without_a_lane_guard(hw, width):
    """Stored tile by tile, the last tile's crop (111 = 6 x 16 + 15) is a guard on the lane, and
    LLVM stores every tile of the row in part-register pieces (SqueezeNet's stem in context,
    one thread: 0.89 -> 0.63 ms stored after the row). After the row, the store loop is split
    into whole registers and one shorter piece, neither guarded."""
    model = conv(3, 64, hw, k=3, stride=2, act="relu", pad=0)
    assert _guarded_stores(model, (1, 3, hw, hw), WIDTHS[width]) == []
