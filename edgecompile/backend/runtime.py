"""Run: a compiled library loaded into a Relax VM on this host or on an RPC session's device."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgecompile.backend.core import load_tvm
from edgecompile.errors import EdgeCompileError

DEVICE_INFO = "edgecompile.device_info"  # registered by our emulated devices' servers

# TVM's ThreadPool modes: 1 = big cores (all cores on a uniform CPU), -1 = little cores.
# "all" spreads over every core: big mode with as many threads as there are cores.
AFFINITY_MODES = {"default": 1, "big": 1, "little": -1, "all": 1}


class LoadedModel:
    """A compiled library loaded into a Relax VM on a (local or remote) device."""

    def __init__(self, lib, device, input_name: str, session=None, server: str = "local"):
        tvm = load_tvm()
        self._tvm = tvm
        self.device = device
        self.session = session  # keeps an RPC session alive as long as the model
        self.server = server  # "host:port" of the RPC server it runs on, or "local"
        self.input_name = input_name
        self.lib = lib
        self.vm = tvm.relax.VirtualMachine(lib, device)

    @property
    def device_info(self) -> dict:
        """What the device says of itself (``edgecompile.device_info`` on its RPC server): our
        emulated devices answer ``{"emulated": "qemu-aarch64 -cpu cortex-a72"}``; a board or
        this host have no such function, and nothing to say."""
        if self.session is None:
            return {}
        try:
            import json

            return json.loads(str(self.session.get_function(DEVICE_INFO)()))
        except Exception:  # noqa: BLE001 -- a plain TVM server: no such function
            return {}

    def put(self, x: np.ndarray):
        """Copy an input to the device once (for timing runs that should not include it)."""
        return self._tvm.runtime.tensor(np.ascontiguousarray(x), self.device)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_uploaded(self.put(x))

    def run_uploaded(self, device_input) -> np.ndarray:
        """One inference on an input already on the device (see ``put``)."""
        out = self.vm["main"](device_input)
        if not hasattr(out, "numpy"):  # a tuple of outputs: we have one
            out = out[0]
        return out.numpy()

    def time_runs(self, device_input, runs: int) -> list[float]:
        """Seconds of ``runs`` single inferences, timed on the device itself by TVM's
        evaluator, so RPC round trips and host-side Python are not part of the figure."""
        f = self.vm.time_evaluator("main", self.device, number=1, repeat=runs)
        return [float(t) for t in f(device_input).results]

    def call_times(self, device_input) -> list[tuple[str, float]]:
        """One inference with every call the VM makes timed in context: (symbol, seconds), in
        call order. TVM 0.27's Relax VM has no profiler; its instrument hook runs a Python
        function before and after each call, so this works in this process only (a separate
        VM is instrumented, so the one ``time_runs`` uses is never slowed by the hook)."""
        if self.session is not None:
            raise EdgeCompileError("in-context kernel timing runs on this host only: TVM 0.27's "
                                   "VM cannot be instrumented over RPC")
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

    def time_kernels(self, kernels_lib: Path, kernels: list[dict], repeat: int = 5,
                     min_repeat_ms: int = 5) -> dict[str, float]:
        """Seconds per call of each kernel (``kernels``: the artifact's kernel table rows), on
        this model's device and thread pool, by TVM's evaluator on the device itself: the
        median of ``repeat`` means, each over enough calls to last ``min_repeat_ms``.

        Each kernel runs alone on random inputs (warm caches, no VM between calls), so the sum
        can differ from an inference by what the VM costs and by cache effects between layers.
        """
        tvm = self._tvm
        if self.session is not None:
            self.session.upload(str(kernels_lib))
            mod = self.session.load_module(Path(kernels_lib).name)
        else:
            mod = tvm.runtime.load_module(str(kernels_lib))
        rng = np.random.default_rng(0)
        times = {}
        for k in kernels:
            args = [tvm.runtime.tensor(_random_array(rng, a["shape"], a["dtype"]), self.device)
                    for a in k["args"]]
            f = mod.time_evaluator(k["name"], self.device, number=1, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
            times[k["name"]] = float(np.median(f(*args).results))
        return times

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


def _random_array(rng, shape, dtype: str) -> np.ndarray:
    if "float" in dtype:
        return rng.uniform(-1, 1, shape).astype(dtype)
    return np.zeros(shape, dtype)  # indices, shapes: zero is always in range


def _device(tvm_or_session, device: str):
    # The tvm module names OpenCL devices `opencl`, an RPC session names them `cl`.
    names = {"cpu": ("cpu",), "opencl": ("opencl", "cl"), "cuda": ("cuda",)}[device]
    attr = next(n for n in names if hasattr(tvm_or_session, n))
    return getattr(tvm_or_session, attr)(0)


def first_line(e: Exception) -> str:
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
        raise EdgeCompileError(f"the device could not load {Path(lib_path).name}: {first_line(e)}") from None


def load_local(lib_path: Path, device: str, input_name: str) -> LoadedModel:
    tvm = load_tvm()
    if device == "opencl":
        # The PyPI runtime has no OpenCL; our plug-in (built on first use) provides it.
        from edgecompile.backend.opencl import ensure_loaded

        ensure_loaded()
    dev = _device(tvm, device)
    if not dev.exist:
        raise EdgeCompileError(f"no {device} device on this host")
    lib = tvm.runtime.load_module(str(lib_path))
    return LoadedModel(lib, dev, input_name)
