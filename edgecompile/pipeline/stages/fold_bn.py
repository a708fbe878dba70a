"""Stage 3: fold every BatchNormalization into the Conv or Gemm that feeds it.

In inference, BN is the per-channel affine map y = s * x + t with
s = gamma / sqrt(var + eps) and t = beta - mean * s. When x = W * u + b (Conv or Gemm),
y = (s W) * u + (s b + t): scale the weight's output-channel rows and fold the rest into the
bias. A BN that no foldable op feeds (its producer has other consumers, is not Conv/Gemm, or
has non-constant weights) becomes an explicit Mul + Add, so no BN node survives either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecompile.errors import EdgeCompileError


@dataclass(frozen=True)
class FoldReport:
    folded: int  # BN merged into a Conv/Gemm
    affine: int  # BN rewritten as Mul + Add


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldReport]:
    model = _copy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = Counter(i for n in graph.node for i in n.input)
    graph_outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}

    folded = affine = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            new_nodes.append(node)
            continue
        if len(node.output) > 1 and any(node.output[1:]):
            raise EdgeCompileError(f"BatchNormalization '{node.name}' is in training mode")
        scale, shift = _bn_affine(node, inits)
        src = node.input[0]
        prev = producer.get(src)
        if (
            prev is not None
            and prev.op_type in ("Conv", "Gemm")
            and consumers[src] == 1
            and src not in graph_outputs
            and _fold_into(prev, scale, shift, inits, graph)
        ):
            prev.output[0] = node.output[0]  # the producer now writes the BN's output
            folded += 1
        else:
            new_nodes.extend(_as_mul_add(node, scale, shift, graph))
            affine += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    _drop_stale_value_info(graph)
    onnx.checker.check_model(model)
    return model, FoldReport(folded=folded, affine=affine)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _const(name: str, inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> np.ndarray:
    if name not in inits:
        raise EdgeCompileError(
            f"BatchNormalization '{node.name}': input '{name}' is not a constant; cannot fold"
        )
    return numpy_helper.to_array(inits[name]).astype(np.float64)


def _bn_affine(node: onnx.NodeProto, inits) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (_const(n, inits, node) for n in node.input[1:5])
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    # float64 so the fold itself adds no rounding beyond the final cast to float32
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _fold_into(prev: onnx.NodeProto, scale, shift, inits, graph: onnx.GraphProto) -> bool:
    """Rewrite prev's weight and bias in place; False if prev's weights are not constants."""
    w_name = prev.input[1]
    if w_name not in inits:
        return False
    if sum(w_name in n.input for n in graph.node) > 1:
        return False  # a shared weight: scaling it would change the other user
    w = numpy_helper.to_array(inits[w_name]).astype(np.float64)
    if prev.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in prev.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        # output features are rows of B^T: rows of W when transB=1, columns otherwise
        w = w * scale[:, None] if attrs.get("transB", 0) else w * scale[None, :]
    else:
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    bias = np.zeros_like(scale)
    if len(prev.input) > 2 and prev.input[2]:
        if prev.input[2] not in inits:
            return False
        bias = numpy_helper.to_array(inits[prev.input[2]]).astype(np.float64).reshape(-1)
        if bias.shape != scale.shape:
            return False
    _set_init(graph, inits, w_name, w)
    b_name = prev.input[2] if len(prev.input) > 2 and prev.input[2] else f"{w_name}_bnfold_bias"
    _set_init(graph, inits, b_name, bias * scale + shift)
    if len(prev.input) < 3:
        prev.input.append(b_name)
    else:
        prev.input[2] = b_name
    return True


def _set_init(graph, inits, name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(value.astype(np.float32), name)
    if name in inits:
        inits[name].CopyFrom(tensor)
    else:
        graph.initializer.append(tensor)
        inits[name] = graph.initializer[-1]


def _as_mul_add(node: onnx.NodeProto, scale, shift, graph) -> list[onnx.NodeProto]:
    # BN's channel axis is 1; broadcast (C,) against (N, C, ...) via shape (C, 1, 1, ...).
    rank = _rank_of(node.input[0], graph)
    shape = (-1,) + (1,) * max(rank - 2, 0)
    s_name, t_name, mid = (f"{node.output[0]}_bn_{k}" for k in ("scale", "shift", "scaled"))
    graph.initializer.extend([
        numpy_helper.from_array(scale.reshape(shape).astype(np.float32), s_name),
        numpy_helper.from_array(shift.reshape(shape).astype(np.float32), t_name),
    ])
    return [
        helper.make_node("Mul", [node.input[0], s_name], [mid], name=f"{node.name}_scale"),
        helper.make_node("Add", [mid, t_name], [node.output[0]], name=f"{node.name}_shift"),
    ]


def _rank_of(name: str, graph: onnx.GraphProto) -> int:
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return 4  # BN in a CNN acts on NCHW unless shape inference says otherwise


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _drop_stale_value_info(graph: onnx.GraphProto) -> None:
    produced = {o for n in graph.node for o in n.output}
    keep = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)
