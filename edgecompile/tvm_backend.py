"""Every call into Apache TVM lives here.

TVM moved its Python APIs twice in a year (Relay -> Relax, tvm.contrib -> tvm.support,
meta_schedule -> s_tir.meta_schedule); keeping them in one module means the next move is
absorbed in one place. Nothing outside this file imports ``tvm``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecompile.errors import EdgeCompileError


def physical_cores() -> int:
    """Cores this process may use, SMT siblings counted once: what ONNX Runtime and PyTorch
    run on by default."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def _tvm():
    # TVM sizes its CPU thread pool once, from TVM_NUM_THREADS or, on x86, *half* the logical
    # CPUs (it assumes SMT): a 2-core VM without SMT got one thread, and config_threadpool
    # cannot grow the pool later, so `--threads 2` silently ran on one. Size it from the real
    # core count before anything starts the pool (RPC servers we start inherit it).
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
    # Imported lazily: `edgecompile list` and the CLI's error paths should not pay TVM's import.
    import tvm
    import tvm.relax  # noqa: F401

    return tvm


def warm_import() -> None:
    _tvm()


def version() -> str:
    return _tvm().__version__


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. 'skylake-avx512')."""
    tvm = _tvm()
    return str(tvm.target.codegen.llvm_get_system_cpu())


def resolve_target(target: dict[str, Any]) -> dict[str, Any]:
    """Replace the 'native' CPU with this host's, and return the target as TVM canonicalises it."""
    target = dict(target)
    if target.get("mcpu") == "native":
        target["mcpu"] = host_cpu()
    return target


def make_target(target: dict[str, Any], host: dict[str, Any] | None = None):
    tvm = _tvm()
    try:
        t = tvm.target.Target(resolve_target(target))
        return tvm.target.Target(t, host=tvm.target.Target(resolve_target(host))) if host else t
    except Exception as e:  # TVM raises plain ValueError/TVMError with long C++ traces
        raise EdgeCompileError(f"TVM rejected target {target}: {str(e).splitlines()[0]}") from None


def target_to_dict(target) -> dict[str, Any]:
    """The full target TVM will use (every default filled in), JSON-ready for the manifest."""
    # A Target prints as its canonical JSON, host included.
    return json.loads(str(target))


