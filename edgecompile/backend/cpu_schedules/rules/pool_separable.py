"""An unpadded max pool in two passes over the rows (separable_pool.py).

For each band of output rows of a channel: the max over the window's rows, contiguous vectors
along the input row, into rows on the stack; then the max over the window's columns from those
(stride-s loads, each a contiguous load and a shuffle, strided_loads.py), into the output rows.
Every row is whole registers plus one shorter vector. Cores take bands of output rows, as the
window rule does for pooling (common.py, "a core keeps its rows"); within a band, every channel.
Against TOPI's window on SqueezeNet's pools inside the inference (2 threads, Xeon VM): 111 -> 55
0.163 -> 0.138 ms, 55 -> 27 0.050 -> 0.039, 27 -> 13 0.023 -> 0.018.
"""
from __future__ import annotations

from tvm import s_tir

from ..tags import POOL_COLS_TAG, POOL_ROWS_TAG
from ..target_info import CpuInfo
from .common import CpuRule, int_extent, maybe_parallel
from .conv import _core_band
from .tails import whole_registers_then_rest

# Bytes of row maxima a band may keep (on the stack, stack_buffers.py; in L1).
ROWS_BUFFER_BYTES = 16 * 1024


def _vectorize_row(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Whole registers, then one shorter vector (tails.py)."""
    ext = int_extent(sch, loop)
    if ext is None or ext <= 1:
        return
    if ext > lanes and ext % lanes:
        whole_registers_then_rest(sch, loop, ext, lanes)
    elif ext > lanes:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
    else:
        sch.vectorize(loop)


def _max_ops(sch: s_tir.Schedule, block) -> int:
    """Elements a pass writes times the window taps each reads (its read region's last extent
    for the columns pass, the rows' extent for the rows pass)."""
    stmt = sch.get(block)
    out = 1
    for iv in stmt.iter_vars:
        out *= int(iv.dom.extent)
    region = stmt.reads[0].region
    return out * max(int(r.extent) for r in region[2:])


class SeparablePool(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        names = [sch.get(b).name_hint for b in blocks]
        if names[:2] != [POOL_ROWS_TAG, POOL_COLS_TAG]:
            return None
        rows, cols = blocks[:2]
        for b in blocks[2:-1]:
            sch.compute_inline(b)  # an elementwise epilogue FuseOps put behind the pool
        if len(blocks) > 2:
            sch.reverse_compute_inline(blocks[-1])
        n, c, y, x = sch.get_loops(cols)
        h_out = int_extent(sch, y)
        work = sum(_max_ops(sch, blk) for blk in (rows, cols))  # maxima taken: its parallel grain
        band = _core_band(h_out) if info.cores > 1 else None
        if band is not None:
            yo, yi = sch.split(y, factors=[None, band])
            sch.reorder(n, yo, c, yi, x)
            outer = sch.fuse(n, yo, c)
        else:
            outer, yi = sch.fuse(n, c), y
        maybe_parallel(sch, outer, work, info.cores)
        # The row maxima of the whole band first, then its columns: a columns pass right after
        # its one row was stored reads vectors that straddle that row's stores (no store
        # forwarding), and 27 -> 13 ran 1.5x slower than TOPI's window (one thread, alone).
        band_rows = h_out if band is None else band
        used = int(sch.get(rows).iter_vars[3].dom.extent)
        sch.compute_at(rows, outer if band_rows * used * 4 <= ROWS_BUFFER_BYTES else yi)
        _vectorize_row(sch, sch.get_loops(rows)[-1], info.lanes)
        _vectorize_row(sch, sch.get_loops(cols)[-1], info.lanes)
        return sch
