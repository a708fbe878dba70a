"""The two kernels `edgecompile peak` times on a device: its compute and memory ceilings.

Both are compiled by the same pipeline as the models (our CPU rules, dlight on GPUs), for the
device's own target, so they measure what *this compiler* can get out of that device:

- compute: a pointwise convolution, 1024 -> 1024 channels on a 14 x 14 map (411 MFLOP, weights
  512 KB blocked for the kernel at build time): a GEMM in all but name, register-blocked by the
  channel-vector rule, the best-case kernel every model's pointwise layers use;
- bandwidth: y = 2 x + 1 over 2^23 floats (32 MiB in, 32 MiB out: past any last-level cache),
  STREAM's "scale", the vectorised parallel loop every elementwise kernel gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompile.backend import compiler
from edgecompile.backend.core import load_tvm

INPUT = "x"
COMPUTE_CHANNELS, COMPUTE_MAP = 1024, 14
STREAM_FLOATS = 1 << 23


def compute_flops() -> float:
    return 2.0 * COMPUTE_CHANNELS * COMPUTE_CHANNELS * COMPUTE_MAP * COMPUTE_MAP


def stream_bytes() -> float:
    return 2.0 * 4 * STREAM_FLOATS  # read once, written once


def input_shape(kind: str) -> tuple[int, ...]:
    return (1, COMPUTE_CHANNELS, COMPUTE_MAP, COMPUTE_MAP) if kind == "compute" else (STREAM_FLOATS,)


def _module(kind: str):
    load_tvm()
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var(INPUT, relax.TensorType(list(input_shape(kind)), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if kind == "compute":
                rng = np.random.default_rng(0)
                w = rng.uniform(-0.05, 0.05, (COMPUTE_CHANNELS, COMPUTE_CHANNELS, 1, 1)).astype("float32")
                y = bb.emit(relax.op.nn.conv2d(x, relax.const(w)))
            else:
                y = bb.emit(relax.op.add(relax.op.multiply(x, relax.const(2.0, "float32")),
                                         relax.const(1.0, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def build_peak_library(kind: str, target: dict, host: dict | None, out: Path,
                       cross_compiler: str | None = None) -> Path:
    """The ``kind`` ("compute" or "bandwidth") kernel compiled for the target, as a library
    loadable like an artifact's (one input named ``INPUT``)."""
    executable = compiler.compile_module(_module(kind), compiler.make_target(target, host))
    compiler.export_library(executable, out, cross_compiler)
    return out
