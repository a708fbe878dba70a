"""ONNX Runtime as the reference executor of an ONNX graph (CPU provider)."""

from __future__ import annotations

import numpy as np
import onnx


def session(model: onnx.ModelProto | str, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto | str, inputs: np.ndarray) -> np.ndarray:
    """Run each row of ``inputs`` (N, C, H, W) as a batch-1 call; returns (N, classes)."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[None]})[0] for x in inputs])
