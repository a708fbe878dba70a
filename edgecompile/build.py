"""`edgecompile build`: model name + target preset -> artifact directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import edgecompile
from edgecompile import artifact as art
from edgecompile import flops, numerics, ort, tvm_backend
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.models import ModelInfo, get_model_info
from edgecompile.progress import StageProgress
from edgecompile.stages.compile import compile_onnx
from edgecompile.stages.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from edgecompile.stages.fold_bn import count_ops, fold_batchnorm
from edgecompile.stages.simplify import simplify_onnx
from edgecompile.targets import TargetPreset, get_target
from edgecompile.tuning import records_unchanged
from edgecompile.weights import checkpoint_meta, file_sha256, init_for_parity, load_weights

MIN_INPUT_SIZE = 32  # every family downsamples by 32
STAGE_CHECK_INPUTS = 2  # inputs each stage's before/after check runs


@dataclass(frozen=True)
class BuildOptions:
    model: str
    target: str
    output_dir: Path = Path("build")
    input_size: int | None = None  # None: the variant's own
    weights: Path | None = None  # None: seeded parity init (see weights.init_for_parity)
    num_classes: int | None = None  # None: the variant's own
    seed: int = 0
    opset: int = DEFAULT_OPSET
    # GPU presets: compile the host side for this machine instead of the board, so the
    # preset's GPU kernels run here (e.g. on pocl) for testing.
    native_host: bool = False
    library_format: str = "so"  # "so": linked library; "tar": objects, linked elsewhere
    # Apply the tuning records for this preset + CPU (tuning/<preset>-<cpu>/) when this model
    # graph was tuned into them; a lookup of the graph's fingerprint, free when it was not.
    use_records: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to re-create the exact PyTorch model an artifact was built from."""

    name: str
    input_size: int
    num_classes: int
    weights: dict[str, Any]  # {"source": "init", "seed": 0} or {"source": "file", ...}

    @classmethod
    def from_options(cls, opts: BuildOptions, info: ModelInfo, meta: dict[str, Any]) -> ModelSpec:
        """Explicit options win, then the checkpoint's own meta, then the variant's defaults."""
        size = opts.input_size or meta.get("input_size") or info.input_size
        if size < MIN_INPUT_SIZE:
            raise UsageError(f"--input-size {size} is below the minimum of {MIN_INPUT_SIZE}")
        if opts.weights is None:
            weights: dict[str, Any] = {"source": "init", "seed": opts.seed}
        else:
            path = Path(opts.weights).resolve()
            if not path.is_file():
                raise UsageError(f"--weights {opts.weights}: no such file")
            weights = {"source": "file", "path": str(path), "sha256": file_sha256(path)}
        num_classes = opts.num_classes or meta.get("num_classes") or info.num_classes
        return cls(info.name, size, num_classes, weights)

    def create(self) -> nn.Module:
        info = get_model_info(self.name)
        model = info.create(num_classes=self.num_classes)
        if self.weights["source"] == "init":
            return init_for_parity(model, self.weights["seed"], self.input_size)
        path = Path(self.weights["path"])
        if path.is_file() and file_sha256(path) != self.weights["sha256"]:
            raise EdgeCompileError(f"weights file {path} changed since the build (sha256 differs)")
        return load_weights(model, info, path)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)


LIBRARY_FORMATS = ("so", "tar")


def effective_preset(opts: BuildOptions) -> TargetPreset:
    preset = get_target(opts.target)
    if opts.library_format not in LIBRARY_FORMATS:
        raise UsageError(f"--library-format must be one of {', '.join(LIBRARY_FORMATS)}")
    if not opts.native_host:
        tvm_backend.check_linker(preset.cross_compiler, opts.library_format)
        return preset
    if preset.device == "cpu":
        raise UsageError(f"--native-host is for GPU presets; '{preset.name}' is a CPU target")
    return dataclasses.replace(preset, host={"kind": "llvm", "mcpu": "native"}, cross_compiler=None)


