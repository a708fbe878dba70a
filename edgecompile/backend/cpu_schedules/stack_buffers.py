"""A TIR pass: a kernel's small scratch buffers live on the stack, not in TVM's workspace pool.

TVM lowers every CPU allocation that is not a "global" buffer under 1 KB (kMaxStackAlloca) to a
TVMBackendAllocWorkspace / TVMBackendFreeWorkspace pair. Our schedules allocate inside their
parallel loops: a register tile's accumulator ("local": mr x nv vectors, 1.5 KB for 24 AVX-512
registers) once per tile, a depthwise window's padded plane (up to PLANE_BAND_BYTES) once per
channel. Each became two calls into the runtime, a memset and a vzeroupper per tile, and a
workspace pointer LLVM cannot promote to registers, so the tile's accumulators went through
memory before the epilogue: a 16->96 pointwise @112 (K = 16) spent as long on that as on its
FMAs. With the allocation an alloca, LLVM keeps the accumulators in registers: that layer 0.565
-> 0.386 ms, the 576 @14 s2 depthwise 0.043 -> 0.024 ms (one thread, Zen 4), whole models 0.81-
0.93 of their latency.

TVM's own escape hatch does it: an allocation annotated ``disable_lower_builtin`` stays an
AllocBuffer, which the LLVM code generator emits as an alloca at the function's entry (the
parallel lambda's, for a buffer inside a parallel loop). Only buffers of a known size up to
MAX_STACK_BYTES: worker threads run on stacks of a few hundred KB to 8 MB (1 MB on Android).
Runs after TVM's lowering (buffers are flat allocations by then), before the host passes that
lower the rest.
"""
from __future__ import annotations

import tvm_ffi
from tvm import tirx

from ..tir_exprs import buffer_bytes

MAX_STACK_BYTES = 32 * 1024
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tirx::transform::kDisableLowerTVMBuiltin


def _on_stack(alloc):
    size = buffer_bytes(alloc.buffer)
    if alloc.buffer.scope() not in ("local", "global") or size is None or size > MAX_STACK_BYTES:
        return alloc
    annotations = dict(alloc.annotations or {})
    annotations[DISABLE_LOWER_BUILTIN] = tirx.IntImm("int32", 1)
    return tirx.AllocBuffer(alloc.buffer, annotations=annotations)


@tirx.transform.prim_func_pass(opt_level=0, name="EdgeStackBuffers")
def stack_buffers(func, _mod, _ctx):
    return tvm_ffi.structural_map(func, [(tirx.AllocBuffer, _on_stack)])
