"""`edgecompile build`: model name + target preset -> artifact directory.

The stages run as functions from artifact to artifact: PyTorch model -> ONNX -> onnxsim ->
BN folded (``final_graph``, shared with tuning, which must see exactly what a build compiles)
-> TVM library (``stages.compile``) -> the artifact directory with its manifest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import edgecompile
from edgecompile.backend import core
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.models import ModelInfo, get_model_info
from edgecompile.paths import file_sha256
from edgecompile.pipeline import artifact as art
from edgecompile.pipeline import flops, numerics, ort
from edgecompile.pipeline.spec import BuildOptions, ModelSpec, effective_preset
from edgecompile.pipeline.stages.compile import compile_onnx
from edgecompile.pipeline.stages.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from edgecompile.pipeline.stages.fold_bn import FoldReport, count_ops, fold_batchnorm
from edgecompile.pipeline.stages.simplify import simplify_onnx
from edgecompile.pipeline.weights import checkpoint_meta
from edgecompile.progress import StageProgress
from edgecompile.targets import TargetPreset
from edgecompile.tune.records import records_unchanged

STAGE_CHECK_INPUTS = 2  # inputs each stage's before/after check runs


@dataclass(frozen=True)
class FinalGraph:
    """The front half's artifact: the PyTorch model and the ONNX graph TVM compiles."""

    info: ModelInfo
    spec: ModelSpec
    meta: dict[str, Any]  # the checkpoint's own meta ({} for init or published weights)
    model: nn.Module
    exported: onnx.ModelProto
    folded: onnx.ModelProto  # after onnxsim and BN folding: what the back end compiles
    report: FoldReport


def resolve_spec(opts: BuildOptions) -> tuple[ModelInfo, ModelSpec, dict[str, Any]]:
    """The variant, the exact model to create and the checkpoint's meta; bad names, missing
    files and a checkpoint of another model fail here, before any work."""
    info = get_model_info(opts.model)
    if opts.weights is not None and not Path(opts.weights).is_file():
        raise UsageError(f"--weights {opts.weights}: no such file")
    meta = checkpoint_meta(Path(opts.weights)) if opts.weights else {}
    if meta.get("model", info.name) != info.name:
        raise UsageError(f"--weights {opts.weights} is a checkpoint of {meta['model']}, not {info.name}")
    return info, ModelSpec.from_options(opts, info, meta), meta


def final_graph(opts: BuildOptions, progress: StageProgress | None = None) -> FinalGraph:
    """Model -> ONNX -> onnxsim -> BN folded, each stage checked against the one before on
    ONNX Runtime."""
    progress = progress or StageProgress(total=4, quiet=True)
    info, spec, meta = resolve_spec(opts)
    with progress.stage("model", "create PyTorch model"):
        model = spec.create()
    with progress.stage("export", f"ONNX opset {opts.opset}"):
        exported = export_onnx(model, spec.input_shape, opts.opset)
    with progress.stage("simplify", "onnxsim"):
        simplified = simplify_onnx(exported)
        _check_same(exported, simplified, spec.input_shape, "onnxsim")
    with progress.stage("fold-bn", f"{count_ops(simplified, 'BatchNormalization')} BN nodes"):
        folded, report = fold_batchnorm(simplified)
        _check_same(simplified, folded, spec.input_shape, "BN folding")
        progress.note(f"{report.folded} folded into Conv/Gemm, {report.affine} as Mul+Add")
    return FinalGraph(info, spec, meta, model, exported, folded, report)


def build(opts: BuildOptions, quiet: bool = False) -> art.Artifact:
    info, spec, _ = resolve_spec(opts)  # unknown names fail here, before any work
    preset = effective_preset(opts)
    suffix = "-native-host" if opts.native_host else ""
    final_dir = Path(opts.output_dir) / f"{info.name}-{preset.name}{suffix}"
    library = f"model.{opts.library_format}"
    progress = StageProgress(total=5, quiet=quiet)
    progress.note(f"{info.name} ({info.family}) -> {preset.name}: {preset.description}")
    progress.note(f"input {spec.input_shape}, weights {spec.weights['source']}, out {final_dir}")
    g = final_graph(opts, progress)

    with art.atomic_directory(final_dir) as tmp:
        onnx.save(g.folded, tmp / art.ONNX_FILE)
        with progress.stage("compile", f"TVM {core.version()} for {preset.target['kind']}"):
            lib = compile_onnx(g.folded, INPUT_NAME, spec.input_shape, preset, tmp / library,
                               records=opts.records)
        if lib.tuning.get("records"):
            t = lib.tuning
            progress.note(f"tuning records {t['records']} ({t['match']} match, measured on "
                          f"{t['measured_on']['cpu']}): {t['tasks_tuned']}/{t['tasks_total']} "
                          "kernels tuned, the rest default schedules")
        if lib.kernels:
            progress.note(f"{lib.kernels['kernels']} {lib.kernels['module']} kernels, none left on the host")
        manifest = _manifest(g, preset, lib, opts, progress.timings)
        files = [library, art.ONNX_FILE]
        if lib.kernel_table:
            art.write_json(tmp / art.KERNELS_FILE, lib.kernel_table)
            files += [art.KERNELS_FILE, lib.kernels_library.name]
        manifest["files"] = art.describe_files(tmp, files)
        art.write_json(tmp / art.MANIFEST, manifest)
    return art.Artifact.load(final_dir)


