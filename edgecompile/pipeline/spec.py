"""What to build: the options of a build, and the exact PyTorch model an artifact comes from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgecompile.backend.compiler import check_linker
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.models import ModelInfo, get_model_info
from edgecompile.paths import file_sha256
from edgecompile.pipeline.stages.export import DEFAULT_OPSET
from edgecompile.pipeline.weights import init_for_parity, load_weights
from edgecompile.targets import TargetPreset, get_target

MIN_INPUT_SIZE = 32  # every family downsamples by 32


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
    # Tuning records to look for (tune.records.RECORD_MODES): "exact" this preset on this CPU,
    # "isa" also other CPUs of its ISA class, "none". A lookup of the graph's fingerprint, free
    # when the model was never tuned.
    records: str = "isa"


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
        check_linker(preset.cross_compiler, opts.library_format)
        return preset
    if preset.device == "cpu":
        raise UsageError(f"--native-host is for GPU presets; '{preset.name}' is a CPU target")
    return dataclasses.replace(preset, host={"kind": "llvm", "mcpu": "native"}, cross_compiler=None)
