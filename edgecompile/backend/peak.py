"""The two kernels `edgecompile peak` times on a device: its compute and memory ceilings.

Both are compiled by the same pipeline as the models (our CPU rules, dlight on GPUs), for the
device's own target, so they measure what *this compiler* can get out of that device:

- compute: a pointwise convolution, 1024 -> 1024 channels on a 14 x 14 map (411 MFLOP, weights
  512 KB blocked for the kernel at build time): a GEMM in all but name, register-blocked by the
  channel-vector rule, the best-case kernel every model's pointwise layers use;
- bandwidth: y = 2 x + 1 over 2^23 floats (32 MiB in, 32 MiB out: past any last-level cache),
  STREAM's "scale", the vectorised parallel loop every elementwise kernel gets;
- fork-join: what the runtime's thread pool costs each parallel kernel, a floor under every
  layer whatever its schedule (a MobileNet launches 50-80 of them an inference): a chain of
  LAUNCH_CALLS kernels that each add 1 to LAUNCH_FLOATS floats in a parallel loop, timed against
  the same chain with the loop serial; the difference per call is the fork-join.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompile.backend import compiler
from edgecompile.backend.core import load_tvm

INPUT = "x"
COMPUTE_CHANNELS, COMPUTE_MAP = 1024, 14
STREAM_FLOATS = 1 << 23
LAUNCH_CALLS, LAUNCH_TASKS, LAUNCH_FLOATS = 64, 16, 1024
KINDS = ("compute", "bandwidth", "launch", "launch_serial")


def compute_flops() -> float:
    return 2.0 * COMPUTE_CHANNELS * COMPUTE_CHANNELS * COMPUTE_MAP * COMPUTE_MAP


def stream_bytes() -> float:
    return 2.0 * 4 * STREAM_FLOATS  # read once, written once


def input_shape(kind: str) -> tuple[int, ...]:
    if kind == "compute":
        return (1, COMPUTE_CHANNELS, COMPUTE_MAP, COMPUTE_MAP)
    return (LAUNCH_FLOATS,) if kind.startswith("launch") else (STREAM_FLOATS,)


def _step_kernel(parallel: bool):
    """y = x + 1 over LAUNCH_FLOATS, its outer loop parallel or serial (the parallel kernel is
    the serial one with that loop marked, so the two differ in nothing else): hand-scheduled
    (our rules would not split so little work between cores) and opaque (never fused with the
    next call)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    from edgecompile.backend.cpu_schedules.tags import OP_PATTERN_ATTR, OPAQUE, SCHEDULED_ATTR

    per = LAUNCH_FLOATS // LAUNCH_TASKS

    @T.prim_func(private=True, s_tir=True)
    def step(x: T.Buffer((LAUNCH_FLOATS,), "float32"), y: T.Buffer((LAUNCH_FLOATS,), "float32")):
        for t in range(LAUNCH_TASKS):
            for i in T.vectorized(per):
                with T.sblock("step"):
                    vt, vi = T.axis.remap("SS", [t, i])
                    y[vt * per + vi] = x[vt * per + vi] + T.float32(1)

    func = step
    if parallel:
        sch = s_tir.Schedule(step)
        sch.parallel(sch.get_loops(sch.get_sblock("step"))[0])
        func = sch.mod["main"]
    return func.with_attrs({"tirx.noalias": True, SCHEDULED_ATTR: True, OP_PATTERN_ATTR: OPAQUE})


def _module(kind: str):
    load_tvm()
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var(INPUT, relax.TensorType(list(input_shape(kind)), "float32"))
    step = bb.add_func(_step_kernel(kind == "launch"), "step") if kind.startswith("launch") else None
    with bb.function("main", [x]):
        with bb.dataflow():
            if step is not None:
                y = x
                for _ in range(LAUNCH_CALLS):
                    y = bb.emit(relax.call_tir(step, [y], relax.TensorType([LAUNCH_FLOATS], "float32")))
            elif kind == "compute":
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
    """The ``kind`` (one of KINDS) kernel compiled for the target, as a library loadable like an
    artifact's (one input named ``INPUT``)."""
    executable = compiler.compile_module(_module(kind), compiler.make_target(target, host))
    compiler.export_library(executable, out, cross_compiler)
    return out
