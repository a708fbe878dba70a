"""Our OpenCL runtime plug-in (edgecompile.devices.opencl_runtime), loaded into this process's TVM."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from edgecompile.backend.core import load_tvm
from edgecompile.devices.opencl_runtime import ensure_built

_LOCK = threading.Lock()
_HANDLE: ctypes.CDLL | None = None
_LOADED_PATH: Path | None = None


def _registered() -> bool:
    return load_tvm().get_global_func("device_api.opencl", allow_missing=True) is not None


def ensure_loaded(lib_dir: Path | None = None) -> Path | None:
    """Make ``tvm.opencl(...)`` usable in this process; return the plug-in that was loaded.

    Imports tvm first (the plug-in resolves its TVM symbols from the ``RTLD_GLOBAL``-loaded
    ``libtvm_runtime.so`` / ``libtvm_ffi.so``), then loads ``lib_dir/libtvm_runtime_opencl.so``
    (building it there, or in the cache dir, when missing) with ctypes; its static initialisers
    register the global functions.  Idempotent.  If an OpenCL runtime is registered already (a
    TVM build with OpenCL, or this plug-in picked up through ``LD_LIBRARY_PATH``) nothing else is
    loaded and None is returned, unless this function loaded it earlier.
    """
    global _HANDLE, _LOADED_PATH
    load_tvm()  # loads libtvm_ffi / libtvm_runtime RTLD_GLOBAL before the plug-in
    from tvm.base import _LOADED_LIBS

    with _LOCK:
        if _HANDLE is not None:
            return _LOADED_PATH
        if _registered():
            return None
        path = ensure_built(lib_dir)
        handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        if not _registered():
            raise RuntimeError(f"{path} loaded but did not register device_api.opencl")
        _LOADED_LIBS["tvm_runtime_opencl"] = handle  # same slot tvm.backend.opencl uses
        _HANDLE, _LOADED_PATH = handle, path
        return path


def describe() -> str:
    """Which OpenCL library the plug-in opened and which devices it sees."""
    f = load_tvm().get_global_func("edgecompile.opencl.describe", allow_missing=True)
    if f is None:
        return "the edgecompile OpenCL plug-in is not loaded"
    return str(f())


def remote_device(session, where: str) -> dict:
    """OpenCL device 0 of an RPC session: its name, driver and limits. One line, naming the
    server, where the server has no OpenCL runtime (started without our plug-in) or the runtime
    finds no OpenCL device there."""
    from edgecompile.errors import EdgeCompileError

    try:
        session.get_function("device_api.opencl")
    except Exception:  # noqa: BLE001 -- TVM raises AttributeError or its own error type
        raise EdgeCompileError(
            f"the RPC server at {where} has no OpenCL runtime: start it with our plug-in, "
            "`python -m tvm.exec.rpc_server --load-library DIR/libtvm_runtime_opencl.so ...` "
            "(`python -m edgecompile.devices.opencl_runtime.build --out DIR` builds it)") from None
    dev = session.device("opencl", 0)
    if not dev.exist:
        try:
            seen = str(session.get_function("edgecompile.opencl.describe")()).strip()
        except Exception:  # noqa: BLE001 -- another OpenCL runtime than ours: no description
            seen = "no OpenCL device"
        raise EdgeCompileError(f"the device at {where} has no OpenCL device to tune on "
                               f"({' '.join(seen.split())[:200]})")
    return {"name": str(dev.device_name), "driver": str(dev.driver_version),
            "max_threads_per_block": int(dev.max_threads_per_block),
            "max_shared_memory_per_block": int(dev.max_shared_memory_per_block),
            "compute_units": int(dev.multi_processor_count)}
