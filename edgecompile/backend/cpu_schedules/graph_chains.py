"""Reading a Relax function as chains conv -> bias add -> activation, and replacing each with
kernels of its own: the graph rewrites winograd.py and depthwise_3x3.py."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op

from .legalize import _const_array

CALL_TIR = Op.get("relax.call_tir")
ADD = Op.get("relax.add")


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


def plain_conv_shape(conv: relax.Call, wnp: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """The static [N, C, H, W] input shape of a float32 NCHW / OIHW convolution with constant
    4-D weights (``wnp``) and no dilation: what the rewrites take; None for any other."""
    a = conv.attrs
    shape = getattr(conv.args[0].ty, "shape", None)
    if wnp is None or shape is None or len(shape) != 4 or wnp.ndim != 4:
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    plain = (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
             and [int(v) for v in a.dilation] == [1, 1] and str(conv.args[0].ty.dtype) == "float32"
             and str(wnp.dtype) == "float32" and a.out_dtype in ("", None, "float32"))
    return tuple(int(d) for d in shape) if plain else None


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


def bias_after(bound: dict, reader: dict, end: relax.Var, k: int) -> np.ndarray | None:
    """The per-channel bias [K] where ``end``'s single reader is add(end, bias constant)."""
    add = bound.get(reader.get(end))
    if not (isinstance(add, relax.Call) and add.op.same_as(ADD) and add.args[0].same_as(end)):
        return None
    return bias_vector(add.args[1], k)


def scalar(expr: relax.Expr) -> float | None:
    """The value of a float32 scalar constant."""
    v = _const_array(expr)
    return float(v) if v is not None and v.ndim == 0 and str(v.dtype) == "float32" else None


# find(func) -> {the var a chain ends at: (..., the chain's earlier vars)};
# emit(mutator, binding, chain) binds the chain's end var to its replacement.
Find = Callable[[relax.Function], dict]
Emit = Callable[[relax.PyExprMutator, relax.VarBinding, tuple], None]


@relax.expr_functor.mutator
class _ChainRewriter(relax.PyExprMutator):
    def __init__(self, mod, find: Find, emit: Emit):
        super().__init__(mod)
        self.find, self.emit = find, emit
        self.chains: dict = {}
        self.dropped: set = set()

    def rewrite(self, func: relax.Function) -> relax.Function:
        self.chains = self.find(func)
        self.dropped = {v for chain in self.chains.values() for v in chain[-1]}
        return self.visit_expr(func)

    def visit_var_binding_(self, binding) -> None:  # noqa: N802 - TVM's visitor name
        if binding.var in self.dropped:
            return
        if binding.var not in self.chains:
            super().visit_var_binding_(binding)
            return
        self.emit(self, binding, self.chains[binding.var])


def chain_rewrite(name: str, find: Find, emit: Emit) -> tvm.transform.Pass:
    """A module pass that replaces, in every Relax function, each chain ``find`` names (its last
    element: the chain's vars before its end, which are dropped) with what ``emit`` binds."""
    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        mutator = _ChainRewriter(mod, find, emit)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.rewrite(func))
        return mutator.builder_.get()

    return _pass
