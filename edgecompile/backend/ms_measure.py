"""MetaSchedule's builders and runners: how candidates are built here and timed here or on a
device over RPC."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from edgecompile.backend import compiler
from edgecompile.backend.metaschedule import ms_module


def _build_candidate(mod, target, _params):
    """MetaSchedule's default_build without ``import tvm.s_tir.tensor_intrin``.

    That import (tensor intrinsics for every GPU/accelerator) takes 25-60 s in each fresh builder
    worker; with the default 30 s timeout every candidate failed to build and tuning measured
    nothing. fp32 CPU schedules use no tensor intrinsics.
    """
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    if compiler.is_cpu(target):
        # The TIR pipeline of our CPU builds: a candidate is timed as a build would compile it.
        from edgecompile.backend.cpu_schedules import TIR_PIPELINE

        return tvm.compile(mod, target=target, tir_pipeline=TIR_PIPELINE)
    return tvm.compile(mod, target=target)


def _export_candidate(mod, cross_compiler: str | None = None) -> str:
    """A built candidate -> a file the runner loads: a tar of objects here, a shared library
    linked with the target's cross compiler for a remote device."""
    if hasattr(mod, "mod") and not hasattr(mod, "export_library"):
        mod = mod.mod
    path = Path(tempfile.mkdtemp(prefix="ec-ms-")) / ("cand.tar" if cross_compiler is None else "cand.so")
    compiler.export_library(mod, path, cross_compiler)
    return str(path)


def make_builder(workers: int, timeout_s: float = 120.0, cross_compiler: str | None = None):
    ms = ms_module()
    return ms.builder.LocalBuilder(
        max_workers=workers, timeout_sec=timeout_s, f_build=_build_candidate,
        f_export=functools.partial(_export_candidate, cross_compiler=cross_compiler),
    )


def make_inprocess_builder(workers: int, cross_compiler: str | None = None):
    """Builds candidates in this process, ``workers`` threads at a time: no worker pool to
    start (and no TVM import in it) for each batch, which dominates small batches."""
    ms = ms_module()
    from concurrent.futures import ThreadPoolExecutor

    from tvm.ir.utils import derived_object

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            super().__init__()

        def build(self, build_inputs):
            def one(bi):
                try:
                    rt = _build_candidate(bi.mod, bi.target, None)
                    return ms.builder.BuilderResult(_export_candidate(rt, cross_compiler), None)
                except Exception as e:  # noqa: BLE001 -- a candidate that fails to build
                    return ms.builder.BuilderResult(None, f"build failed: {e}")

            with ThreadPoolExecutor(max(1, workers)) as ex:
                return list(ex.map(one, build_inputs))

    return _InProcessBuilder()


def _evaluator(number: int, repeat: int, min_repeat_ms: int):
    ms = ms_module()
    return ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                     enable_cpu_cache_flush=False)


def make_local_runner(number: int = 3, repeat: int = 1, min_repeat_ms: int = 50, timeout_s: float = 60):
    ms = ms_module()
    return ms.runner.LocalRunner(timeout_sec=timeout_s,
                                 evaluator_config=_evaluator(number, repeat, min_repeat_ms))


def _connect_direct(_rpc_config, host: str, port: int):
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=0)


def _alloc_arguments(session, device, args_info, alloc_repeat):
    """Candidates' inputs for a remote device: filled there by TVM's random fill when the
    device has it, else filled here and uploaded. A runtime-only TVM install (a board's
    ``pip install apache-tvm`` without the compiler library) does not load the random fill,
    and MetaSchedule's default then fails every measurement."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except AttributeError:
        rng = np.random.default_rng(0)

        def fill(arr):  # values do not matter for timing; integers stay small (indices)
            data = (rng.uniform(-1, 1, arr.shape) if "float" in str(arr.dtype)
                    else rng.integers(0, 2, arr.shape))
            arr.copyfrom(data.astype(str(arr.dtype)))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def make_rpc_runner(tracker: str | None, key: str | None, rpc: str | None, workers: int,
                    number: int = 3, repeat: int = 1, min_repeat_ms: int = 50, timeout_s: float = 120):
    """Candidates measured on remote devices: every device under ``key`` at ``tracker`` in
    parallel (``workers`` of them), or one server reached directly with ``rpc``."""
    ms = ms_module()
    from edgecompile.devices.net import parse_hostport

    if tracker:
        host, port = parse_hostport(tracker, "--tracker")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                     session_timeout_sec=int(timeout_s))
        f_session = None
    else:
        host, port = parse_hostport(rpc, "--rpc")
        # No tracker: f_create_session connects directly. RPCConfig still insists on tracker
        # fields (an unset one is looked up in the environment and raises), so it gets the
        # server's own address, which nothing reads.
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                     session_timeout_sec=int(timeout_s))
        f_session = functools.partial(_connect_direct, host=host, port=port)
        workers = 1
    return ms.runner.RPCRunner(rpc_config=config,
                               evaluator_config=_evaluator(number, repeat, min_repeat_ms),
                               f_create_session=f_session, f_alloc_argument=_alloc_arguments,
                               max_workers=max(1, workers))
