"""NCHW convolutions and sliding-window reductions (depthwise, grouped, pooling), untuned.

One register-blocked micro-kernel for every shape (NeoCPU-style broadcast-FMA), in NCHW so that no
layout transform is needed anywhere in the graph (ShuffleNet's 58/116/232 channels and its channel
shuffle, FasterNet's partial split, ReLU6 imported as max/min kernels all stay as they are):

* pointwise, stride 1: the output map is treated as one flat axis p = y*W + x; each tile holds `mr`
  output channels x `nv` vectors of p in registers; per input channel, `nv` contiguous vector loads
  and `mr` broadcast weights feed mr*nv FMAs (a GEMM micro-kernel over C_out x HW, K = C_in);
  tiles go in pixel super-blocks, every output channel of one before the next (long store runs);
* other convolutions (k x k, strided, grouped): same tile, with the vector along the output row;
* depthwise and pooling: one channel per tile (no reuse across channels), vector along the row,
  the padded input plane built per channel inside the parallel loop so that it stays in cache.
* stride s > 1: the padded input is stored deinterleaved, [.., h, w % s, w // s], so each tap of
  a row vector is a contiguous load (TVM emits a stride-2 vector load as scalar loads).

Row lengths and channel counts come from legalize.py already rounded where that pays (whole
registers, cropped on store); here the tile sizes come from the target's lanes and registers.

Bias, activation and residual blocks that FuseOps put after the convolution are computed per tile
from the register accumulators (reverse_compute_at), never as a separate pass.
"""
from __future__ import annotations

from tvm import s_tir, tirx

from .. import knobs
from ..tags import FLAT_PAD_TAG, VECTOR_TAIL_ATTR
from ..target_info import CpuInfo
from . import planes
from .common import (
    MIN_PARALLEL_WORK,
    CpuRule,
    is_plain_copy,
    is_reduction,
    largest_divisor,
    linear_coef,
    maybe_parallel,
    sole_reduction,
    split_vector,
    window_vector,
)
from .flat_rounded import schedule_flat_pad
from .tails import _stored_width, _vec_tail


