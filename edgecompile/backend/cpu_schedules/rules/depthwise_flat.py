"""Stride-1 depthwise convolution along the flattened map of a small map (flat_depthwise.py).

One channel per parallel iteration, as the row kernel: its input plane copied flat between zero
margins, then the whole output map as one register tile of whole vectors of p = y*W + x, every
tap one contiguous load (masked at row ends) and one FMA per vector; the epilogue (crop, bias,
activation, residual) stores the map contiguously from the registers, whole vectors and one
shorter one. A 7x7 map on AVX-512 is 4 vectors, where rows took 7 of 8 lanes each and stored
49 scalars.
"""
from __future__ import annotations

from tvm import s_tir

from ..tags import DW_FLAT_TAG, PLANE_MAP_ATTR
from ..target_info import CpuInfo
from .common import CpuRule, accumulate_locally, int_extent, maybe_parallel
from .tails import _vec_tail


class DepthwiseFlat(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        convs = [b for b in blocks if sch.get(b).name_hint == DW_FLAT_TAG]
        if len(convs) != 1:
            return None
        conv = convs[0]
        idx = blocks.index(conv)
        planes = [b for b in blocks[:idx] if sch.get(b).name_hint.startswith("dw_plane")]
        if len(planes) != 1:
            return None
        plane = planes[0]
        for b in blocks[:idx]:
            if b != plane:
                sch.compute_inline(b)  # an injective prologue FuseOps put in front
        last = accumulate_locally(sch, blocks, conv)
        w = int(sch.get(last).iter_vars[3].dom.extent)
        sch.transform_block_layout(last, lambda n, c, y, x: (n, c, y * w + x))

        lanes = info.lanes
        n, c, p, ry, rx = sch.get_loops(conv)
        work = 1
        for lp in (n, c, p, ry, rx):
            work *= int_extent(sch, lp) or 1
        # p: the map's vectors, one register tile (legalize.py checked they fit), each vector
        # an independent FMA chain.
        pu, pv = sch.split(p, factors=[None, lanes])
        sch.reorder(ry, rx, pu, pv)
        outer = sch.fuse(n, c)
        maybe_parallel(sch, outer, work, info.cores)
        sch.compute_at(plane, outer)
        sch.reverse_compute_at(last, outer)
        for lp in (ry, rx, pu):
            sch.unroll(lp)  # constant taps: each tap's column mask folds per vector
        sch.vectorize(pv)
        init = sch.decompose_reduction(conv, ry)
        _vec_tail(sch, init, lanes)
        _vec_tail(sch, last, lanes, epilogue=True)
        _copy_between_margins(sch, plane, lanes)
        return sch


def _copy_between_margins(sch: s_tir.Schedule, plane, lanes: int) -> None:
    """The flat plane ([vector, lane]) in parts, each element written once: the top margin
    (zeros), the map's whole vectors, the vector where the map ends, the bottom margin. In each
    part but the third TVM's simplifier drops the range test, so the copy is plain vector loads
    and stores. (Partitioned by vector: a partition that does not start at 0 cannot be split.)"""
    jv, jl = sch.get_loops(plane)[-2:]
    start, end = (int(e) for e in sch.get(plane).annotations[PLANE_MAP_ATTR])  # start: whole vectors
    hw = end - start
    start //= lanes
    sizes = [start, hw // lanes, 1 if hw % lanes else 0, int_extent(sch, jv) - start - -(-hw // lanes)]
    factors = [s for s in sizes if s > 0]
    sch.vectorize(jl)  # before the partition, which copies the lane loop into each part
    if len(factors) > 1:
        sch.loop_partition(jv, factors=factors[:-1] + [None])
