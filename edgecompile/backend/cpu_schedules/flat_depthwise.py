"""Stride-1 depthwise convolution along the flattened map, as a TE compute (legalize.py picks it,
rules/depthwise_flat.py schedules it).

Row vectors waste lanes on maps narrower than a register: on AVX-512 a 7x7 map is 7 rows of 8
lanes (7 used) stored as 49 scalars, a 3x3 map 3 rows of 4 lanes. Along the flattened map
p = y*W + x the same 7x7 map is 4 registers, stored as 3 whole ones and a scalar.

Per channel the input plane is copied, flat, between zero margins (the padding rows above and
below): tap (ry, rx) of output p then reads plane[p + ry*W + rx + shift], one contiguous load
for any vector of p, across row ends. Vertically out-of-map taps read the margins; horizontally
out-of-map ones (column x + rx - left outside [0, W)) would read the next or previous row, and
are masked: a select, which LLVM makes an AND with a constant mask. The whole map is one
register tile (at most 8 accumulators with 32 registers, 7 with 16), so every vector's columns,
and its masks, are constants. (Larger maps were tried in tiles that each start on column 0 --
14x14 at 16 lanes as 2 tiles of 7 registers: 576 @14 0.86-0.92x alone, but no gain or a few per
cent slower in whole models, the accumulators going through a stack buffer for the epilogue;
with one tile of 13 registers at a time and the masks computed per vector, 1.6x slower.) The
plane's data starts on a vector boundary so that its copy is whole vector loads and stores.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te

from .tags import DW_FLAT_TAG, PLANE_MAP_ATTR


@dataclass(frozen=True)
class FlatPlan:
    h: int  # input rows
    w: int  # input (= output) columns
    h_out: int
    top: int  # padding rows above
    left: int  # padding columns on the left
    kh: int
    kw: int
    lanes: int
    vectors: int  # registers of the whole output map: the tile's accumulators


def most_accumulators(vregs: int) -> int:
    """Accumulators of one tile: enough independent FMA chains to hide the FMA latency, with
    registers left for the taps' weights (AVX2 and SSE have 16 registers, AVX-512 and NEON 32)."""
    return 8 if vregs >= 32 else 7


def flat_plan(h: int, w: int, h_out: int, top: int, left: int, kh: int, kw: int, lanes: int,
              vregs: int) -> FlatPlan | None:
    """The flat map of h_out x w outputs as one register tile, or None where it needs more
    registers than the tile may hold."""
    vectors = -(-h_out * w // lanes)
    if vectors > most_accumulators(vregs):
        return None
    return FlatPlan(h, w, h_out, top, left, kh, kw, lanes, vectors)


def flat_depthwise(data: te.Tensor, weight: te.Tensor, plan: FlatPlan) -> te.Tensor:
    """out[n, c, y, x] for a depthwise weight [C, 1, kh, kw]; see the module docstring."""
    n, c = (int(d) for d in data.shape[:2])
    w, lanes, width = plan.w, plan.lanes, plan.vectors * plan.lanes
    first = plan.top * w + plan.left  # where input element 0 sits, with a margin of the padding
    start = -(-first // lanes) * lanes  # ... moved onto a vector boundary
    shift = start - first
    length = max(plan.vectors * lanes + (plan.kh - 1) * w + plan.kw - 1 + shift, start + plan.h * w)
    plane_vectors = -(-length // lanes)  # the plane as [vector, lane]: its copy is partitioned by vector
    dtype = data.dtype
    zero = tvm.tirx.const(0, dtype)

    def copy(nn, cc, jv, jl):
        j = jv * lanes + jl
        inside = tvm.tirx.all(j >= start, j < start + plan.h * w)
        return tvm.tirx.if_then_else(inside, data[nn, cc, (j - start) // w, (j - start) % w], zero)

    # Where the map lies in the plane, for the schedule's partition of the copy.
    plane = te.compute((n, c, plane_vectors, lanes), copy, name="dw_plane",
                       attrs={PLANE_MAP_ATTR: [start, start + plan.h * w]})
    ry = te.reduce_axis((0, plan.kh), name="ry")
    rx = te.reduce_axis((0, plan.kw), name="rx")

    def tap(nn, cc, p):
        col = p % w + rx - plan.left
        j = p + ry * w + rx + shift
        return tvm.tirx.Select(tvm.tirx.all(col >= 0, col < w), plane[nn, cc, j // lanes, j % lanes], zero)

    flat = te.compute(
        (n, c, width),
        lambda nn, cc, p: te.sum(tap(nn, cc, p) * weight[cc, 0, ry, rx], axis=[ry, rx]),
        name=DW_FLAT_TAG,
    )

    return te.compute((n, c, plan.h_out, w), lambda nn, cc, y, x: flat[nn, cc, y * w + x], name="dw_crop")
