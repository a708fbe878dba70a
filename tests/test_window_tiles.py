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


def _shape(cin: int, cout: int, hw: int, lanes: int, taps: int = 9) -> _ConvShape:
    return _ConvShape(hw * hw, hw, cout, cin, taps, lanes, hw * hw >= cout)


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


# Pointwise convs with a short K loop: SqueezeNet's expand 1x1 (K = 16-64) at 224, 160 and 96 px.
SHORT_K = [(16, 64, 55), (32, 128, 27), (48, 192, 13), (64, 256, 13), (16, 64, 39), (32, 128, 19),
           (16, 64, 23), (64, 256, 5)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin,cout,hw", SHORT_K)
def test_short_k_pointwise_tile_is_whole_and_stores_long_rows(isa, cin, cout, hw):
    """With K = 16-64 a tile's epilogue (bias, activation, mr positions stored per channel)
    costs as much as its FMAs: the tile takes more positions and fewer channel vectors, and a
    divisor of the map where one fits, so that no last tile is guarded. Alone, one thread,
    TVM/ONNX Runtime: 48->192 @13 4 x 5 (guarded) 1.03 -> 1 x 13 0.78, 32->128 @27 4 x 3 1.13 ->
    2 x 9 0.88."""
    info = ISAS[isa]
    nf, mr = _pick_tile(_shape(cin, cout, hw, info.lanes, taps=1), info)
    assert (cout // info.lanes) % nf == 0
    assert nf * mr + nf + 1 < info.vregs
    if any((hw * hw) % d == 0 for d in range(7, 17)):  # 55 x 55 = 11 x 275, 27 x 27 = 9 x 81, ...
        assert (hw * hw) % mr == 0, (nf, mr)
        if isa == "avx512":  # where it was measured (16->64 @55: 4 x 5 1.08, 2 x 11 0.97)
            assert mr >= 7, (nf, mr)


def test_long_k_pointwise_tile_keeps_its_channel_vectors():
    """The epilogue term is for short K only: MobileNet v1's 512->512 @14 keeps 4 vectors x 4
    positions (1 x 14 ran 1.15x ONNX Runtime's time alone, 4 x 4 1.10x), its 1024 @7 4 x 5 (a
    guarded last tile costs little beside K = 1024: 2 x 7 1.01-1.06x of it)."""
    info = ISAS["avx512"]
    assert _pick_tile(_shape(512, 512, 14, 16, taps=1), info) == (4, 4)
    assert _pick_tile(_shape(1024, 1024, 7, 16, taps=1), info) == (4, 5)


def test_grouped_short_k_pointwise_keeps_its_tile():
    """Not for grouped convs: ShuffleNet v1 g3's 120->480 @14 (K = 40 a group, 160 channels a
    group) ran 1.09x its time in context with 3 x 7 (both orders of an interleaved A/B)."""
    info = ISAS["avx512"]
    grouped = _shape(40, 480, 14, 16, taps=1)._replace(by_positions=False, grouped=True)
    assert _pick_tile(grouped, info) == (5, 4)
