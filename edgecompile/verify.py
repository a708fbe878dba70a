"""`edgecompile verify`: run an artifact against the PyTorch model it was built from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecompile import numerics, ort, tvm_backend
from edgecompile.artifact import Artifact
from edgecompile.build import ModelSpec
from edgecompile.device import DeviceSpec
from edgecompile.errors import EdgeCompileError

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


def runs_on_this_host(a: Artifact) -> bool:
    """A linked library whose (host) code this CPU can execute; whether a GPU device exists
    here is the loader's question."""
    t = a.manifest["target"]
    host_code = t["tvm_target"].get("host", t["tvm_target"])
    return a.library.suffix == ".so" and tvm_backend.can_run_here(host_code)


def load_artifact_model(a: Artifact, device: DeviceSpec,
                        session=None) -> tvm_backend.LoadedModel:
    """The artifact's library loaded on its device: here, or uploaded over RPC (through
    ``session`` = (RPC session, server) when the caller has already opened one)."""
    kind, name = a.manifest["target"]["device"], a.manifest["input"]["name"]
    if device.is_local:
        if not runs_on_this_host(a):
            raise EdgeCompileError(
                f"{a.path}: built for '{a.manifest['target']['preset']}', which this host "
                "cannot run; give the device with --rpc HOST:PORT or --tracker HOST:PORT --key KEY"
            )
        return tvm_backend.load_local(a.library, kind, name)
    session, server = session or tvm_backend.open_session(device)
    return tvm_backend.load_remote(session, a.library, kind, name, server)


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
