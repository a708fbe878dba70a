"""Stores and tails of a register tile's rows: whole registers where LLVM would split a vector
into power-of-two pieces (a <14 x float> is 8 + 4 + 2 loads, FMAs and stores), shared by the
window and flat-depthwise rules."""
from __future__ import annotations

from tvm import s_tir

from .common import int_extent, split_vector, vector_pieces


def _vec_tail(sch: s_tir.Schedule, block, lanes: int, epilogue: bool = False) -> None:
    loops = sch.get_loops(block)
    # Only the loops below the tile loop belong to this block's tile (extent-known, small).
    inner = loops[-1]
    ext = int_extent(sch, inner)
    if ext is None or ext <= 1:
        return
    if epilogue and ext > lanes and ext % lanes and _owns(sch, inner, block):
        # A row no register width divides (56, 28, 49): whole registers, then one shorter vector
        # (56 = 3 x 16 + 8), not 14-wide vectors that LLVM splits into 8 + 4 + 2 pieces. The
        # depthwise epilogue of 192 @28 took longer than its window: 0.097 -> 0.042 ms.
        whole_registers_then_rest(sch, inner, ext, lanes)
        return
    if epilogue and 4 < ext < lanes and vector_pieces(ext) > 1 and _owns(sch, inner, block):
        # A row shorter than a register (7, 14): scalar stores, unrolled, of lanes extracted from
        # the accumulator's register beat a <7 x float> vector, which LLVM splits into 4 + 2 + 1
        # pieces: 960 @7 depthwise 0.059 -> 0.034 ms. (A predicated split with TVM's
        # tirx.enable_buffer_level_predication comes out as these same scalar stores on x86.)
        sch.unroll(inner)
        return
    # Never wider than one register unless a whole multiple: LLVM legalises <39 x float> badly.
    _, vl = split_vector(ext, lanes, 64)
    if vl < ext:
        _, inner = sch.split(inner, factors=[None, vl])
    if vl > 1:
        sch.vectorize(inner)


def whole_registers_then_rest(sch: s_tir.Schedule, loop, ext: int, lanes: int) -> None:
    """Vectorise ``loop`` (extent ``ext`` > ``lanes``, not a multiple) as whole registers, then
    one shorter vector: 111 = 6 x 16 + 15, not the divisor pieces LLVM splits 37 lanes into."""
    body, rest = sch.loop_partition(loop, factors=[ext - ext % lanes, None])
    _, body = sch.split(body, factors=[None, lanes])
    sch.vectorize(body)
    sch.vectorize(rest)


def _stored_width(sch: s_tir.Schedule, block) -> int:
    return int(sch.get(block).writes[0].source.shape[-1])


def _owns(sch: s_tir.Schedule, loop, block) -> bool:
    """Is ``block`` all that ``loop`` holds? (A 1-wide row tile leaves the epilogue no loop of
    its own: its innermost loop is the tile loop, and partitioning that crashes TVM.)"""
    children = sch.get_child_blocks(loop)
    return len(children) == 1 and sch.get(children[0]).same_as(sch.get(block))
