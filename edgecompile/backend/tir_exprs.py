"""Questions about TIR expressions and buffers that both the kernel table (kernels.py) and the CPU
schedules' TIR passes (cpu_schedules/vector_tails.py, stack_buffers.py) ask. A module of its own:
kernels.py imports cpu_schedules, so neither can import the other's copy without a cycle."""

from __future__ import annotations

from typing import Any

import tvm_ffi

from edgecompile.backend.core import load_tvm


def uses_var(expr, var) -> bool:
    """Does ``expr`` read the variable ``var`` (the very variable, not one of the same name)?"""
    tvm = load_tvm()
    hit: list[Any] = []
    tvm_ffi.structural_walk(expr, (tvm.tirx.Var, lambda v: hit.append(v) if v.same_as(var) else None),
                            order="post")
    return bool(hit)


def buffer_bytes(buf) -> int | None:
    """Bytes of a buffer of constant shape, else None."""
    dtype = load_tvm().DataType(str(buf.dtype))
    n = (dtype.bits * dtype.lanes + 7) // 8
    for d in buf.shape:
        if type(d).__name__ != "IntImm":
            return None
        n *= int(d)
    return n
