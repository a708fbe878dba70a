"""`edgecompile verify`: run an artifact against the PyTorch model it was built from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError
from edgecompile.measure.load import load_artifact_model
from edgecompile.pipeline import numerics, ort
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.spec import ModelSpec

DEFAULT_SAMPLES = 4


@dataclass(frozen=True)
class VerifyResult:
    artifact: Path
    onnx: numerics.Comparison  # ONNX Runtime on model.onnx vs PyTorch
    tvm: numerics.Comparison  # the compiled library vs PyTorch
    where: str  # where the library ran

    @property
    def ok(self) -> bool:
        return self.onnx.ok and self.tvm.ok

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "ok": self.ok, "where": self.where,
                "onnx": vars(self.onnx) | {"ok": self.onnx.ok},
                "tvm": vars(self.tvm) | {"ok": self.tvm.ok}}

    def format(self) -> str:
        return (f"ONNX Runtime vs PyTorch: {self.onnx}\n"
                f"TVM ({self.where}) vs PyTorch: {self.tvm}\n"
                + ("OK" if self.ok else "FAILED: beyond tolerance"))


def verify(path: Path, samples: int = DEFAULT_SAMPLES, seed: int = 1234,
           device: DeviceSpec | None = None) -> VerifyResult:
    device = device or DeviceSpec()
    a = Artifact.load(path)
    bad = a.hash_mismatches()
    if bad:
        raise EdgeCompileError(f"{path}: files differ from the manifest's sha256: {', '.join(bad)}")
    lib = load_artifact_model(a, device)
    spec = ModelSpec(**a.manifest["spec"])
    x = numerics.parity_inputs(samples, spec.input_shape[1:], seed)
    with torch.no_grad():
        model = spec.create()
        reference = np.concatenate([model(torch.from_numpy(xi[None])).numpy() for xi in x])
    from_onnx = ort.run_onnx(str(a.onnx), x)
    from_tvm = np.concatenate([lib.run(xi[None]) for xi in x])
    return VerifyResult(
        artifact=a.path,
        onnx=numerics.compare(reference, from_onnx),
        tvm=numerics.compare(reference, from_tvm),
        where=device.describe(),
    )