def import_onnx(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...]):
    """ONNX -> Relax IRModule with weights bound as constants (so the compiler can fold them)."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(model, shape_dict={input_name: list(shape)}, keep_params_in_input=False)
    except Exception as e:
        raise EdgeCompileError(f"TVM could not import the ONNX graph: {str(e).splitlines()[0]}") from e


GUARDED = "guarded"  # our GPU pipeline: dlight rules that fail pass the function on


def compile_module(mod, target, pipeline: str = "default"):
    """Relax module -> executable. The "default" pipeline legalises, fuses and, for GPU
    targets, applies dlight's GPU schedules (thread binding) to every kernel. On a GPU target
    where that fails inside a dlight rule, the guarded pipeline is used instead."""
    tvm = _tvm()
    if pipeline == GUARDED:
        return tvm.compile(mod, target=target, relax_pipeline=_guarded_gpu_pipeline(target))
    try:
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except AssertionError:
        # Seen: dlight's GEMV rule asserts on a small classifier kernel (10 classes at 32 px)
        # and takes the whole compile down with it.
        if pipeline != "default" or "gpu" not in [str(k) for k in target.keys]:
            raise
        return tvm.compile(mod, target=target, relax_pipeline=_guarded_gpu_pipeline(target))


def _guarded_gpu_pipeline(target):
    """TVM's generic GPU pipeline, except that a dlight rule which raises on a function is
    skipped for it (the next rule, at worst Fallback, schedules it). A function no rule can
    schedule stays host code, which device_kernels() then reports."""
    tvm = _tvm()
    from tvm.relax.backend.gpu_generic import pipeline as gpu
    from tvm.s_tir import dlight as dl

    class Guarded(dl.ScheduleRule):
        def __init__(self, rule):
            self.rule = rule

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:
                return None

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
             dl.gpu.Fallback()]
    legalize = gpu.legalize_passes(target)[:-1] + [dl.ApplyDefaultSchedule(*map(Guarded, rules))]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                gpu.library_dispatch_passes(target) + legalize
                + gpu.dataflow_lower_passes(target) + gpu.finalize_passes(target)
            )(mod)

    return _pipeline


NDK = "ndk"  # the cross_compiler value that means TVM's Android NDK linker


def check_linker(cross_compiler: str | None, library_format: str) -> None:
    """Fail before any work when the library cannot be linked on this machine."""
    if cross_compiler is None or library_format == "tar":
        return
    if cross_compiler == NDK:
        if "TVM_NDK_CC" not in os.environ:
            raise EdgeCompileError(
                "this target links with the Android NDK, and none is configured: set TVM_NDK_CC "
                "to the NDK's clang++ (e.g. $ANDROID_NDK_HOME/toolchains/llvm/prebuilt/"
                "linux-x86_64/bin/aarch64-linux-android28-clang++), or build with "
                "--library-format tar and link the objects where the NDK is installed"
            )
    elif shutil.which(cross_compiler) is None:
        raise EdgeCompileError(
            f"cross compiler '{cross_compiler}' not found on PATH "
            "(Debian: apt-get install g++-aarch64-linux-gnu; the setup script installs it)"
        )


def export_library(executable, path: Path, cross_compiler: str | None = None) -> None:
    """Write the executable as a shared library (.so), cross-compiling where the target needs
    it, or as a .tar of object files that needs no linker here."""
    tvm = _tvm()
    fmt = Path(path).suffix.lstrip(".")
    check_linker(cross_compiler, fmt)
    if cross_compiler is None or fmt == "tar":
        executable.export_library(str(path))
    elif cross_compiler == NDK:
        executable.export_library(str(path), fcompile=tvm.support.ndk.create_shared)
    else:
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler))


def device_kernels(executable, device: str) -> dict[str, Any]:
    """Which compute functions became device kernels, and which stayed on the host.

    TVM 0.27 silently leaves a PrimFunc as host code when no GPU schedule applies to it, so a
    GPU artifact can "work" while running on the CPU. Every host-side function `f` is a
    launcher (``__tvm_ffi_f``) that must have a kernel ``f_kernel*`` in the device module.
    """
    if device == "cpu":
        return {}
    host = executable.mod.imports[0]
    dev_mods = [m for m in _walk(host) if m.kind == device]
    source = "".join(m.inspect_source() for m in dev_mods)
    # OpenCL C kernels are `__kernel void name(`, CUDA C kernels `__global__ void name(`.
    kernels = sorted(set(re.findall(r"(?:__kernel|__global__) void (\w+)\(", source)))
    launchers = sorted(set(re.findall(r"define [^@]*@__tvm_ffi_(\w+)\(", host.inspect_source("ll"))))
    on_host = [f for f in launchers if not any(k.startswith(f"{f}_kernel") for k in kernels)]
    return {"module": device, "kernels": len(kernels), "functions": len(launchers),
            "on_host": on_host, "source_bytes": len(source)}


def _walk(mod):
    yield mod
    for m in mod.imports:
        yield from _walk(m)


def can_run_here(target: dict[str, Any]) -> bool:
    """Whether code for this (CPU) target runs on this machine: same architecture, and every
    instruction-set extension it may use is present here."""
    tvm = _tvm()
    if target.get("kind") != "llvm":
        return False
    triple = target.get("mtriple", "")
    if triple and not triple.startswith("x86_64"):
        return False
    from tvm.target import codegen

    def isa(t: dict[str, Any]) -> set[str]:
        feats = {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(t))}
        # tuning flags (e.g. 'false-deps-popcnt') are not instructions
        return {f for f in feats if re.match(r"(avx|sse|fma|f16c|amx|bmi|vaes|vpclmul|gfni)", f)}

    here = {"kind": "llvm", "mcpu": host_cpu()}
    return isa(resolve_target(target)) <= isa(here)


# TVM's ThreadPool modes: 1 = big cores (all cores on a uniform CPU), -1 = little cores.
# "all" spreads over every core: big mode with as many threads as there are cores.
AFFINITY_MODES = {"default": 1, "big": 1, "little": -1, "all": 1}


class LoadedModel:
    """A compiled library loaded into a Relax VM on a (local or remote) device."""

    def __init__(self, lib, device, input_name: str, session=None, server: str = "local"):
        tvm = _tvm()
        self._tvm = tvm
        self.device = device
        self.session = session  # keeps an RPC session alive as long as the model
        self.server = server  # "host:port" of the RPC server it runs on, or "local"
        self.input_name = input_name
        self.lib = lib
        self.vm = tvm.relax.VirtualMachine(lib, device)

    def put(self, x: np.ndarray):
        """Copy an input to the device once (for timing runs that should not include it)."""
        return self._tvm.runtime.tensor(np.ascontiguousarray(x), self.device)

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.vm["main"](self.put(x))
        if not hasattr(out, "numpy"):  # a tuple of outputs: we have one
            out = out[0]
        return out.numpy()

    def time_runs(self, device_input, runs: int) -> list[float]:
        """Seconds of ``runs`` single inferences, timed on the device itself by TVM's
        evaluator, so RPC round trips and host-side Python are not part of the figure."""
        f = self.vm.time_evaluator("main", self.device, number=1, repeat=runs)
        return [float(t) for t in f(device_input).results]

    def call_times(self, device_input) -> list[tuple[str, float]]:
        """One inference with every call the VM makes timed: (symbol, seconds), in call order.

        TVM 0.27's Relax VM has no profiler; its instrument hook runs a Python function before
        and after each call, so this works for a VM in this process only. A separate VM is
        instrumented, so the one ``time_runs`` uses is never slowed by the hook.
        """
        if self.session is not None:
            raise EdgeCompileError("per-kernel timing runs on this host only: TVM 0.27's VM "
                                   "cannot be instrumented over RPC (bench the device without it)")
        vm = self._tvm.relax.VirtualMachine(self.lib, self.device)
        calls: list[tuple[str, float]] = []
        started = [0.0]

        def instrument(_func, symbol, before_run, _ret, *_args):
            now = time.perf_counter()
            if before_run:
                started[0] = now
            else:
                calls.append((str(symbol), now - started[0]))
            return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

        vm.set_instrument(instrument)
        vm["main"](device_input)
        return calls

    def _global(self, name: str):
        if self.session is not None:
            return self.session.get_function(name)
        return self._tvm.get_global_func(name)

    def configure_threads(self, threads: int | None, affinity: str) -> int:
        """Set the device's thread pool; returns the thread count it then runs with.
        affinity: "default" (leave it), "big" / "little" (big.LITTLE clusters), "all"."""
        if threads is not None or affinity != "default":
            mode = AFFINITY_MODES[affinity]
            self._global("runtime.config_threadpool")(mode, threads or 0)
        running = int(self._global("runtime.NumThreads")())
        if threads is not None and running < threads:
            # The pool was sized when the runtime started (TVM_NUM_THREADS of that process).
            where = "the device's RPC server" if self.session is not None else "this process"
            raise EdgeCompileError(
                f"asked for {threads} threads, but TVM's thread pool in {where} has {running}: "
                f"start it with TVM_NUM_THREADS={threads}")
        return running


def _device(tvm_or_session, device: str):
    # The tvm module names OpenCL devices `opencl`, an RPC session names them `cl`.
    names = {"cpu": ("cpu",), "opencl": ("opencl", "cl"), "cuda": ("cuda",)}[device]
    attr = next(n for n in names if hasattr(tvm_or_session, n))
    return getattr(tvm_or_session, attr)(0)


def open_session(spec, on_lease=None):
    """(RPC session, "host:port" of the server it reached) for a DeviceSpec: a direct server,
    or a device leased from a tracker under the spec's key. ``on_lease(server)`` is called as
    soon as the server is known, before connecting (a frozen server hangs the handshake)."""
    from tvm import rpc

    from edgecompile.device import check_reachable, parse_hostport

    if spec.rpc:
        check_reachable(spec.rpc, "RPC server", spec.timeout_s)
        host, port = parse_hostport(spec.rpc, "--rpc")
        if on_lease:
            on_lease(spec.rpc)
        try:
            session = _within(spec.timeout_s, lambda: rpc.connect(host, port, session_timeout=0),
                              f"RPC server {spec.rpc} accepted the connection but did not answer")
            return session, spec.rpc
        except EdgeCompileError:
            raise
        except Exception as e:
            raise EdgeCompileError(
                f"RPC server {spec.rpc} refused the session: {_first_line(e)}"
            ) from None
    check_reachable(spec.tracker, "tracker", spec.timeout_s)
    host, port = parse_hostport(spec.tracker, "--tracker")
    tracker = rpc.connect_tracker(host, port)
    keys = tracker_keys(tracker)
    if spec.key not in keys:
        # TVM's request() would wait forever for a device that never registers.
        known = ", ".join(sorted(keys)) or "none"
        raise EdgeCompileError(
            f"no device registered under key '{spec.key}' at tracker {spec.tracker} "
            f"(keys there: {known})"
        )
    try:
        return _within(spec.timeout_s, lambda: _lease(tracker, spec.key, on_lease),
                       f"no device under key '{spec.key}' at tracker {spec.tracker} answered")
    except EdgeCompileError:
        raise
    except Exception as e:
        raise EdgeCompileError(
            f"tracker {spec.tracker} gave no working device for key '{spec.key}': {_first_line(e)}"
        ) from None


def _within(timeout_s: float, call, what: str):
    """``call()`` or a one-line error after ``timeout_s``: TVM's client blocks forever on a
    server that accepts a connection and then never answers (frozen, or wedged)."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise EdgeCompileError(f"{what} within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _lease(tracker, key: str, on_lease=None):
    """TrackerSession.request, keeping the address of the server the tracker picked (the
    farm records which device ran each job). Same protocol as TVM's client: REQUEST, then
    connect with the match key. Blocks until a device under ``key`` is free."""
    from tvm import rpc
    from tvm.rpc import base

    if tracker._sock is None:
        tracker._connect()
    base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, key, "", 1])
    value = base.recvjson(tracker._sock)
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"tracker answered {value!s}")
    url, port, matchkey = value[1]
    if on_lease:
        on_lease(f"{url}:{port}")
    return rpc.connect(url, port, matchkey, 0), f"{url}:{port}"


