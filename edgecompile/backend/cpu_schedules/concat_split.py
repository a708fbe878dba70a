"""Graph rewrite: no channel concatenation in front of a convolution or a max-pool.

SqueezeNet's fire modules concatenate their two expand convolutions and feed the result to the
next squeeze convolution (or a max-pool, then the squeeze); FasterNet's PConv concatenates the
convolved quarter with the untouched rest and feeds a pointwise convolution. The concat is a
pure copy of the largest tensors of those models (SqueezeNet: 15 us per concat timed alone,
100-130 us inside a run, where it reads what the convolutions before it just wrote; removing
all eight made the whole model 2-7% faster here, so most of that in-context time was the
neighbours'). Both consumers can take the pieces instead:

* conv2d(concat(a, b), W) = conv2d(a, W[:, :Ca]) + conv2d(b, W[:, Ca:])  (groups 1, constant
  weights: the weight is split once, at build time; the sum is fused into the second
  convolution's epilogue, so the only new traffic is the first one's output) -- where that
  output is smaller than the concat (splits_pay);
* max_pool2d(concat(a, b)) = concat(max_pool2d(a), max_pool2d(b))  (per channel), whose concat
  the rule above then removes when a convolution follows.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op

from .legalize import _const_array
from .tags import CONCAT_PART_SUFFIX, OP_PATTERN_ATTR, OPAQUE

_CONV = Op.get("relax.nn.conv2d")
_CONCAT = Op.get("relax.concat")
_MAX_POOL = Op.get("relax.nn.max_pool2d")
_CALL_TIR = Op.get("relax.call_tir")
_ADD = Op.get("relax.add")
PART = "edge_concat_part"  # name of the partial convolutions that must not anchor a fused kernel


def _channels(expr: relax.Expr) -> int | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    try:
        return int(shape[1])
    except TypeError:  # symbolic
        return None


def splits_pay(pieces: int, c_out: int, c_in: int) -> bool:
    """Does a conv over a concat of ``pieces`` tensors run better as one partial conv per piece?

    Every piece but the last writes a partial sum of c_out channels that the next one reads
    back; the concat writes c_in channels that the conv reads. Pieces pay where the partial sums
    are the smaller: SqueezeNet's squeeze convs (16-64 out of 128-512), not its classifier
    (1000 out of 512) nor FasterNet's PConv + expansion (2C out of C). Measured, interleaved
    with ONNX Runtime, concat kept there / split: squeezenet1_1 0.94-0.97 (2 threads; 1 thread
    0.97), fasternet_t0 0.94-0.98 (1 thread 0.94), fasternet_t1 0.88."""
    return c_out * (pieces - 1) < c_in


@relax.expr_functor.mutator
class _SplitConcat(relax.PyExprMutator):
    def _concat_parts(self, expr: relax.Expr) -> list[relax.Expr] | None:
        """The pieces of a channel concat of static NCHW tensors that ``expr`` is bound to."""
        if not isinstance(expr, relax.Var):
            return None
        value = self.lookup_binding(expr)
        if not (isinstance(value, relax.Call) and value.op.same_as(_CONCAT)):
            return None
        if int(value.attrs.axis) not in (1, -3) or _channels(expr) is None:
            return None
        parts = value.args[0]
        if isinstance(parts, relax.Var):
            parts = self.lookup_binding(parts)
        if not isinstance(parts, relax.Tuple) or len(parts.fields) < 2:
            return None
        if any(_channels(p) is None for p in parts.fields):
            return None
        return list(parts.fields)

    def __init__(self, mod=None):
        super().__init__(mod)
        self._partial: dict[relax.Var, relax.Var] = {}  # last partial conv -> sum of the others

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
        call = self.visit_expr_post_order(call)
        if call.op.same_as(_CONV):
            return self._conv(call)
        if call.op.same_as(_MAX_POOL):
            return self._pool(call)
        if call.op.same_as(_ADD):
            return self._bias_first(call)
        return call

    def _bias_first(self, call: relax.Call) -> relax.Expr:
        """(conv_b + rest) + bias -> (conv_b + bias) + rest: FuseOps then keeps the bias, the
        sum and the activation in conv_b's kernel (in the other order it stops after the sum)."""
        lhs, bias = call.args
        if _const_array(bias) is None or not isinstance(lhs, relax.Var):
            return call
        value = self.lookup_binding(lhs)
        if not (isinstance(value, relax.Call) and value.op.same_as(_ADD)):
            return call
        y, rest = value.args
        if y not in self._partial or not rest.same_as(self._partial[y]):
            return call
        return relax.op.add(self.builder_.emit(relax.op.add(y, bias)), rest)

    def _conv(self, call: relax.Call) -> relax.Expr:
        a = call.attrs
        x, w = call.args
        parts = self._concat_parts(x)
        wnp = _const_array(w)
        if (parts is None or wnp is None or int(a.groups) != 1 or a.data_layout != "NCHW"
                or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"):
            return call
        if not splits_pay(len(parts), wnp.shape[0], wnp.shape[1]):
            return call
        total, offset = None, 0
        for part in parts:
            c = _channels(part)
            wpart = np.ascontiguousarray(wnp[:, offset:offset + c])
            offset += c
            last = offset == _channels(x)
            y = self.builder_.emit(relax.op.nn.conv2d(
                part, relax.const(wpart, str(wnp.dtype)), strides=a.strides, padding=a.padding,
                dilation=a.dilation, groups=1, data_layout="NCHW", kernel_layout="OIHW",
                out_layout="NCHW", out_dtype=a.out_dtype), name_hint="" if last else PART)
            if not last:
                total = y if total is None else self.builder_.emit(relax.op.add(total, y))
        self._partial[y] = total
        return relax.op.add(y, total)

    def _pool(self, call: relax.Call) -> relax.Expr:
        a = call.attrs
        parts = self._concat_parts(call.args[0])
        if parts is None or a.layout != "NCHW" or a.out_layout != "NCHW":
            return call
        pooled = [self.builder_.emit(relax.op.nn.max_pool2d(
            p, pool_size=a.pool_size, strides=a.strides, padding=a.padding, dilation=a.dilation,
            ceil_mode=a.ceil_mode, count_include_pad=a.count_include_pad, layout="NCHW",
            out_layout="NCHW")) for p in parts]
        return relax.op.concat(pooled, axis=1)


def split_concat():
    """The rewrite as a module pass, followed by removing the concats no one reads any more."""
    @tvm.transform.module_pass(opt_level=0, name="EdgeSplitConcat")
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = _SplitConcat().visit_expr(func)
        return relax.transform.DeadCodeElimination()(mod)

    return _pass


def keep_parts_unfused():
    """After AnnotateTIROpPattern: the partial convolutions but the last stay kernels of their
    own. Left to FuseOps, the first partial conv takes the sum into its kernel and the bias and
    activation after the sum become a kernel of their own (two convolutions feed the sum and
    only one may anchor a group); marked opaque, the last conv fuses the sum, bias and
    activation. Each marked call gets its own copy of the kernel, so that an identical
    convolution elsewhere in the graph keeps fusing as before."""
    @tvm.transform.module_pass(opt_level=0, name="EdgeKeepPartsUnfused")
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        marked: list[relax.Var] = []

        @relax.expr_functor.visitor
        class _Find(relax.PyExprVisitor):
            def visit_var_binding_(self, binding) -> None:  # noqa: N802 - TVM's visitor name
                if binding.var.name.startswith(PART):
                    marked.append(binding.var)

        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                _Find().visit_expr(func)
        if not marked:
            return mod

        @relax.expr_functor.mutator
        class _Mark(relax.PyExprMutator):
            def visit_var_binding_(self, binding) -> None:  # noqa: N802
                value = binding.value
                if (binding.var.name.startswith(PART) and isinstance(value, relax.Call)
                        and value.op.same_as(_CALL_TIR)):
                    prim = self.builder_.get()[value.args[0]]
                    gv = self.builder_.add_func(prim.with_attr(OP_PATTERN_ATTR, OPAQUE),
                                                value.args[0].name_hint + CONCAT_PART_SUFFIX)
                    args = [gv] + [self.visit_expr(arg) for arg in value.args[1:]]
                    value = self.builder_.normalize(relax.Call(value.op, args, value.attrs,
                                                               value.ty_args))
                    self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
                    return
                super().visit_var_binding_(binding)

        mutator = _Mark(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass
