"""The input pass of a flat-rounded pointwise conv (legalize._flat_rounded_pointwise).

The conv itself is the row kernel's flat tile (conv.py) on the flattened map rounded up to whole
registers (SqueezeNet's 55 x 55 = 3025 as 3040): every tile plain vectors, its epilogue storing
back to the NCHW planes under a guard (position < 3025) that vector_tails.py confines to the
last tile. Before it, the input copied flat with zeros past the map's end: this pass.
"""
from __future__ import annotations

from tvm import s_tir

from .common import int_extent, maybe_parallel, written_elements


def schedule_flat_pad(sch: s_tir.Schedule, pad, lanes: int, cores: int) -> None:
    """Planes in parallel; in each, whole registers up to the last one, then the last one, which
    holds the zeros (its guard is then the only one)."""
    n, c, _, q = sch.get_loops(pad)
    fused = sch.fuse(n, c)
    maybe_parallel(sch, fused, written_elements(sch, pad), cores)
    ext = int_extent(sch, q)
    body, _ = sch.loop_partition(q, factors=[ext - lanes, None])
    _, body = sch.split(body, factors=[None, lanes])
    sch.vectorize(body)
