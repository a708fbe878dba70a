"""Stage 2: onnxsim simplification, with its own numeric check."""

from __future__ import annotations

import onnx
import onnxsim

from edgecompile.errors import EdgeCompileError

# onnxsim compares the original and simplified graphs in onnxruntime on random inputs.
CHECK_RUNS = 2


def simplify_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    # skip_fuse_bn: BN folding is our stage 3, so it is proven on graphs that carry BN.
    try:
        simplified, ok = onnxsim.simplify(model, check_n=CHECK_RUNS, skip_fuse_bn=True)
    except Exception as e:
        raise EdgeCompileError(f"onnxsim failed: {str(e).splitlines()[0]}") from e
    if not ok:
        raise EdgeCompileError("onnxsim: the simplified graph's outputs differ from the original")
    onnx.checker.check_model(simplified)
    return simplified
