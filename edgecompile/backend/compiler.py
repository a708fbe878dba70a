"""Compile: target dicts -> TVM targets, ONNX -> Relax, Relax -> executable -> library."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend.core import host_cpu, load_tvm
from edgecompile.errors import EdgeCompileError


def resolve_target(target: dict[str, Any]) -> dict[str, Any]:
    """Replace the 'native' CPU with this host's, and return the target as TVM canonicalises it."""
    target = dict(target)
    if target.get("mcpu") == "native":
        target["mcpu"] = host_cpu()
    return target


def make_target(target: dict[str, Any], host: dict[str, Any] | None = None):
    tvm = load_tvm()
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


TVM_DEFAULT = "tvm-default"  # TVM's own pipeline untouched: naive loops on CPUs (comparisons)


def is_cpu(target) -> bool:
    return target.kind.name == "llvm"


def schedules(target, pipeline: str = "default") -> str:
    """What schedules the kernels of a ``compile_module(mod, target, pipeline)`` get, for the
    manifest: our CPU rules, dlight's GPU rules, or TVM's default (naive loops on a CPU)."""
    if pipeline == TVM_DEFAULT:
        return "tvm-default"
    return "edgecompile-cpu-rules" if is_cpu(target) else "tvm-dlight-gpu"


def compile_module(mod, target, pipeline: str = "default", fused: bool = False,
                   kernel_table: dict[str, Any] | None = None, table_from=None):
    """Relax module -> executable. The "default" pipeline legalises, fuses and schedules every
    kernel: on CPUs with our rules (cpu_schedules: TVM 0.27 has no CPU schedules of its own,
    and a kernel already scheduled, e.g. from tuning records, keeps its schedule), on GPUs with
    dlight's rules (thread binding). On a GPU target where a dlight rule fails, the guarded
    pipeline is used instead. ``TVM_DEFAULT`` is TVM's own pipeline, untouched. ``fused``: a
    module from ``metaschedule.prepare`` (legalised and fused, some kernels tuned).
    ``kernel_table``: a dict filled with the kernels' table (backend.kernels) as they are
    fused, before scheduling (our pipelines only); from ``table_from`` where given: ``mod``
    unscheduled, when some of its kernels are scheduled already (tuning records)."""
    tvm = load_tvm()
    from edgecompile.backend.kernels import keep_called
    from edgecompile.backend.kernels import kernel_table as table_of

    def on_fused(fused_mod) -> None:
        if kernel_table is not None:
            kernel_table.update(table_of(table_from if table_from is not None else fused_mod))

    def on_lowered(lowered_mod) -> None:
        if kernel_table:
            keep_called(kernel_table, lowered_mod)

    if pipeline == TVM_DEFAULT:
        return tvm.compile(mod, target=target, relax_pipeline="default")
    if pipeline == "default" and is_cpu(target):
        from edgecompile.backend.cpu_schedules import TIR_PIPELINE, cpu_pipeline

        return tvm.compile(mod, target=target,
                           relax_pipeline=cpu_pipeline(target, fused, on_fused, on_lowered),
                           tir_pipeline=TIR_PIPELINE)
    if pipeline not in ("default", GUARDED) or "gpu" not in [str(k) for k in target.keys]:
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    from edgecompile.backend.gpu_schedules import gpu_pipeline

    def gpu(guarded: bool):
        return gpu_pipeline(target, guarded, fused, on_fused, on_lowered)

    if pipeline == GUARDED:
        return tvm.compile(mod, target=target, relax_pipeline=gpu(True))
    try:
        return tvm.compile(mod, target=target, relax_pipeline=gpu(False))
    except AssertionError:
        # Seen: dlight's GEMV rule asserts on a small classifier kernel (10 classes at 32 px)
        # and takes the whole compile down with it.
        return tvm.compile(mod, target=target, relax_pipeline=gpu(True))


def isa_class(target: dict[str, Any]) -> str:
    """The CPU target's instruction-set class (x86_64-avx512, aarch64-neon, ...): CPUs of one
    class get the same kernels from our rules, so they can share tuning records."""
    from edgecompile.backend.cpu_schedules import isa_class as _isa_class

    return _isa_class(make_target(target))


def unscheduled_cpu_kernels(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...],
                            target: dict[str, Any]) -> list[str]:
    """The kernels of this graph that no CPU schedule rule takes (empty: every one is scheduled)."""
    from edgecompile.backend.cpu_schedules import unscheduled_kernels

    return unscheduled_kernels(import_onnx(model, input_name, shape), make_target(target))


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
    tvm = load_tvm()
    fmt = Path(path).suffix.lstrip(".")
    check_linker(cross_compiler, fmt)
    if cross_compiler is None or fmt == "tar":
        executable.export_library(str(path))
    elif cross_compiler == NDK:
        executable.export_library(str(path), fcompile=tvm.support.ndk.create_shared)
    else:
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler))


def export_kernels(executable, path: Path, cross_compiler: str | None = None) -> None:
    """The kernels alone (no VM, no weights) as a library of their own, so each can be timed
    by name on any device (TVM's time evaluator looks a function up in the module it is given,
    and over RPC there is no reaching the model library's imported kernel module)."""
    export_library(executable.mod.imports[0], path, cross_compiler)


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
    tvm = load_tvm()
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
