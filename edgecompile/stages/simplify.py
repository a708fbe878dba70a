"""Stage 2: onnxsim simplification, with its own numeric check."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import onnx
import onnxsim

from edgecompile.errors import EdgeCompileError

# onnxsim compares the original and simplified graphs in onnxruntime on random inputs.
CHECK_RUNS = 2


def simplify_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    # skip_fuse_bn: BN folding is our stage 3, so it is proven on graphs that carry BN.
    try:
        with _stdout_to_stderr():
            simplified, ok = onnxsim.simplify(model, check_n=CHECK_RUNS, skip_fuse_bn=True)
    except Exception as e:
        raise EdgeCompileError(f"onnxsim failed: {str(e).splitlines()[0]}") from e
    if not ok:
        raise EdgeCompileError("onnxsim: the simplified graph's outputs differ from the original")
    onnx.checker.check_model(simplified)
    return simplified


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """onnxsim's C++ core prints its progress on fd 1; keep our stdout for results only."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
