"""Every call into Apache TVM lives here.

TVM moved its Python APIs twice in a year (Relay -> Relax, tvm.contrib -> tvm.support,
meta_schedule -> s_tir.meta_schedule); keeping them in one module means the next move is
absorbed in one place. Nothing outside this file imports ``tvm``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecompile.errors import EdgeCompileError


def _tvm():
    # Imported lazily: `edgecompile list` and the CLI's error paths should not pay TVM's import.
    import tvm
    import tvm.relax  # noqa: F401

    return tvm


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


def compile_module(mod, target):
    """Relax module -> executable, with the default pipeline (legalize, fuse, schedule)."""
    tvm = _tvm()
    return tvm.compile(mod, target=target)


def export_library(executable, path: Path, cross_compiler: str | None = None) -> None:
    """Write the executable as a shared library, cross-compiling where the target needs it."""
    tvm = _tvm()
    if cross_compiler is None:
        executable.export_library(str(path))
        return
    if shutil.which(cross_compiler) is None:
        raise EdgeCompileError(
            f"cross compiler '{cross_compiler}' not found on PATH "
            "(Debian: apt-get install g++-aarch64-linux-gnu; the setup script installs it)"
        )
    executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler))


class LoadedModel:
    """A compiled library loaded into a Relax VM on a (local or remote) device."""

    def __init__(self, lib, device, input_name: str, session=None):
        tvm = _tvm()
        self._tvm = tvm
        self.device = device
        self.session = session  # keeps an RPC session alive as long as the model
        self.input_name = input_name
        self.vm = tvm.relax.VirtualMachine(lib, device)

    def run(self, x: np.ndarray) -> np.ndarray:
        inp = self._tvm.runtime.tensor(np.ascontiguousarray(x), self.device)
        out = self.vm["main"](inp)
        if not hasattr(out, "numpy"):  # a tuple of outputs: we have one
            out = out[0]
        return out.numpy()


def load_local(lib_path: Path, device: str, input_name: str) -> LoadedModel:
    tvm = _tvm()
    dev = {"cpu": tvm.cpu, "opencl": tvm.opencl, "cuda": tvm.cuda}[device](0)
    if not dev.exist:
        raise EdgeCompileError(f"no {device} device on this host")
    lib = tvm.runtime.load_module(str(lib_path))
    return LoadedModel(lib, dev, input_name)
