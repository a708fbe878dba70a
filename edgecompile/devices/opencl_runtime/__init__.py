"""OpenCL runtime plug-in for the PyPI ``apache-tvm`` wheel.

The wheel's runtime has no OpenCL support: ``tvm.opencl(0).exist`` is False and a library
compiled for an OpenCL target (Mali, Adreno) cannot be loaded.  At ``import tvm``, TVM looks
for a plug-in ``libtvm_runtime_opencl.so`` (``tvm.backend.opencl``) and the wheel ships none.
This package holds a small one (C++ sources beside this file) that registers

* ``device_api.opencl``                 the DeviceAPI for ``kDLOpenCL`` (alloc/free/copy/sync),
* ``ffi.Module.load_from_bytes.opencl`` loads the OpenCL module embedded in an exported library,
* ``ffi.Module.create.opencl``          lets ``tvm.compile`` produce a runnable OpenCL module,

and opens ``libOpenCL.so.1`` with dlopen at run time (no link-time OpenCL dependency).

In this process (loading it into TVM is the backend's job)::

    from edgecompile.backend.opencl import ensure_loaded
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

import os
from pathlib import Path

# build.py is imported lazily: it also runs as ``python -m edgecompile.devices.opencl_runtime.build``,
# and importing it here first would make runpy warn about a module already in sys.modules.
LIB_NAME = "libtvm_runtime_opencl.so"

__all__ = [
    "LIB_NAME",
    "default_lib_dir",
    "ensure_built",
    "process_env",
    "rpc_server_args",
]



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
