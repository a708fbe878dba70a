"""Stage 4: ONNX -> TVM Relax -> shared library for the target preset."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend import compiler
from edgecompile.errors import EdgeCompileError
from edgecompile.targets import TargetPreset
from edgecompile.tune.records import compile_with_records


@dataclass(frozen=True)
class CompiledLibrary:
    path: Path
    target: dict[str, Any]  # the full TVM target, as TVM canonicalised it (host included)
    kernels: dict[str, Any]  # GPU targets: device-kernel report (see compiler.device_kernels)
    tuning: dict[str, Any] = field(default_factory=lambda: {"records": None})  # manifest "tuning"
    schedules: str = "edgecompile-cpu-rules"  # see backend.compiler.schedules
    # Each kernel's operator class, FLOPs, bytes, arguments (backend.kernels); empty where the
    # pipeline is not ours (TVM's default, Adreno's).
    kernel_table: dict[str, Any] = field(default_factory=dict)
    kernels_library: Path | None = None  # the kernels alone, for per-kernel timing


def compile_onnx(
    model: onnx.ModelProto,
    input_name: str,
    input_shape: tuple[int, ...],
    preset: TargetPreset,
    out_path: Path,
    pipeline: str = "default",
    records: str = "isa",
    record_tasks: Collection[str] | None = None,
) -> CompiledLibrary:
    target = compiler.make_target(preset.target, preset.host)
    # Tuning records for this preset on this CPU or its ISA class (see edgecompile.tune.records);
    # record_tasks: those tasks' best records, won or not (tune's in-context check).
    mod, tuning, unscheduled = (
        compile_with_records(model, input_name, input_shape, preset, target, records, tasks=record_tasks)
        if pipeline == "default" else (None, {"records": None, "reason": f"pipeline {pipeline}"}, None))
    fused = mod is not None  # the records' module is legalised and fused already
    if mod is None:
        mod = compiler.import_onnx(model, input_name, input_shape)
    table: dict[str, Any] = {}
    executable = compiler.compile_module(mod, target, pipeline, fused=fused, kernel_table=table,
                                         table_from=unscheduled)
    kernels = compiler.device_kernels(executable, preset.device)
    if kernels and kernels["on_host"]:
        raise EdgeCompileError(
            f"{len(kernels['on_host'])} of {kernels['functions']} compute functions were not "
            f"scheduled for {preset.device} and would silently run on the host CPU: "
            + ", ".join(kernels["on_host"][:8])
        )
    compiler.export_library(executable, out_path, preset.cross_compiler)
    kernels_library = None
    if table:
        kernels_library = out_path.with_name(f"kernels{out_path.suffix}")
        compiler.export_kernels(executable, kernels_library, preset.cross_compiler)
    if kernels and out_path.suffix == ".so":
        _check_source_embedded(out_path, kernels)
    return CompiledLibrary(out_path, compiler.target_to_dict(target), kernels, tuning,
                           compiler.schedules(target, pipeline), table, kernels_library)


def _check_source_embedded(lib: Path, kernels: dict[str, Any]) -> None:
    # The device code ships as source (OpenCL C) inside the library, compiled by the driver
    # at load time: a library without it cannot run on the GPU.
    marker = b"__kernel" if kernels["module"] == "opencl" else b"__global__"
    if kernels["kernels"] and marker not in lib.read_bytes():
        raise EdgeCompileError(f"{lib.name}: the {kernels['module']} source is not embedded")
