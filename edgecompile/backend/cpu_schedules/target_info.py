"""What the schedule rules need to know about a CPU target, read from its features only.

Never keyed by CPU name: the same rules must serve AVX-512, AVX2 and NEON machines.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target
from tvm.target.codegen import target_has_features

DEFAULT_CORES = 4


@dataclass(frozen=True)
class CpuInfo:
    lanes: int  # fp32 lanes of one SIMD register
    vregs: int  # architectural SIMD registers (bounds the register tile)
    cores: int  # threads we expect to run on (num-cores), for parallel grain


def cpu_info(target: Target) -> CpuInfo:
    attrs = target.attrs
    # A target that does not say (the x86 presets): assume several cores. The runtime splits
    # a parallel loop over however many threads it has; this only decides which kernels are
    # worth a parallel loop at all.
    cores = int(attrs.get("num-cores", 0) or 0) or DEFAULT_CORES
    triple = str(attrs.get("mtriple", "") or "")
    is_arm = "aarch64" in triple or "arm" in triple or bool(attrs.get("feature.is_aarch64", False))
    if is_arm:
        # NEON: 128-bit, 32 registers on aarch64 (16 on 32-bit arm).
        return CpuInfo(lanes=4, vregs=32 if "aarch64" in triple else 16, cores=cores)
    # llvm_get_vector_width() reports 512 for znver3 (no AVX-512), so ask for features instead.
    if target_has_features("avx512f", target):
        return CpuInfo(lanes=16, vregs=32, cores=cores)
    if target_has_features("avx2", target) or target_has_features("avx", target):
        return CpuInfo(lanes=8, vregs=16, cores=cores)
    return CpuInfo(lanes=4, vregs=16, cores=cores)


def isa_class(target: Target) -> str:
    """The instruction-set class whose machines share kernels: the legalisation (vector block,
    register tile) depends on the vector width alone, so records tuned on one CPU of a class
    have the very same workloads on every other (x86_64-avx512, x86_64-avx2, aarch64-neon...)."""
    triple = str(target.attrs.get("mtriple", "") or "")
    info = cpu_info(target)
    if "aarch64" in triple or bool(target.attrs.get("feature.is_aarch64", False)):
        return "aarch64-neon"
    if "arm" in triple:
        return "arm-neon"
    return {16: "x86_64-avx512", 8: "x86_64-avx2"}.get(info.lanes, "x86_64-sse")