def build(opts: BuildOptions, quiet: bool = False) -> art.Artifact:
    info = get_model_info(opts.model)  # unknown names fail here, before any work
    preset = effective_preset(opts)
    if opts.weights is not None and not Path(opts.weights).is_file():
        raise UsageError(f"--weights {opts.weights}: no such file")
    meta = checkpoint_meta(Path(opts.weights)) if opts.weights else {}
    if meta.get("model", info.name) != info.name:
        raise UsageError(f"--weights {opts.weights} is a checkpoint of {meta['model']}, not {info.name}")
    spec = ModelSpec.from_options(opts, info, meta)
    suffix = "-native-host" if opts.native_host else ""
    final_dir = Path(opts.output_dir) / f"{info.name}-{preset.name}{suffix}"
    library = f"model.{opts.library_format}"
    progress = StageProgress(total=5, quiet=quiet)
    progress.note(f"{info.name} ({info.family}) -> {preset.name}: {preset.description}")
    progress.note(f"input {spec.input_shape}, weights {spec.weights['source']}, out {final_dir}")

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

    with art.atomic_directory(final_dir) as tmp:
        onnx.save(folded, tmp / art.ONNX_FILE)
        with progress.stage("compile", f"TVM {tvm_backend.version()} for {preset.target['kind']}"):
            lib = compile_onnx(folded, INPUT_NAME, spec.input_shape, preset, tmp / library,
                               use_records=opts.use_records)
        if lib.tuning.get("records"):
            progress.note(f"tuning records {lib.tuning['records']}: "
                          f"{lib.tuning['tasks_matched']}/{lib.tuning['tasks_total']} tasks tuned")
        if lib.kernels:
            progress.note(f"{lib.kernels['kernels']} {lib.kernels['module']} kernels, none left on the host")
        manifest = _manifest(info, spec, preset, lib, exported, folded, report, model,
                             opts, progress.timings, meta)
        manifest["files"] = art.describe_files(tmp, [library, art.ONNX_FILE])
        art.write_json(tmp / art.MANIFEST, manifest)
    return art.Artifact.load(final_dir)


def _check_same(before: onnx.ModelProto, after: onnx.ModelProto, shape, what: str) -> None:
    x = numerics.parity_inputs(STAGE_CHECK_INPUTS, shape[1:])
    cmp = numerics.compare(ort.run_onnx(before, x), ort.run_onnx(after, x))
    if not cmp.ok:
        raise EdgeCompileError(f"{what} changed the outputs: {cmp}")


def _manifest(info, spec: ModelSpec, preset: TargetPreset, lib, exported, folded,
              report, model: nn.Module, opts: BuildOptions, timings,
              meta: dict[str, Any]) -> dict[str, Any]:
    # Preprocessing: a checkpoint trained with its own (e.g. digits at 32 px) says so in meta.
    mean, std = meta.get("mean", info.mean), meta.get("std", info.std)
    return {
        "schema": art.SCHEMA_VERSION,
        "library": lib.path.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
            "stage_seconds": dict(timings),
        },
        "tuning": lib.tuning,
        "versions": {
            "edgecompile": edgecompile.__version__, "tvm": tvm_backend.version(),
            "onnx": onnx.__version__, "torch": torch.__version__, "numpy": np.__version__,
        },
    }


def build_or_reuse(model_or_dir: str, target: str | None, output_dir: Path = Path("build"),
                   input_size: int | None = None, quiet: bool = False) -> art.Artifact:
    """An artifact directory as it is, or a model name built for ``target`` -- reusing the
    artifact already in ``output_dir`` when it was built the same way (tuning records
    included) and is intact."""
    path = Path(model_or_dir)
    if (path / art.MANIFEST).is_file():
        return art.Artifact.load(path)
    if target is None:
        raise UsageError(f"'{model_or_dir}' is a model name: --target is needed to build it")
    opts = BuildOptions(model_or_dir, target, output_dir=output_dir, input_size=input_size)
    info, preset = get_model_info(opts.model), effective_preset(opts)
    existing = Path(output_dir) / f"{info.name}-{preset.name}"
    if (existing / art.MANIFEST).is_file():
        a = art.Artifact.load(existing)
        same = (a.manifest["spec"]["input_size"] == (input_size or info.input_size)
                and a.manifest["spec"]["weights"] == {"source": "init", "seed": opts.seed}
                and a.manifest["versions"]["tvm"] == tvm_backend.version()
                and a.manifest["versions"]["edgecompile"] == edgecompile.__version__
                and not a.hash_mismatches()
                and records_unchanged(a.manifest.get("tuning") or {}, onnx.load(a.onnx),
                                      tuple(a.manifest["input"]["shape"]), preset))
        if same:
            return a
    return build(opts, quiet=quiet)