def _check_same(before: onnx.ModelProto, after: onnx.ModelProto, shape, what: str) -> None:
    x = numerics.parity_inputs(STAGE_CHECK_INPUTS, shape[1:])
    cmp = numerics.compare(ort.run_onnx(before, x), ort.run_onnx(after, x))
    if not cmp.ok:
        raise EdgeCompileError(f"{what} changed the outputs: {cmp}")


def _manifest(g: FinalGraph, preset: TargetPreset, lib, opts: BuildOptions,
              timings) -> dict[str, Any]:
    info, spec, meta, model, exported, folded, report = (
        g.info, g.spec, g.meta, g.model, g.exported, g.folded, g.report)
    # Preprocessing: a checkpoint trained with its own (e.g. digits at 32 px) says so in meta.
    mean, std = meta.get("mean", info.mean), meta.get("std", info.std)
    return {
        "schema": art.SCHEMA_VERSION,
        "library": lib.path.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": info.to_dict() | {
            "params_counted": flops.count_params(model),
            "macs_counted": flops.count_macs(model, spec.input_size),
        },
        "spec": asdict(spec),  # how to re-create the PyTorch model (verify uses it)
        "input": {
            "name": INPUT_NAME, "shape": list(spec.input_shape), "dtype": "float32",
            "layout": "NCHW", "mean": list(mean), "std": list(std),
            "crop_pct": meta.get("crop_pct", info.crop_pct),
        },
        "output": {"name": OUTPUT_NAME, "shape": [1, spec.num_classes], "dtype": "float32",
                   "classes": meta.get("classes")},
        "checkpoint_meta": {k: v for k, v in meta.items() if k != "classes"} or None,
        "target": {
            "preset": preset.name, "device": preset.device, "tvm_target": lib.target,
            "native_host": opts.native_host, "kernels": lib.kernels or None,
            "cross_compiler": preset.cross_compiler, "device_core": preset.device_core,
            "rpc_key": preset.rpc_key, "threads": preset.threads, "preset_source": preset.source,
        },
        "pipeline": {
            "opset": opts.opset,
            "nodes_exported": len(exported.graph.node),
            "nodes_final": len(folded.graph.node),
            "bn_folded": report.folded,
            "bn_as_affine": report.affine,
            "schedules": lib.schedules,
            "stage_seconds": dict(timings),
        },
        "tuning": lib.tuning,
        "versions": {
            "edgecompile": edgecompile.__version__, "tvm": core.version(),
            "onnx": onnx.__version__, "torch": torch.__version__, "numpy": np.__version__,
        },
    }


def build_or_reuse(model_or_dir: str, target: str | None, output_dir: Path = Path("build"),
                   input_size: int | None = None, quiet: bool = False,
                   weights: Path | None = None) -> art.Artifact:
    """An artifact directory as it is, or a model name built for ``target`` -- reusing the
    artifact already in ``output_dir`` when it was built the same way (tuning records
    included) and is intact."""
    path = Path(model_or_dir)
    if (path / art.MANIFEST).is_file():
        return art.Artifact.load(path)
    if target is None:
        raise UsageError(f"'{model_or_dir}' is a model name: --target is needed to build it")
    opts = BuildOptions(model_or_dir, target, output_dir=output_dir, input_size=input_size,
                        weights=weights)
    info, preset = get_model_info(opts.model), effective_preset(opts)
    existing = Path(output_dir) / f"{info.name}-{preset.name}"
    if (existing / art.MANIFEST).is_file() and (weights is None or Path(weights).is_file()):
        a = art.Artifact.load(existing)
        built_from = a.manifest["spec"]["weights"]
        same_weights = (built_from.get("sha256") == file_sha256(weights) if weights
                        else built_from == {"source": "init", "seed": opts.seed})
        # A checkpoint may set its own input size (its meta): only an explicit one must match.
        same_size = (a.manifest["spec"]["input_size"] == input_size if input_size
                     else weights is not None or a.manifest["spec"]["input_size"] == info.input_size)
        same = (same_size and same_weights
                and a.manifest["versions"]["tvm"] == core.version()
                and a.manifest["versions"]["edgecompile"] == edgecompile.__version__
                and not a.hash_mismatches()
                and records_unchanged(a.manifest.get("tuning") or {}, onnx.load(a.onnx),
                                      tuple(a.manifest["input"]["shape"]), preset))
        if same:
            return a
    return build(opts, quiet=quiet)