def _tracker(address: str):
    from tvm import rpc

    from edgecompile.device import check_reachable, parse_hostport

    check_reachable(address, "tracker", 10.0)
    host, port = parse_hostport(address, "--tracker")
    return rpc.connect_tracker(host, port)


def tracker_key_counts(address: str) -> dict[str, int]:
    return tracker_keys(_tracker(address))


def tracker_servers(address: str, key: str) -> set[str]:
    """"host:port" of every server registered under ``key``."""
    return {
        f"{info['addr'][0]}:{info['addr'][1]}"
        for info in _tracker(address).summary().get("server_info", [])
        if str(info.get("key", "")).removeprefix("server:") == key
    }


def tracker_keys(tracker) -> dict[str, int]:
    """key -> number of servers registered under it (free or busy)."""
    summary = tracker.summary()
    counts: dict[str, int] = {}
    for info in summary.get("server_info", []):
        key = str(info.get("key", "")).removeprefix("server:")
        counts[key] = counts.get(key, 0) + 1
    return counts


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(e).__name__)[:300]


def load_remote(session, lib_path: Path, device: str, input_name: str,
                server: str = "") -> LoadedModel:
    """Upload the library to the device, load it there, and wrap it in a VM."""
    try:
        session.upload(str(lib_path))
        lib = session.load_module(Path(lib_path).name)
        return LoadedModel(lib, _device(session, device), input_name, session=session, server=server)
    except EdgeCompileError:
        raise
    except Exception as e:
        raise EdgeCompileError(f"the device could not load {Path(lib_path).name}: {_first_line(e)}") from None


def load_local(lib_path: Path, device: str, input_name: str) -> LoadedModel:
    tvm = _tvm()
    if device == "opencl":
        # The PyPI runtime has no OpenCL; our plug-in (built on first use) provides it.
        from edgecompile.opencl_runtime import ensure_loaded

        ensure_loaded()
    dev = _device(tvm, device)
    if not dev.exist:
        raise EdgeCompileError(f"no {device} device on this host")
    lib = tvm.runtime.load_module(str(lib_path))
    return LoadedModel(lib, dev, input_name)
