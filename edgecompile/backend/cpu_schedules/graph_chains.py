"""Reading a Relax function as chains conv -> bias add -> activation, for the graph rewrites
that replace such a chain with kernels of their own (winograd.py, depthwise_s2.py)."""
from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir import Op

from .legalize import _const_array

CALL_TIR = Op.get("relax.call_tir")


def scan(func: relax.Function) -> tuple[dict, dict]:
    """Each bound var's value, and each var's single reader (only vars read exactly once)."""
    bound: dict[relax.Var, relax.Expr] = {}
    uses: dict[relax.Var, int] = {}

    @relax.expr_functor.visitor
    class _Scan(relax.PyExprVisitor):
        def visit_var_binding_(self, binding) -> None:  # noqa: N802 - TVM's visitor name
            bound[binding.var] = binding.value
            super().visit_var_binding_(binding)

        def visit_var_(self, var) -> None:  # noqa: N802
            uses[var] = uses.get(var, 0) + 1

        def visit_dataflow_var_(self, var) -> None:  # noqa: N802
            uses[var] = uses.get(var, 0) + 1

    _Scan().visit_expr(func)
    reader = {arg: var for var, value in bound.items() if isinstance(value, relax.Call)
              for arg in call_args(value) if isinstance(arg, relax.Var) and uses.get(arg) == 1}
    return bound, reader


def call_args(call: relax.Call) -> list:
    """A call's tensor arguments: a call_tir's are in its second argument, a tuple."""
    if call.op.same_as(CALL_TIR) and len(call.args) > 1 and isinstance(call.args[1], relax.Tuple):
        return list(call.args[1].fields)
    return list(call.args)


def bias_vector(expr: relax.Expr, k: int) -> np.ndarray | None:
    """A constant that adds one value per output channel ([K, 1, 1], [1, K, 1, 1])."""
    b = _const_array(expr)
    if b is None or b.ndim not in (3, 4) or b.size != k or b.shape[-3] != k or str(b.dtype) != "float32":
        return None  # a [K] bias would broadcast along the rows' columns, not the channels
    return np.ascontiguousarray(b.reshape(k))


def scalar(expr: relax.Expr) -> float | None:
    """The value of a float32 scalar constant."""
    v = _const_array(expr)
    return float(v) if v is not None and v.ndim == 0 and str(v.dtype) == "float32" else None