def _row_tile(row: int, channels: int, info: CpuInfo) -> tuple[int, int, int]:
    """Register tile of a row-vector convolution: ``nv`` vectors of ``vl`` lanes along a row of
    ``row`` outputs, times ``mr`` output channels, leaving 4 vector registers spare."""
    # Up to 4 vectors a row tile; `tune --search rules` also times up to 8 (a row of 7 registers,
    # 112 = 7 x 16, is otherwise one vector x 16 channels: a broadcast load per FMA). In context
    # on the Xeon VM, 2 threads: SqueezeNet's stem 3->64 s2 @111 0.31 -> 0.27 ms as 7 x 2, but
    # MobileNet v1's pointwise layers on 784 = 7 x 16 or 3136 = 8 x 16 positions 5-45% slower.
    nv, vl = knobs.choose("row.vectors", [split_vector(row, info.lanes, m) for m in (4, 8)])
    regs_per_row = nv * ((vl + info.lanes - 1) // info.lanes)
    budget = (info.vregs - regs_per_row - 4) // regs_per_row
    # `tune --search rules` also times the tiles of the next smaller budgets (knobs.py).
    mrs = list(dict.fromkeys(_pick_mr(channels, max(1, budget - i)) for i in range(8)))
    return nv, vl, knobs.choose("row.channels", mrs[:ROW_TILE_CHOICES])


# Channel counts per row tile that `tune --search rules` times.
ROW_TILE_CHOICES = 3


# Input bytes one pixel super-block of a pointwise convolution may read (see _pixel_superblock).
SUPERBLOCK_INPUT_BYTES = 64 * 1024


def _pixel_superblock(blocks: int, c_in: int, tile_px: int) -> int:
    """How many pixel tiles of ``tile_px`` outputs a pointwise convolution's super-block spans.

    Tile by tile (pixels outer, channels inner) each core writes every output plane in 256 B
    pieces, C_out store streams at once; an inference's buffers are recycled and cold, and such
    writes ran 3x slower than hot (16->96 @112: 0.36 ms hot, 1.20 ms cold output, 2 threads, Xeon).
    Longer runs per plane fix that as long as the super-block's input, C_in x run (fp32), stays
    near L1: with 64 KB, cold 16->96 @112 went 1.28 -> 0.48 ms on the Xeon (a first version),
    0.58 -> 0.47 ms on a Zen 4 (this one), 24->144 @56 0.49 -> 0.16 and 0.28 -> 0.24 ms;
    projections (144->24) unchanged; 16-32 KB left runs too short, 256 KB and more spilled the
    input of the wide layers (128->128 @56). A divisor of the tiles: a partial last super-block
    predicates every tile, and that ran 3x slower on the Zen 4 (116->116 @28: 0.21 -> 0.60 ms,
    1 thread); a count with no divisor that fits keeps plain tile order."""
    return largest_divisor(blocks, SUPERBLOCK_INPUT_BYTES // (c_in * tile_px * 4))


class Conv2DNCHW(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        conv = sole_reduction(sch, blocks)
        if conv is None:
            return None
        cstmt = sch.get(conv)
        ivs = cstmt.iter_vars
        spatial = [iv for iv in ivs if iv.iter_type == tirx.IterVar.DataPar]
        reduce = [iv for iv in ivs if iv.iter_type == tirx.IterVar.CommReduce]
        if len(spatial) != 4 or len(reduce) not in (2, 3) or len(cstmt.writes) != 1:
            return None
        if len(cstmt.writes[0].source.shape) != 4:
            return None
        yv, xv = spatial[2].var, spatial[3].var
        # The data read is the one indexed by the output row; its producer may be a pad block.
        data_reads = [r for r in cstmt.reads if len(r.region) == 4 and linear_coef(r.region[2].min, yv)]
        if len(data_reads) != 1:
            return None
        data = data_reads[0]
        stride_h = linear_coef(data.region[2].min, yv)
        stride_w = linear_coef(data.region[3].min, xv)
        weight_reads = [r for r in cstmt.reads if r.source != data.source and len(r.region) == 4]
        n_ext, f_ext, h_out, w_out = (int(iv.dom.extent) for iv in spatial)
        red_ext = [int(iv.dom.extent) for iv in reduce]
        # Depthwise / pooling: no reduction over input channels (only the window).
        windowed = len(reduce) == 2 or red_ext[0] == 1
        if windowed and len(reduce) == 3 and not weight_reads:
            return None

        idx = blocks.index(conv)
        pro, epi = blocks[:idx], blocks[idx + 1 :]
        pad = flat_pad = None
        for b in pro:
            writes_data = sch.get(b).writes[0].source.same_as(data.source)
            if writes_data and sch.get(b).name_hint == FLAT_PAD_TAG:
                flat_pad = b  # a flat-rounded pointwise conv (flat_rounded.py)
                continue
            # A strided conv keeps even a zero-padding copy: it becomes the deinterleaving stage.
            if writes_data and (not is_plain_copy(sch, b) or stride_w > 1):
                pad = b
            else:
                sch.compute_inline(b)  # zero padding (a copy) or an injective prologue
        for b in epi:
            if is_reduction(sch, b):
                return None
        for b in epi[:-1]:
            sch.compute_inline(b)
        last = epi[-1] if epi else None

        in_shape = [int(s) for s in data.source.shape]
        work = n_ext * f_ext * h_out * w_out
        for e in red_ext:
            work *= e
        flat = (
            not windowed
            and pad is None
            and stride_h == 1
            and stride_w == 1
            and all(e == 1 for e in red_ext[1:])
            and in_shape[2] == h_out
            and in_shape[3] == w_out
        )
        if flat_pad is not None:
            if not flat:
                return None
            schedule_flat_pad(sch, flat_pad, info.lanes, info.cores)
            # Its crop (always its last epilogue block): guarded per lane in the last tile only.
            sch.annotate(last, VECTOR_TAIL_ATTR, 1)
        if last is None:
            last = sch.cache_write(conv, 0, "local")
        else:
            sch.set_scope(conv, 0, "local")

        lanes = info.lanes
        if flat:
            hw = h_out * w_out
            # Make the output tile a rectangle: flatten (y, x) of the accumulator and of the epilogue.
            sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, f, y * w_out + x))
            # The epilogue's own rows: a flat-rounded conv's crop stores 55 x 55 of the 3040 computed.
            w_last = int(sch.get(last).iter_vars[3].dom.extent)
            sch.transform_block_layout(last, lambda n, f, y, x: (n, f, y * w_last + x))
            sch.transform_block_layout(
                conv, lambda n, f, y, x, rc, ry, rx: (n, f, y * w_out + x, rc, ry, rx)
            )
            loops = sch.get_loops(conv)
            n, f, p = loops[:3]
            rloops = loops[3:]
            nv, vl, mr = _row_tile(hw, f_ext, info)
            fo, fi = sch.split(f, factors=[None, mr])
            po, pu, pv = sch.split(p, factors=[None, nv, vl])
            # Walk the pixels in super-blocks of `per` tiles, all output channels of one super-block
            # before the next: each core then streams into C_out output planes in runs of
            # per*nv*vl pixels (not one tile's 256 B), while the super-block's input stays near L1.
            per = _pixel_superblock(hw // (nv * vl), red_ext[0], nv * vl)  # nv*vl divides hw
            per = knobs.choose("row.superblock", (per, 1))
            pso, psi = sch.split(po, factors=[None, per])
            sch.reorder(n, pso, fo, psi, *rloops, fi, pu, pv)
            outer = sch.fuse(n, pso, fo, psi)
            maybe_parallel(sch, outer, work, info.cores)
            sch.reverse_compute_at(last, outer)
            inner_loops = [fi, pu]
        elif not windowed:
            loops = sch.get_loops(conv)
            n, f, y, x = loops[:4]
            rloops = loops[4:]
            nv, vl, mr = _row_tile(w_out, f_ext, info)
            fo, fi = sch.split(f, factors=[None, mr])
            xo, xu, xv_ = sch.split(x, factors=[None, nv, vl])
            # Rows outermost: each core's share is a band of rows, as in the kernels around it
            # (see common.py, "a core keeps its rows").
            sch.reorder(n, y, fo, xo, *rloops, fi, xu, xv_)
            outer = sch.fuse(n, y, fo)
            maybe_parallel(sch, outer, work, info.cores)
            # A row computed rounded up and cropped (SqueezeNet's stem: 111 as 7 x 16) is stored
            # tile by tile from the registers, whole vectors wherever the tile's last lane is in
            # the row and lane by lane in the one tile where it is not (vector_tails.py; without
            # that pass the crop's guard made TVM store every tile in pieces). It had been kept
            # in a row buffer on the stack and stored after the whole row, a pass that cost the
            # short-K stems most: paired, alone, one Zen 4 thread, row buffer -> tile stores,
            # SqueezeNet 1.1's 3->64 3x3 s2 0.84x, 1.0's 3->96 7x7 s2 0.90x, rounded pointwise
            # convs at 160 px (144->24 @40, 32->192 @20) 1.00x; SqueezeNet 1.1 whole 0.96-0.99x.
            if _stored_width(sch, last) < w_out:
                sch.annotate(last, VECTOR_TAIL_ATTR, 1)
            sch.reverse_compute_at(last, xo)
            inner_loops = [fi, xu]
            pv = xv_
            if pad is not None:
                planes.deinterleave(sch, pad, stride_w)
                planes.schedule_pad_stage(sch, pad, lanes, stride_w, info.cores)
        else:
            loops = sch.get_loops(conv)
            n, f, y, x = loops[:4]
            rloops = loops[4:]
            nv, vl = window_vector(w_out, lanes)
            xo, xu, xv_ = sch.split(x, factors=[None, nv, vl])
            rows = planes.plane_band(sch, pad, h_out, stride_h, red_ext[-2]) if pad is not None else h_out
            # Pooling: cores take bands of rows, like the stem or conv before it and the conv after
            # it (common.py, "a core keeps its rows"): SqueezeNet 0.96 of its latency at 2 threads,
            # ShuffleNet v1 g3 0.97-0.98. Depthwise keeps planes per core: split by rows as well,
            # the halo rows each band copies cost what locality gave back (MobileNet v1 / v2
            # 1.02-1.04).
            by_rows = (not weight_reads and info.cores > 1 and work >= MIN_PARALLEL_WORK
                       and _core_band(h_out) is not None)
            if by_rows:
                rows = min(rows, _core_band(h_out))
            ys = sch.split(y, factors=[None, rows]) if rows < h_out else [y]  # [bands, rows] or [y]
            if by_rows:
                sch.reorder(n, ys[0], f, ys[1], xo, *rloops, xu, xv_)
                outer = sch.fuse(n, ys[0], f)
                ys = [ys[1]]
            else:
                sch.reorder(n, f, *ys, xo, *rloops, xu, xv_)
                outer = sch.fuse(n, f)
            maybe_parallel(sch, outer, work, info.cores)
            if pad is not None:
                # The padded plane of this channel (a band of its rows where the whole plane
                # would spill L1), built inside the parallel loop.
                planes.deinterleave(sch, pad, stride_w)
                plane_rows = (rows - 1) * stride_h + red_ext[-2]
                planes.align_phase_rows(sch, pad, stride_w, lanes, plane_rows)
                parts = planes.row_parts(sch, pad, stride_w, lanes)
                if parts is not None:
                    # Iterate the plane as [.., phase, column of the phase]: a loop of its own
                    # per phase column (a split loop cannot be partitioned, see planes.copy_row_parts).
                    sch.transform_block_layout(pad, lambda n, c, h, w: (n, c, h, w % stride_w, w // stride_w))
                sch.compute_at(pad, ys[0] if len(ys) > 1 else outer)
                if parts is not None:
                    planes.copy_row_parts(sch, pad, parts, lanes)
                else:
                    planes.vector_deinterleave(sch, pad, stride_w, lanes, plane_rows=plane_rows)
                # Stride 1: no decompose_padding, a zero fill + plain copy of every plane was not
                # faster than the conditional copy (144ch@56: 0.19 vs 0.17 ms; 960@7, 192@28 no
                # better either), and inlining the pad into the window loads was 1.5-2x slower.
                # Strided: the fill + vector copy is what makes the de-interleaving cheap.
            sch.reverse_compute_at(last, xo)
            inner_loops = [xu]
            pv = xv_

        # Annotate before decompose_reduction: vectorize refuses a reduction body without its init.
        for lp in inner_loops:
            sch.unroll(lp)
        sch.vectorize(pv)
        init = sch.decompose_reduction(conv, rloops[0])
        # The accumulator zeroing and the epilogue: one vector store per register.
        _vec_tail(sch, init, lanes)
        _vec_tail(sch, last, lanes, epilogue=True)
        return sch


def _core_band(h_out: int) -> int | None:
    """Output rows per band when cores split a window kernel by rows: the largest divisor of
    the rows up to half of them (at least two bands); None under 4 rows a band, whose input
    halo would outweigh them (a 7-row map)."""
    d = largest_divisor(h_out, -(-h_out // 2))
    return d if d >= 4 else None


def _pick_mr(channels: int, max_mr: int) -> int:
    """Output channels per register tile: the most useful rows per tile, a divisor not required.

    58 channels (ShuffleNet v2) have no divisor between 2 and 29; 2 rows left the FMA units idle.
    A non-dividing tile adds a uniform (per-row, not per-lane) guard on the last tile only.
    """
    # More than 16 rows spilled (26 rows: 100 vs 170 GFLOP/s on 64->256 3x3 @13x13).
    max_mr = max(1, min(max_mr, channels, 16))
    # A divisor when one is at least half the budget: the guarded tail tile costs (1000 channels:
    # 16 rows + guard 3.2 ms, 10 rows 1.2 ms); below that the guard is the lesser evil (58: 2 rows).
    div = largest_divisor(channels, max_mr)
    if 2 * div >= max_mr:
        return div
    best, best_score = 1, 0.0
    for m in range(1, max_mr + 1):
        tiles = -(-channels // m)
        score = channels / tiles
        if score > best_score + 1e-9:
            best, best_score = m, score
    return best
