"""Questions about TIR expressions that both the kernel table (kernels.py) and the CPU schedules'
TIR passes (cpu_schedules/vector_tails.py) ask. A module of its own: kernels.py imports
cpu_schedules, so neither can import the other's copy without a cycle."""

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
