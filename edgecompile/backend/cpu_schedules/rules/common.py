"""Small helpers shared by the rules."""
from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.sym import detect_linear_equation
from tvm.target import Target

from ..target_info import CpuInfo, cpu_info

log = logging.getLogger("cpu_schedules")


def child_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def sole_reduction(sch: s_tir.Schedule, blocks: list):
    """The kernel's one reduction block, or None when it has none or several (the rules for
    convolutions and dense layers take kernels with exactly one)."""
    reds = [b for b in blocks if is_reduction(sch, b)]
    return reds[0] if len(reds) == 1 else None


def type_is(obj, name: str) -> bool:
    """Check a TVM node's type by name: TVM 0.27 exposes some node classes only as factory functions
    (tirx.BufferLoad) and moved others between modules (IntImm), so isinstance is brittle."""
    return type(obj).__name__ == name


def linear_coef(expr, var) -> int | None:
    """The constant c of ``expr`` = c * var + (terms free of var), else None."""
    res = detect_linear_equation(expr, [var])
    if len(res) != 2 or not type_is(res[0], "IntImm"):
        return None
    return int(res[0])


def written_elements(sch: s_tir.Schedule, block) -> int:
    """Elements of the buffer ``block`` writes (a pad stage's copy: its parallel grain)."""
    n = 1
    for d in sch.get(block).writes[0].source.shape:
        n *= int(d)
    return n


def int_extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if type_is(ext, "IntImm") else None


def is_plain_copy(sch: s_tir.Schedule, block) -> bool:
    """A pad block whose padding is zero is a copy: inline it (no extra pass over the data)."""
    body = sch.get(block).body
    return type_is(body, "BufferStore") and type(body.value).__name__ in ("BufferLoad", "TensorLoad")


def vector_pieces(width: int) -> int:
    """Instructions LLVM emits for one <width x float> operation narrower than a register: one
    power-of-two piece per set bit (14 lanes = 8 + 4 + 2, 7 = 4 + 2 + 1)."""
    return bin(width).count("1")


