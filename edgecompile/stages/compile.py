"""Stage 4: ONNX -> TVM Relax -> shared library for the target preset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgecompile import tvm_backend
from edgecompile.targets import TargetPreset


@dataclass(frozen=True)
class CompiledLibrary:
    path: Path
    target: dict[str, Any]  # the full TVM target, as TVM canonicalised it (host included)


def compile_onnx(
    model: onnx.ModelProto,
    input_name: str,
    input_shape: tuple[int, ...],
    preset: TargetPreset,
    out_path: Path,
) -> CompiledLibrary:
    target = tvm_backend.make_target(preset.target, preset.host)
    mod = tvm_backend.import_onnx(model, input_name, input_shape)
    executable = tvm_backend.compile_module(mod, target)
    tvm_backend.export_library(executable, out_path, preset.cross_compiler)
    return CompiledLibrary(out_path, tvm_backend.target_to_dict(target))
