"""Last rule: every kernel gets at least parallel outer loops and a vectorised inner loop.

Untouched PrimFuncs run as naive serial scalar loops (the 37-177x gap), so nothing may be left
unscheduled: elementwise, concat, split, transpose/shuffle, reshape copies, reductions.
"""
from __future__ import annotations

from tvm import s_tir, tirx

from ..target_info import CpuInfo
from .common import CpuRule, child_blocks, int_extent, is_reduction, largest_divisor, maybe_parallel

# Outputs a reduction accumulates side by side. One output reduced alone is one chain of
# dependent adds, an add per 3-4 cycles (the FP add latency); several chains interleaved keep the
# adders and loads busy. A global average pool, 1000 channels x 169 positions (SqueezeNet), took
# 0.093 ms inside an inference on one Zen 4 thread (= 169K adds x 3 cycles) vs ONNX Runtime's 0.029.
REDUCE_CHAINS = 8

# Elements from which a data-movement, elementwise or reduction kernel runs on several cores: a
# quarter of MIN_PARALLEL_WORK. Run on one core, such a kernel pulls the half of its input that
# the other core wrote. ShuffleNet v2's 58 @28 shuffles (45K elements per output) on two cores:
# the model 0.92-0.97 of its latency at 2 threads (three interleaved A/Bs, 224 px), the other
# flagships 0.93-0.98. (Those A/Bs had these kernels split by rows; split by channels, as they
# are now, 32K against 128K: ShuffleNet v1 0.96 of its latency, v2 1.04 -- noise either way.)
# Their loops keep NCHW order, channels outermost: rows first (each core the same rows as the
# convolutions around it) broke every copy into row-long pieces and cost more than the locality
# gave: without it ShuffleNet v1 / v2, SqueezeNet, MobileNet v2 0.88-0.97 of their latency.
MIN_PARALLEL_ELEMENTS = 32 * 1024


def _work(sch: s_tir.Schedule, block) -> int:
    work = 1
    for iv in sch.get(block).iter_vars:
        work *= int(iv.dom.extent) if type(iv.dom.extent).__name__ == "IntImm" else 1 << 20
    return work


class Fallback(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        # Inline every injective block that can be inlined; what stays is what must be written.
        for b in blocks:
            if is_reduction(sch, b):
                continue
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - output blocks and multi-consumer blocks stay
                pass
        for b in child_blocks(sch):
            _parallel_vectorize(sch, b, info.lanes, info.cores)
        return sch


def _parallel_vectorize(sch: s_tir.Schedule, block, lanes: int, cores: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    ivs = sch.get(block).iter_vars
    kinds = [iv.iter_type for iv in ivs]
    # Leading spatial loops are safe to parallelise (blocks here are not nested: one loop per iter).
    n_spatial = 0
    for k in kinds:
        if k != tirx.IterVar.DataPar:
            break
        n_spatial += 1
    if len(loops) != len(ivs):
        return
    if n_spatial == len(loops) and n_spatial >= 1:
        # Injective: vectorise the innermost axis (contiguous in the output), parallelise the rest.
        inner = loops[-1]
        ext = int_extent(sch, inner)
        rest = loops[:-1]
        if ext is not None and ext >= lanes and ext % lanes == 0:
            io, ii = sch.split(inner, factors=[None, lanes])
            sch.vectorize(ii)
            rest = rest + [io]
        elif ext is not None and 1 < ext <= 4 * lanes:
            sch.vectorize(inner)
        if rest:
            fused = sch.fuse(*rest) if len(rest) > 1 else rest[0]
            maybe_parallel(sch, fused, _work(sch, block), cores, MIN_PARALLEL_ELEMENTS)
    elif n_spatial >= 1:
        # Reduction: parallelise the spatial prefix, reduce inside, REDUCE_CHAINS outputs at once.
        fused = sch.fuse(*loops[:n_spatial]) if n_spatial > 1 else loops[0]
        ext = int_extent(sch, fused)
        chains = largest_divisor(ext, REDUCE_CHAINS) if ext else 1
        if chains > 1:
            fused, ci = sch.split(fused, factors=[None, chains])
        # Parallel before decompose_reduction: TVM refuses a parallel loop over the init block.
        maybe_parallel(sch, fused, _work(sch, block), cores, MIN_PARALLEL_ELEMENTS)
        if chains > 1:
            try:
                sch.reorder(*loops[n_spatial:], ci)
                sch.unroll(ci)
                # The accumulators zeroed before the reduction loops, not tested for k == 0 inside.
                sch.decompose_reduction(block, loops[n_spatial])
            except Exception:  # noqa: BLE001 - what was applied is still a valid schedule
                pass