def overlapping_chunks(lanes: int, wide: int) -> tuple[int, list[int]]:
    """A run of ``wide`` elements as vectors of ``chunk`` lanes, a power of two (at least
    ``lanes`` where the run allows): (chunk, their starts), the last one moved back to end where
    the run ends, overlapping the one before, so that every vector is whole and none reaches
    past the run (LLVM splits an odd-width vector into power-of-two pieces: 31 lanes as
    16 + 8 + 4 + 2 + 1)."""
    chunk = 1 << (lanes - 1).bit_length()
    while chunk > wide:
        chunk //= 2
    n = -(-wide // chunk)
    return chunk, [min(k * chunk, wide - chunk) for k in range(n)]


def split_vector(extent: int, lanes: int, max_vec: int) -> tuple[int, int]:
    """(unrolled vectors, lanes per vector) whose product divides `extent`.

    Prefer whole SIMD registers; when the extent has no multiple of the register width (7x7, 13x13
    maps), vectorise a divisor of it: LLVM splits an odd-width vector into legal pieces, which beats
    the scalar tail a predicated split would leave.
    """
    for nv in range(max_vec, 0, -1):
        if extent % (nv * lanes) == 0:
            return nv, lanes
    # No whole-register multiple: a vector of d < lanes (7, 14, 13...) is widened by LLVM to one
    # register. Wider odd vectors (49 lanes) are legalised badly (measured 10x slower): avoid them.
    d = max(d for d in range(1, lanes + 1) if extent % d == 0)
    nv = largest_divisor(extent // d, max_vec)
    return nv, d


def window_vector(w_out: int, lanes: int) -> tuple[int, int]:
    """(vectors, lanes) along a window kernel's output row: whole registers where they divide
    it, else the divisor with the most lanes per piece, since LLVM splits a d-lane vector into
    popcount(d) power-of-two pieces: a 56-wide row as 7 x 8 lanes, not 4 x 14 (8 + 4 + 2 each).
    Stride-2 depthwise 96 @112 -> 56: 0.43 -> 0.33 ms (one thread, hot). (Rounding the row up
    to 64 instead widens the de-interleaved plane: whole models 4-11% slower.) split_vector's own
    fallback, the widest divisor, stays as it is: the legalisation's row-utilisation test reads
    it, and 56 = 4 x 14 is what keeps such a row from being rounded up there."""
    nv, vl = split_vector(w_out, lanes, 4)
    if vl == lanes:
        return nv, vl
    d = max((d for d in range(1, lanes + 1) if w_out % d == 0), key=lambda d: (d / vector_pieces(d), d))
    return largest_divisor(w_out // d, 4), d


# Below this much work (multiply-adds, or elements for data movement) a kernel runs on one thread:
# waking the pool and joining costs a few microseconds per kernel, more than the kernel itself
# (MobileNeXt at 160 has ~80 kernels, many on 5x5 maps).
MIN_PARALLEL_WORK = 128 * 1024


# A core keeps its rows. TVM's pool splits a parallel loop statically: the first iterations to
# the first thread. A kernel whose outer loop is channels hands its successor, split by rows,
# half of its data in the other core's cache (and the reverse): a read from another core's L2 is
# several times slower than from one's own (on a 2-core Xeon VM, ShuffleNet v2's serial channel
# shuffle took 16 us after a one-thread conv and 35 us after a two-thread one, and the whole
# model ran no faster on two threads than on one). So the kernels that can are split by rows
# (positions): convolutions with every input channel feeding each output, and pooling.
# Depthwise kernels are still split by channel planes (each builds its padded plane: by rows,
# the halo each band copies cost as much as the locality gave back), and so are copies and
# shuffles (fallback.py: rows first cut every copy into row-long pieces).
# Measured, 2 threads, interleaved, 224 px, the seven flagships: 0.92-1.00 of their latency
# (ShuffleNet v2 0.92, FasterNet-T0 0.94, SqueezeNet 1.1 0.95), one thread unchanged. (That
# first version split the copies by rows as well; fallback.py says why they no longer are.)


def maybe_parallel(sch: s_tir.Schedule, loop, work: int, cores: int,
                   min_work: int = MIN_PARALLEL_WORK) -> None:
    if cores > 1 and work >= min_work and (int_extent(sch, loop) or 0) > 1:
        sch.parallel(loop)


def largest_divisor(n: int, cap: int) -> int:
    cap = max(1, min(cap, n))
    return max(d for d in range(1, cap + 1) if n % d == 0)


def vectorize_inner(sch: s_tir.Schedule, block, lanes: int, unroll_rest: bool = True) -> None:
    """Vectorise the innermost loop of `block` (split by lanes when it divides), unroll the others."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = int_extent(sch, inner)
    if ext is None:
        return
    if ext > lanes and ext % lanes == 0:
        outer, inner = sch.split(inner, factors=[None, lanes])
        if unroll_rest:
            sch.unroll(outer)
    if ext > 1:
        sch.vectorize(inner)


class CpuRule(ScheduleRule):
    """A rule for one class of CPU kernel: ``schedule`` recognises it among the PrimFunc's
    blocks and returns the schedule, or None for a kernel that is not its own."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        return self.schedule(sch, child_blocks(sch), cpu_info(target))

    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        raise NotImplementedError


def accumulate_locally(sch: s_tir.Schedule, blocks: list, reduction) -> object:
    """Inline the epilogue blocks after ``reduction`` but the last, and keep the reduction's
    accumulator in registers ("local"): the block that writes the output, to be computed per
    register tile (a cache write when the reduction is itself the output)."""
    epilogue = blocks[blocks.index(reduction) + 1:]
    for b in epilogue[:-1]:
        sch.compute_inline(b)
    if epilogue:
        sch.set_scope(reduction, 0, "local")
        return epilogue[-1]
    return sch.cache_write(reduction, 0, "local")


class SafeRule(ScheduleRule):
    """Run a rule; a rule that raises declines (returns None) so that the next one can try.

    dlight's ApplyDefaultSchedule does not catch errors, and one odd kernel must not fail a build.
    """

    def __init__(self, inner: ScheduleRule):
        self.inner = inner

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        try:
            return self.inner.apply(func, target, tunable)
        except Exception as err:  # noqa: BLE001 - any schedule error means "not my kernel"
            import traceback

            where = traceback.extract_tb(err.__traceback__)[-1]
            log.info("%s declined at %s:%s: %s", type(self.inner).__name__,
                     where.filename.split("/")[-1], where.lineno,
                     str(err).strip().splitlines()[-1][:300])
            return None
