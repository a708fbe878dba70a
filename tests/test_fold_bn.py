"""BN folding on graphs that really carry BatchNormalization nodes, checked in onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.errors import EdgeCompileError
from edgecompile.pipeline import numerics, ort
from edgecompile.pipeline.stages.fold_bn import count_ops, fold_batchnorm

rng = np.random.default_rng(0)


def _bn_inits(prefix: str, c: int) -> list[onnx.TensorProto]:
    # Non-trivial statistics: a fold that ignored any one of them would change the outputs.
    vals = {
        "gamma": rng.uniform(0.5, 1.5, c), "beta": rng.uniform(-1, 1, c),
        "mean": rng.uniform(-1, 1, c), "var": rng.uniform(0.2, 3, c),
    }
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in vals.items()]


def _bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in
                            ("gamma", "beta", "mean", "var")], [y], name=prefix, epsilon=1e-3)


def _model(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return onnx.shape_inference.infer_shapes(m)


def _assert_same(before, after, shape):
    x = rng.standard_normal((3, *shape[1:])).astype(np.float32)
    cmp = numerics.compare(ort.run_onnx(before, x), ort.run_onnx(after, x))
    assert cmp.max_abs_diff < 1e-5 * max(1, cmp.scale), cmp


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv_bn_is_folded_into_the_conv(bias, groups):
    w = numpy_helper.from_array(rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32), "w")
    inits = [w] + _bn_inits("bn", 8)
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], group=groups),
             _bn("bn", "c", "y")]
    m = _model(nodes, inits, [1, 8, 6, 6], [1, 8, 6, 6])
    folded, report = fold_batchnorm(m)
    assert (report.folded, report.affine) == (1, 0)
    assert count_ops(folded, "BatchNormalization") == 0
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    _assert_same(m, folded, [1, 8, 6, 6])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_is_folded_for_both_weight_layouts(trans_b):
    wshape = (16, 5) if trans_b else (5, 16)
    inits = [numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")]
    inits += _bn_inits("bn", 16)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b), _bn("bn", "g", "y")]
    m = _model(nodes, inits, [1, 5], [1, 16])
    folded, report = fold_batchnorm(m)
    assert report.folded == 1 and count_ops(folded, "BatchNormalization") == 0
    _assert_same(m, folded, [1, 5])


def test_bn_without_a_foldable_producer_becomes_mul_add():
    # BN directly on the input (and after a Relu): nothing to fold into, still no BN left.
    inits = _bn_inits("bn1", 4) + _bn_inits("bn2", 4)
    nodes = [_bn("bn1", "x", "a"), helper.make_node("Relu", ["a"], ["r"]), _bn("bn2", "r", "y")]
    m = _model(nodes, inits, [1, 4, 5, 5], [1, 4, 5, 5])
    folded, report = fold_batchnorm(m)
    assert (report.folded, report.affine) == (0, 2)
    assert count_ops(folded, "BatchNormalization") == 0
    _assert_same(m, folded, [1, 4, 5, 5])


def test_conv_output_used_twice_is_not_folded_in_place():
    # The conv's output also feeds the graph's other branch: scaling its weights would change it.
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")]
    inits += _bn_inits("bn", 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("bn", "c", "b"),
             helper.make_node("Add", ["b", "c"], ["y"])]
    m = _model(nodes, inits, [1, 4, 3, 3], [1, 4, 3, 3])
    folded, report = fold_batchnorm(m)
    assert (report.folded, report.affine) == (0, 1)
    _assert_same(m, folded, [1, 4, 3, 3])


def test_bn_with_runtime_statistics_is_refused():
    inits = _bn_inits("bn", 4)[:3]  # 'var' comes from the graph input instead
    g = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "bn_gamma", "bn_beta", "bn_mean", "v"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(EdgeCompileError, match="not a constant"):
        fold_batchnorm(m)
