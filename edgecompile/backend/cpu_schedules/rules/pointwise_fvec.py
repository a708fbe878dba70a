"""Convolution on a small map, vector along output channels (see legalize.py).

Tile: `mr` map positions x `nf` vectors of b output channels in registers; per input channel, nf
contiguous weight loads and mr broadcast inputs feed mr*nf FMAs. The accumulator is kept
[position, channel] so that every register is one contiguous vector; the epilogue writes NCHW.
"""
from __future__ import annotations

from tvm import s_tir

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
from .conv import _pick_mr, _schedule_pad_stage

# Bytes of one K chunk of a tile's weights that should stay in L1 (most L1D are 32-48 KB).
L1_WEIGHT_BYTES = 24 * 1024
# Bytes of accumulators (every position x one channel block) that K-chunked tiles may keep in L1.
L1_ACCUMULATOR_BYTES = 24 * 1024
# What one operand load (weight vector or broadcast) costs beside one FMA, in the tile choice.
LOAD_COST = 0.5


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


def _split_by_positions(stmt, hw: int, f_ext: int, k_ext: int) -> bool:
    """Cores take bands of positions (not blocks of output channels) where the map is at least
    as large as the channel count and every input channel feeds every output (no groups).

    A grouped conv's output channels read only their group's inputs, which the kernel before
    wrote on the same core when both split by channels: ShuffleNet v1 g3's 480 -> 120 @14 split
    by positions made the model 8-10% slower at 2 threads. Where channels outnumber positions
    (232 -> 232 @7) each core would stream all the weights for a few positions."""
    data = [r.source for r in stmt.reads if len(r.source.shape) == 4][0]
    grouped = k_ext != int(data.shape[1])
    return hw >= f_ext and not grouped


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
            _schedule_pad_stage(sch, blk, info.lanes, 1, info.cores)
        last = accumulate_locally(sch, blocks, conv)
        # Accumulator as [n, p, f]: one register = b consecutive channels of one position.
        sch.transform_layout(conv, ("write", 0), lambda nn, ff, yy, xx: (nn, yy * w + xx, ff))
        sch.transform_block_layout(last, lambda nn, ff, yy, xx: (nn, yy * w + xx, ff))
        sch.transform_block_layout(
            conv, lambda nn, ff, yy, xx, rc, ry, rx: (nn, yy * w + xx, ff, rc, ry, rx)
        )
        nn, p, f, *rloops = sch.get_loops(conv)
        # Pick (positions, channel vectors) with the most accumulators that fit the register file:
        # mr*nf accumulators + nf weight vectors + one broadcast.
        # Leave a few registers spare: 28 accumulators + 3 operands spilled on AVX-512 (measured 95
        # vs 160 GFLOP/s on 96->576 @14x14); 16-register ISAs keep 2.
        spare = max(2, info.vregs // 6)
        best = (0.0, 0, 1, 1)
        for nf_c in range(1, 9):
            if (f_ext // b) % nf_c:
                continue
            budget = (info.vregs - nf_c - spare) // nf_c
            if budget < 1:
                continue
            # Positions need not divide the map: 13x13 has no divisor but 13 and 1 (AVX2: 1 position
            # per tile, 14 GFLOP/s); a guarded last tile is cheap (the guard is per position).
            mr_c = _pick_mr(hw, budget)
            useful = hw / -(-hw // mr_c) * nf_c
            # Useful FMAs per cycle, a cycle per FMA and LOAD_COST per operand load (nf weight
            # vectors + mr broadcasts): the most accumulators is not enough. 8 channel vectors x
            # 2 positions vs 4 x 4, both 16 accumulators, on 512->512 @14x14: 303 vs 485 GFLOP/s
            # (64->384 @14: 174 vs 345); 2 x 11 vs 4 x 5 on SqueezeNet's 16->64 3x3 @55: 0.61
            # vs 0.53 ms, though 2 x 11 has more accumulators.
            score = useful / (nf_c * mr_c + LOAD_COST * (nf_c + mr_c))
            best = max(best, (score, -(nf_c + mr_c), nf_c, mr_c))
        _, _, nf, mr = best
        po, pi = sch.split(p, factors=[None, mr])
        fo, fu, fv = sch.split(f, factors=[None, nf, b])
        taps = 1
        for iv in stmt.iter_vars[5:]:
            taps *= int(iv.dom.extent)
        k_ext = int(stmt.iter_vars[4].dom.extent)
        n_ftiles = f_ext // (nf * b)
        kc = _k_block(k_ext, nf * b * taps * 4)
        acc_bytes = hw * nf * b * 4
        if kc < k_ext and n_ftiles >= 2 * info.cores and acc_bytes <= L1_ACCUMULATOR_BYTES:
            # Cache blocking: this tile's weights (nf*b channels x K) overflow L1 (512->512 @14:
            # 128 KB re-read from L2 for every 4 positions). Walk all positions per K chunk so the
            # chunk's weights stay in L1; the accumulators of the whole channel block live in L1.
            # Only where they fit it: a 14x14 map's (196 x 64 floats, 49 KB) spill to L2 and TVM's
            # workspace pool, and tile by tile over all of K was faster (alone, hot, 1 thread:
            # 512->512 @14 0.961 -> 0.909 ms, 256->512 @14 0.518 -> 0.467); 7x7 maps (12 KB) keep
            # it (320->1280 @7 0.374 vs 0.385 without, 1024->1024 @7 even).
            rc = rloops[0]
            rco, rci = sch.split(rc, factors=[None, kc])
            sch.reorder(nn, fo, rco, po, rci, *rloops[1:], pi, fu, fv)
            outer = sch.fuse(nn, fo)
            maybe_parallel(sch, outer, work, info.cores)
            sch.reverse_compute_at(last, outer)
            red_at = rco
        else:
            if _split_by_positions(stmt, hw, f_ext, k_ext):
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
