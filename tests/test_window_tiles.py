"""The register tile of k x k convolutions on channel vectors (rules/pointwise_fvec.py,
_pick_tile): its choice on each vector width. The numerics of the awkward choices (tiles that
cross rows, a guarded last tile, a prime row) are cases of test_cpu_schedules.py."""

from __future__ import annotations

import pytest

from edgecompile.backend.cpu_schedules.rules.pointwise_fvec import _ConvShape, _pick_tile, _weights_stay
from edgecompile.backend.cpu_schedules.target_info import CpuInfo

ISAS = {"avx512": CpuInfo(16, 32, 2), "avx2": CpuInfo(8, 16, 2), "neon": CpuInfo(4, 32, 4)}
# SqueezeNet's expand 3x3 convs at 224, 160 and 96 px, FasterNet's last PConv, and other rows.
SHAPES = [(16, 64, 55), (32, 128, 27), (48, 192, 13), (64, 256, 13), (32, 128, 19), (16, 64, 23),
          (48, 192, 9), (64, 256, 5), (80, 80, 7), (128, 128, 1), (32, 64, 2)]


def _shape(cin: int, cout: int, hw: int, lanes: int) -> _ConvShape:
    return _ConvShape(hw * hw, hw, cout, cin, 9, lanes, hw * hw >= cout)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin,cout,hw", SHAPES)
def test_window_tile_fits_the_registers_and_reuses_every_load(isa, cin, cout, hw):
    info = ISAS[isa]
    nf, mr = _pick_tile(_shape(cin, cout, hw, info.lanes), info)
    assert (cout // info.lanes) % nf == 0
    assert nf * mr + nf + 1 < info.vregs  # accumulators, weight vectors, a broadcast, one spare
    if info.vregs >= 32:
        assert nf * mr <= 24  # 26 spilled on AVX-512
    if hw > 1:
        assert mr > 1  # one position per tile loads a weight vector per FMA


def test_window_tile_is_a_row_where_its_weights_stay_in_l1():
    """64->256 3x3 @13 on AVX-512: one channel vector's weights (36 KB) stay in L1 while the
    tile walks the rows, so a whole row per tile (1 x 13) wins over 4 vectors x 5 positions
    (the choice before: 1.18-1.24x ONNX Runtime's time alone, 1 x 13 0.84-0.96x)."""
    info = ISAS["avx512"]
    conv_ = _shape(64, 256, 13, 16)
    assert _weights_stay(1, conv_, info) and not _weights_stay(4, conv_, info)
    assert _pick_tile(conv_, info) == (1, 13)
    # 27 = 3 x 9, split by positions (weights stream whatever the tile): fewer vectors, a
    # longer row piece (2 x 9: 0.99x ONNX Runtime; 4 x 3 before: 1.19-1.31x).
    assert _pick_tile(_shape(32, 128, 27, 16), info) == (2, 9)
    # A prime row (19) has no divisor to keep tiles in it: a guarded tile that crosses rows.
    nf, mr = _pick_tile(_shape(32, 128, 19, 16), info)
    assert 19 % mr and nf * mr >= 16
