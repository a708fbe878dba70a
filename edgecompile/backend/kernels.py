"""What each kernel of a compiled model is: operator class, FLOPs, bytes, arguments, calls.

Read from the fused Relax module, just before the kernels are scheduled (compile_module's
``on_fused``), so the table names exactly the functions the library holds. The class comes from
the kernel's anchor block -- the reduction, for convolutions the multiply-accumulate over
``rc`` (input channels per group) and the window taps -- plus, for FasterNet's partial
convolution, its place in the graph (a convolution on a Split's slice whose result goes into a
Concat). The classes are the ones the FasterNet paper argues about: regular, pointwise,
depthwise and grouped convolutions do not reach the same FLOPS on a device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm_ffi

from edgecompile.backend.core import load_tvm
from edgecompile.backend.cpu_schedules.tags import (
    CONCAT_PART_SUFFIX,
    CONV_TAG,
    DEPTHWISE_S1,
    DEPTHWISE_S2,
    DW_FLAT_TAG,
    POOL_COLS_TAG,
    PW_FVEC_TAG,
    WINOGRAD_INPUT,
    WINOGRAD_OUTPUT,
)
from edgecompile.backend.tir_exprs import buffer_bytes, uses_var

OP_CLASSES = ("conv", "pointwise", "depthwise", "grouped", "pconv", "dense", "pooling", "winograd",
              "data_movement", "elementwise")
# Function-name words of kernels that only move data (TVM names a fused function after its ops).
_MOVES = ("concatenate", "split", "transpose", "reshape", "strided_slice", "squeeze", "take",
          "flatten", "expand_dims", "layout_transform", "slice")
_REDUCE = 2  # IterVar.iter_type of a reduction (CommReduce)


def kernel_table(mod) -> dict[str, Any]:
    """{"kernels": [...], "sequence": [...]} for a fused module's ``main``: every PrimFunc it
    calls with class, calls per inference, FLOPs, bytes (its arguments, read or written once:
    the least traffic it can cause) and argument shapes; and the call order."""
    tvm = load_tvm()
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    sequence: list[str] = []
    producer: dict[Any, str] = {}  # Relax var -> the kernel that computed it
    sites: dict[str, list[tuple[list[Any], Any]]] = {}  # kernel -> (inputs, output) per call
    consumers: dict[Any, list[str]] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.TupleGetItem) and value.tuple_value in producer:
                producer[binding.var] = producer[value.tuple_value]
                continue
            if not (isinstance(value, relax.Call) and value.op.same_as(call_tir)):
                continue
            name = value.args[0].name_hint
            sequence.append(name)
            producer[binding.var] = name
            args = [a for a in value.args[1].fields if isinstance(a, relax.Var)]
            sites.setdefault(name, []).append((args, binding.var))
            for a in args:
                consumers.setdefault(a, []).append(name)

    kernels = []
    for gv, func in mod.functions.items():
        name = gv.name_hint
        if name not in sites or not isinstance(func, tvm.tirx.PrimFunc):
            continue
        op_class = classify(func, name)
        # One function can serve several layers of one shape (ShuffleNet v2 runs the same 1x1
        # kernel before and after a unit's depthwise): a PConv only if every call is one.
        if op_class in ("conv", "pointwise") and all(_is_partial(ins, out, producer, consumers)
                                                     for ins, out in sites[name]):
            op_class = "pconv"
        kernels.append({
            "name": name, "calls": sequence.count(name), "op_class": op_class,
            "flops": _flops(func, name), "bytes": sum(buffer_bytes(b) or 0 for b in func.params),
            "args": [{"shape": [int(s) for s in b.shape], "dtype": str(b.dtype)} for b in func.params],
        })
    return {"kernels": kernels, "sequence": sequence}


def keep_called(table: dict[str, Any], lowered_mod) -> None:
    """Drop from ``table`` the kernels the lowered ``main`` no longer calls (a reshape kernel
    becomes a view of its input, vm.builtin.reshape): they never run."""
    tvm = load_tvm()
    from tvm import relax

    called: set[str] = set()

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar):
            called.add(e.name_hint)

    relax.analysis.post_order_visit(lowered_mod["main"], visit)
    table["kernels"] = [k for k in table["kernels"] if k["name"] in called]
    table["sequence"] = [n for n in table["sequence"] if n in called]


def _is_partial(inputs, output, producer, consumers) -> bool:
    """FasterNet's PConv: the convolution reads a slice a Split (or strided slice) made and its
    result is concatenated back with the untouched channels."""
    sliced = any(_moves_with(producer.get(v, ""), ("split", "slice")) for v in inputs)
    # Concatenated, or read by the convolution that took the concat's place (concat_split.py).
    joined = any(_moves_with(c, ("concatenate",)) or c.endswith(CONCAT_PART_SUFFIX)
                 for c in consumers.get(output, []))
    return sliced and joined


def _moves_with(name: str, words: tuple[str, ...]) -> bool:
    return any(w in name for w in words)


def classify(func, name: str = "") -> str:
    """The operator class of one fused kernel (``name``: its function name), from its anchor
    (reduction) block."""
    if name.startswith((WINOGRAD_INPUT, WINOGRAD_OUTPUT)):
        return "winograd"  # a Winograd conv's transforms (its GEMMs are a grouped conv)
    if name.startswith((DEPTHWISE_S1, DEPTHWISE_S2)):
        return "depthwise"  # written by hand (depthwise_tir.py): no blocks to tell it by
    tvm = load_tvm()
    blocks: list[Any] = []
    tvm_ffi.structural_walk(func.body, (tvm.s_tir.SBlock, blocks.append), order="post")
    reductions = [b for b in blocks if any(iv.iter_type == _REDUCE for iv in b.iter_vars)]
    if not reductions:
        words = [b.name_hint for b in blocks] + [name]
        if any(w.startswith(POOL_COLS_TAG) for w in words):
            return "pooling"  # a max pool as two passes of k-term maxima (separable_pool.py)
        return "data_movement" if any(_moves_with(w, _MOVES) for w in words) else "elementwise"
    anchor = max(reductions, key=_iterations)
    block_name = anchor.name_hint.lower()
    if block_name == DW_FLAT_TAG:
        return "depthwise"  # along the flattened map: no output row to tell it by
    if "conv" in block_name or block_name in (CONV_TAG, PW_FVEC_TAG):
        return _conv_class(anchor)
    if "matmul" in block_name or "dense" in block_name:
        return "dense"
    return "pooling"  # what else reduces in these networks: max / average / global pooling


def _conv_class(block) -> str:
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type != _REDUCE]
    reduce = {iv.var.name.removeprefix("v_"): int(iv.dom.extent) for iv in block.iter_vars
              if iv.iter_type == _REDUCE}
    per_group = reduce.pop("rc", 1)
    taps = 1
    for extent in reduce.values():
        taps *= extent
    if len(spatial) < 4:
        return "conv" if taps > 1 else "pointwise"
    load_tvm()
    from tvm.sym import Analyzer

    analyzer = Analyzer()
    for iv in block.iter_vars:  # so that e.g. ff // 64 with ff < 64 simplifies to 0
        analyzer.bind(iv.var, iv.dom)
    channel, row = spatial[1], spatial[2]
    grouped = False
    written = [w.source for w in block.writes]
    for load in _loads(block.body):
        if any(load.source.same_as(w) for w in written):
            continue  # the accumulator, indexed like the output
        idx = [analyzer.simplify(i) for i in load.indices]
        # The input read: indexed by the output row. Its channel index depends on the output
        # channel only when the convolution is grouped (depthwise: one input channel each).
        if len(idx) == 4 and uses_var(idx[2], row):
            grouped = grouped or uses_var(idx[1], channel)
    if grouped:
        return "depthwise" if per_group == 1 else "grouped"
    return "pointwise" if taps == 1 else "conv"


def _loads(stmt) -> list[Any]:
    tvm = load_tvm()
    found: list[Any] = []
    tvm_ffi.structural_walk(stmt, (tvm.ir.expr.TensorLoad, found.append), order="post")
    return found


def _iterations(block) -> int:
    n = 1
    for iv in block.iter_vars:
        n *= int(iv.dom.extent)
    return n


def _flops(func, name: str = "") -> float:
    if name.startswith((DEPTHWISE_S1, DEPTHWISE_S2)):
        # Hand-written loops over vector shuffles: TVM's estimate finds no blocks to count. A
        # multiply and an add per tap, 9 taps per output (the last argument).
        return 18.0 * float(np.prod([int(d) for d in func.params[-1].shape]))
    tvm = load_tvm()
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # noqa: BLE001 -- an estimate; data movement has none
        return 0.0
