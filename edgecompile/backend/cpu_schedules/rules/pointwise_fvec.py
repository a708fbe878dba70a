"""Convolution on a small map, vector along output channels (see legalize.py).

Tile: `mr` map positions x `nf` vectors of b output channels in registers; per input channel, nf
contiguous weight loads and mr broadcast inputs feed mr*nf FMAs. The accumulator is kept
[position, channel] so that every register is one contiguous vector; the epilogue writes NCHW.
"""
from __future__ import annotations

from typing import NamedTuple

from tvm import s_tir

from .. import knobs
from ..tags import PW_FVEC_TAG
from ..target_info import CpuInfo
from .common import (
    CpuRule,
    accumulate_locally,
    is_plain_copy,
    maybe_parallel,
    sole_reduction,
    split_vector,
)
from .conv import _pick_mr
from .planes import schedule_pad_stage

# Bytes of one K chunk of a tile's weights that should stay in L1 (most L1D are 32-48 KB).
L1_WEIGHT_BYTES = 24 * 1024
# Bytes of accumulators (every position x one channel block) that K-chunked tiles may keep in L1.
L1_ACCUMULATOR_BYTES = 24 * 1024
# What one operand load (weight vector or broadcast) costs beside one FMA, in the tile choice.
LOAD_COST = 0.5
# Window convolutions (k x k, taps > 1) only, see _pick_tile:
# what one weight vector streamed from L2 costs, beside one FMA;
L2_WEIGHT_COST = 2.0
# weights that stay in L1 between tiles (most L1D are 32-64 KB; the broadcast input shares it);
L1_RESIDENT_BYTES = 40 * 1024
# the useful share of a tile whose positions cross a row of the map (index arithmetic, guard);
ROW_CROSSING = 0.75
# and the accumulators that hide the FMA latency (2 FMA units x 4 cycles).
MIN_ACCUMULATORS = 8
# Pointwise convs with a short K loop (SqueezeNet's 16-64 input channels) and window convs also
# weigh their epilogue: per output channel of a tile, bias / activation and the stores of its mr
# positions to an NCHW plane, once per tile (in FMAs, fitted to the tiles measured best below);
SHORT_K = 64
EPILOGUE_PER_CHANNEL = 1.5
# and the useful share of a short-K pointwise tile that leaves a guarded last tile.
GUARDED_TILE = 0.75
# Tiles, best score first, that `tune --search rules` times (knobs.py).
TILE_CHOICES = 4


def _vec_channels(sch: s_tir.Schedule, loop, b: int) -> None:
    ext = int(sch.get(loop).extent)
    if ext > b and ext % b == 0:
        _, loop = sch.split(loop, factors=[None, b])
    sch.vectorize(loop)


def _k_block(k: int, bytes_per_k: int) -> int:
    """Largest divisor of K whose weight chunk fits L1_WEIGHT_BYTES (K itself when all fits)."""
    if k * bytes_per_k <= L1_WEIGHT_BYTES:
        return k
    cap = max(1, L1_WEIGHT_BYTES // bytes_per_k)
    return max(d for d in range(1, cap + 1) if k % d == 0)


def _grouped(stmt, k_ext: int) -> bool:
    """Does each output channel read only its group's input channels?"""
    data = [r.source for r in stmt.reads if len(r.source.shape) == 4][0]
    return k_ext != int(data.shape[1])


def _split_by_positions(hw: int, f_ext: int, grouped: bool) -> bool:
    """Cores take bands of positions (not blocks of output channels) where the map is at least
    as large as the channel count and every input channel feeds every output (no groups).

    A grouped conv's output channels read only their group's inputs, which the kernel before
    wrote on the same core when both split by channels: ShuffleNet v1 g3's 480 -> 120 @14 split
    by positions made the model 8-10% slower at 2 threads. Where channels outnumber positions
    (232 -> 232 @7) each core would stream all the weights for a few positions."""
    return hw >= f_ext and not grouped


class _ConvShape(NamedTuple):
    hw: int  # output positions
    row: int  # output row length
    f: int  # output channels (a multiple of b)
    k: int  # input channels per group
    taps: int  # kh * kw
    b: int  # lanes of a channel vector
    by_positions: bool  # cores split the positions (_split_by_positions)
    grouped: bool = False  # a grouped conv (k is its input channels per group)


def _tile_weight_bytes_per_k(nf: int, conv: _ConvShape) -> int:
    """Bytes of a tile's weights (nf channel vectors x taps) per input channel."""
    return nf * conv.b * conv.taps * 4


def _may_chunk(nf: int, conv: _ConvShape, info: CpuInfo) -> bool:
    """Can a tile of nf channel vectors walk K in L1-sized chunks over all positions (the
    schedule's cache blocking)? Where its weights overflow L1 and there are channel tiles
    enough for every core."""
    return (_k_block(conv.k, _tile_weight_bytes_per_k(nf, conv)) < conv.k
            and conv.f // (nf * conv.b) >= 2 * info.cores)


def _chunked(nf: int, conv: _ConvShape, info: CpuInfo) -> bool:
    """Does it by default: where it may and the accumulators of a whole channel block fit L1."""
    return _may_chunk(nf, conv, info) and conv.hw * nf * conv.b * 4 <= L1_ACCUMULATOR_BYTES


def _weights_stay(nf: int, conv: _ConvShape, info: CpuInfo) -> bool:
    """Do a tile's weights (nf channel vectors x K x taps) stay in L1 from one tile to the next?
    All the conv's weights fit; or the tile walks K in chunks; or consecutive tiles share them
    (channels outer, positions inner: not split by positions)."""
    if conv.f * conv.taps * conv.k * 4 <= L1_RESIDENT_BYTES or _chunked(nf, conv, info):
        return True
    return not conv.by_positions and _tile_weight_bytes_per_k(nf, conv) * conv.k <= L1_RESIDENT_BYTES


def _pick_tile(conv: _ConvShape, info: CpuInfo) -> tuple[int, int]:
    """(channel vectors nf, positions mr) of the register tile: mr*nf accumulators + nf weight
    vectors + one broadcast in the register file, scored by useful FMAs per cost."""
    return _ranked_tiles(conv, info)[0]


def _ranked_tiles(conv: _ConvShape, info: CpuInfo) -> list[tuple[int, int]]:
    """Every tile _pick_tile considers, best score first."""
    hw, row, vectors = conv.hw, conv.row, conv.f // conv.b
    windowed = conv.taps > 1
    # Not grouped convs: ShuffleNet v1 g3's 120->480 @14 (K = 40 a group) in context, 5 x 4 ->
    # 3 x 7: 1.09x its time in both orders of an interleaved A/B.
    short = not windowed and not conv.grouped and conv.k <= SHORT_K
    # Leave a few registers spare: 28 accumulators + 3 operands spilled on AVX-512 (measured 95
    # vs 160 GFLOP/s on 96->576 @14x14); 16-register ISAs keep 2. Window convs: at most 24
    # accumulators (26 spilled: 64->256 3x3 @13, 2 x 13 ran 0.3-0.7x the speed of 1 x 13).
    spare = (3 if info.vregs >= 32 else 2) if windowed else max(2, info.vregs // 6)
    scored = []
    for nf_c in range(1, 9):
        if vectors % nf_c:
            continue
        budget = (info.vregs - nf_c - spare) // nf_c
        if windowed and info.vregs >= 32:
            budget = min(budget, 24 // nf_c)
        if budget < 1:
            continue
        # Positions need not divide the map: 13x13 has no divisor but 13 and 1 (AVX2: 1 position
        # per tile, 14 GFLOP/s); a guarded last tile is cheap (the guard is per position). A
        # window conv also weighs every tile within a row (a divisor of it), see ROW_CROSSING.
        mrs = {_pick_mr(hw, budget)}
        if windowed:
            mrs |= {d for d in range(2, min(budget, 16) + 1) if row % d == 0}
        elif short:
            mrs |= {d for d in range(2, min(budget, 16) + 1) if hw % d == 0}
        for mr_c in mrs:
            if windowed and mr_c == 1 < hw:
                continue  # one position: each weight vector loaded per FMA (NEON 16->64 @23: 8 x 1)
            useful = hw / -(-hw // mr_c) * nf_c
            # Useful FMAs per cycle, a cycle per FMA and LOAD_COST per operand load (nf weight
            # vectors + mr broadcasts): the most accumulators is not enough. 8 channel vectors x
            # 2 positions vs 4 x 4, both 16 accumulators, on 512->512 @14x14: 303 vs 485 GFLOP/s
            # (64->384 @14: 174 vs 345); 2 x 11 vs 4 x 5 on SqueezeNet's 16->64 3x3 @55: 0.61
            # vs 0.53 ms, though 2 x 11 has more accumulators.
            cost = nf_c * mr_c + LOAD_COST * (nf_c + mr_c)
            if windowed or short:
                # Short K: the epilogue is a large share. Alone, one thread, TVM/ONNX Runtime,
                # old tile -> new: 16->64 @55 4 x 5 1.08 -> 2 x 11 0.97 (1 x 11 0.95 measured
                # best), 32->128 @27 4 x 3 1.13 -> 2 x 9 0.88, 48->192 @13 4 x 5 (guarded) 1.03
                # -> 1 x 13 0.78, 64->256 @13 1.07 -> 0.85. 58->58 @14 kept 4 x 4 (2 x 7 1.13x).
                cost += nf_c * conv.b * EPILOGUE_PER_CHANNEL / (conv.k * conv.taps)
                if short and hw % mr_c:
                    useful *= GUARDED_TILE
                useful *= min(1.0, nf_c * mr_c / MIN_ACCUMULATORS)
            if windowed:
                # A 3x3 conv's weights are 9x a pointwise one's: a tile's nf vectors x K x 9 taps
                # overflow L1 and stream from L2 on every tile unless they stay (_weights_stay).
                # Alone, one thread, TVM/ONNX Runtime: 32->128 @27 4 x 3 1.19-1.31, 2 x 9 0.99;
                # 64->256 @13 4 x 5 1.18, 2 x 12 (crossing rows) 1.08-1.21, 1 x 13 0.84-0.94;
                # 32->128 @19 (no divisor) 4 x 5 1.37, 2 x 12 1.28, 8 x 1 2.2.
                if not _weights_stay(nf_c, conv, info):
                    cost += L2_WEIGHT_COST * nf_c
                if row % mr_c:
                    useful *= ROW_CROSSING
            scored.append((useful / cost, -(nf_c + mr_c), nf_c, mr_c))
    ranked = list(dict.fromkeys((nf, mr) for *_, nf, mr in sorted(scored, reverse=True)))
    return ranked or [(1, 1)]


class PointwiseFVec(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        convs = [b for b in blocks if sch.get(b).name_hint == PW_FVEC_TAG]
        if len(convs) != 1 or sole_reduction(sch, blocks) is None:
            return None
        conv = convs[0]
        stmt = sch.get(conv)
        wbuf = [r.source for r in stmt.reads if len(r.source.shape) == 5][0]
        b = int(wbuf.shape[4])  # weights [F/b, Ci, kh, kw, b]
        n_ext, f_ext, h, w = (int(iv.dom.extent) for iv in stmt.iter_vars[:4])
        hw = h * w
        idx = blocks.index(conv)
        pads = []
        for blk in blocks[:idx]:
            if is_plain_copy(sch, blk):
                sch.compute_inline(blk)
            else:
                pads.append(blk)
        work = 1  # multiply-adds
        for iv in stmt.iter_vars:
            work *= int(iv.dom.extent)
        # The input is read where it is, NCHW: a tile's broadcasts walk the planes at one position.
        # A channels-last copy first ([n, h, w, c], made on several cores from an Intel Xeon's
        # measurements: "every plane's first line a cross-core miss") cost more than it saved
        # on a Zen 4 once the tiles' accumulators were in registers: alone, one thread, 384->64
        # @14 0.115 -> 0.086 ms, 576->96 @14 0.247 -> 0.194; whole models 0.83-0.97 of their
        # latency at 2 threads (the commit that removed it has the figures).
        for blk in pads:
            # Padding: its own parallel pass (inlined, every broadcast would carry a bounds test).
            schedule_pad_stage(sch, blk, info.lanes, 1, info.cores)
        last = accumulate_locally(sch, blocks, conv)
        # Accumulator as [n, p, f]: one register = b consecutive channels of one position.
        sch.transform_layout(conv, ("write", 0), lambda nn, ff, yy, xx: (nn, yy * w + xx, ff))
        sch.transform_block_layout(last, lambda nn, ff, yy, xx: (nn, yy * w + xx, ff))
        sch.transform_block_layout(
            conv, lambda nn, ff, yy, xx, rc, ry, rx: (nn, yy * w + xx, ff, rc, ry, rx)
        )
        nn, p, f, *rloops = sch.get_loops(conv)
        taps = 1
        for iv in stmt.iter_vars[5:]:
            taps *= int(iv.dom.extent)
        k_ext = int(stmt.iter_vars[4].dom.extent)
        grouped = _grouped(stmt, k_ext)
        by_positions = _split_by_positions(hw, f_ext, grouped)
        if not grouped:  # a grouped conv's split follows its groups' producers
            by_positions = knobs.choose("fvec.split_by_positions", (by_positions, not by_positions))
        shape = _ConvShape(hw, w, f_ext, k_ext, taps, b, by_positions, grouped)
        nf, mr = knobs.choose("fvec.tile", _ranked_tiles(shape, info)[:TILE_CHOICES])
        po, pi = sch.split(p, factors=[None, mr])
        fo, fu, fv = sch.split(f, factors=[None, nf, b])
        chunked = _chunked(nf, shape, info)
        if _may_chunk(nf, shape, info):
            chunked = knobs.choose("fvec.k_chunks", (chunked, not chunked))
        if chunked:
            # Cache blocking: this tile's weights (nf*b channels x K) overflow L1 (512->512 @14:
            # 128 KB re-read from L2 for every 4 positions). Walk all positions per K chunk so the
            # chunk's weights stay in L1; the accumulators of the whole channel block live in L1.
            # Only where they fit it: a 14x14 map's (196 x 64 floats, 49 KB) spill to L2 and TVM's
            # workspace pool, and tile by tile over all of K was faster (alone, hot, 1 thread:
            # 512->512 @14 0.961 -> 0.909 ms, 256->512 @14 0.518 -> 0.467); 7x7 maps (12 KB) keep
            # it (320->1280 @7 0.374 vs 0.385 without, 1024->1024 @7 even).
            rc = rloops[0]
            kc = _k_block(k_ext, _tile_weight_bytes_per_k(nf, shape))
            rco, rci = sch.split(rc, factors=[None, kc])
            sch.reorder(nn, fo, rco, po, rci, *rloops[1:], pi, fu, fv)
            outer = sch.fuse(nn, fo)
            maybe_parallel(sch, outer, work, info.cores)
            sch.reverse_compute_at(last, outer)
            red_at = rco
        else:
            if shape.by_positions:
                # Each core a band of the map, all output channels (common.py, "a core keeps its
                # rows"); within it, every channel tile per position tile.
                sch.reorder(nn, po, fo, *rloops, pi, fu, fv)
                outer = sch.fuse(nn, po, fo)
            else:
                sch.reorder(nn, fo, po, *rloops, pi, fu, fv)
                outer = sch.fuse(nn, fo, po)
            maybe_parallel(sch, outer, work, info.cores)
            sch.reverse_compute_at(last, outer)
            red_at = rloops[0]
        sch.unroll(pi)
        sch.unroll(fu)
        sch.vectorize(fv)
        init = sch.decompose_reduction(conv, red_at)
        # init / epilogue: loops (p, f) under the tile; vector along f (contiguous accumulator).
        # Epilogue along the map instead: contiguous NCHW stores and gathers from the (L1/register)
        # accumulator beat contiguous loads and 16 scattered stores (96->576 @14: -10%).
        lp = sch.get_loops(last)
        outer_stmt = sch.get(outer)
        below = [i for i, lv in enumerate(lp) if sch.get(lv).same_as(outer_stmt)]
        tile_loops = lp[below[0] + 1 :] if below else lp[-2:]
        if len(tile_loops) >= 2:  # unit loops are dropped: a 1x1 map leaves only the channel loop
            pl, fl = tile_loops[-2], tile_loops[-1]
            p_ext = int(sch.get(pl).extent)
        else:
            fl, p_ext = tile_loops[-1], 1
        if p_ext > 1:
            sch.reorder(fl, pl)
            _, vl = split_vector(p_ext, info.lanes, 64)
            if vl < p_ext:
                _, pl = sch.split(pl, factors=[None, vl])
            if vl > 1:
                sch.vectorize(pl)
        else:  # a 1x1 map (classifier head): the channel axis is all there is
            _vec_channels(sch, fl, b)
        for blk in [init]:
            loops = sch.get_loops(blk)
            inner = loops[-1]
            ext = int(sch.get(inner).extent)
            if ext > b and ext % b == 0:
                _, inner = sch.split(inner, factors=[None, b])
            sch.vectorize(inner)
        return sch
