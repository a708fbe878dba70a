"""OpenCL runtime plug-in for the PyPI ``apache-tvm`` wheel.

The wheel's runtime has no OpenCL support: ``tvm.opencl(0).exist`` is False and a library
compiled for an OpenCL target (Mali, Adreno) cannot be loaded.  At ``import tvm``, TVM looks
for a plug-in ``libtvm_runtime_opencl.so`` (``tvm.backend.opencl``) and the wheel ships none.
This package holds a small one (C++ sources beside this file) that registers

* ``device_api.opencl``                 the DeviceAPI for ``kDLOpenCL`` (alloc/free/copy/sync),
* ``ffi.Module.load_from_bytes.opencl`` loads the OpenCL module embedded in an exported library,
* ``ffi.Module.create.opencl``          lets ``tvm.compile`` produce a runnable OpenCL module,

and opens ``libOpenCL.so.1`` with dlopen at run time (no link-time OpenCL dependency).

In this process::

    from edgecompile.opencl_runtime import ensure_loaded
    ensure_loaded()              # builds into a cache dir on first use, then loads it
    import tvm; tvm.opencl(0).exist   # True with any OpenCL ICD (pocl, Mali, Adreno)

In another process (an RPC server on the board), either

* ``python -m tvm.exec.rpc_server --load-library /abs/path/libtvm_runtime_opencl.so ...``
  (each session's server process loads it with ctypes after ``import tvm``), or
* ``LD_LIBRARY_PATH=<dir of the plug-in> python -m tvm.exec.rpc_server ...``: TVM's own backend
  autoload (``tvm.backend.opencl``) searches ``LD_LIBRARY_PATH`` for ``libtvm_runtime_opencl.so``
  at ``import tvm``.  :func:`process_env` returns such an environment.

Environment variables read by the plug-in: ``EDGECOMPILE_OPENCL_LIBRARY`` (path/soname of the
OpenCL library to open), ``EDGECOMPILE_OPENCL_DEVICE_TYPE`` (gpu|cpu|accelerator|all; default:
GPUs if any, else all devices), ``EDGECOMPILE_OPENCL_BUILD_OPTIONS`` (passed to clBuildProgram).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

# build.py is imported lazily: it also runs as ``python -m edgecompile.opencl_runtime.build``,
# and importing it here first would make runpy warn about a module already in sys.modules.
LIB_NAME = "libtvm_runtime_opencl.so"

__all__ = [
    "LIB_NAME",
    "default_lib_dir",
    "describe",
    "ensure_built",
    "ensure_loaded",
    "process_env",
    "rpc_server_args",
]

_LOCK = threading.Lock()
_HANDLE: ctypes.CDLL | None = None
_LOADED_PATH: Path | None = None


def default_lib_dir() -> Path:
    """Cache directory of the host build: ``edgecompile.paths.cache_dir()``, then
    ``opencl_runtime/<hash of sources, compiler and header paths>``."""
    from edgecompile.paths import cache_dir

    from .build import source_digest

    return cache_dir() / "opencl_runtime" / source_digest()


def ensure_built(lib_dir: Path | None = None) -> Path:
    """Path of the plug-in in ``lib_dir`` (default: :func:`default_lib_dir`), built if missing."""
    lib_dir = Path(lib_dir) if lib_dir is not None else default_lib_dir()
    path = lib_dir / LIB_NAME
    if not path.is_file():
        from .build import build

        build(lib_dir)
    return path


def _registered() -> bool:
    import tvm

    return tvm.get_global_func("device_api.opencl", allow_missing=True) is not None


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
    import tvm  # noqa: F401  (loads libtvm_ffi / libtvm_runtime RTLD_GLOBAL before the plug-in)
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
    import tvm

    f = tvm.get_global_func("edgecompile.opencl.describe", allow_missing=True)
    if f is None:
        return "the edgecompile OpenCL plug-in is not loaded"
    return str(f())


def process_env(lib_dir: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (e.g. an RPC server) whose ``import tvm`` must pick the
    plug-in up: ``LD_LIBRARY_PATH`` gets the plug-in's directory first."""
    path = ensure_built(lib_dir)
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = str(path.parent) + (os.pathsep + old if old else "")
    return env


def rpc_server_args(lib_dir: Path | None = None) -> list[str]:
    """Arguments to add to ``python -m tvm.exec.rpc_server`` so its sessions load the plug-in."""
    return ["--load-library", str(ensure_built(lib_dir).resolve())]
