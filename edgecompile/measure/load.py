"""An artifact's library loaded on its device: this host, or uploaded to an RPC server."""

from __future__ import annotations

from edgecompile.backend import compiler, rpc_client, runtime
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError
from edgecompile.pipeline.artifact import Artifact


def runs_on_this_host(a: Artifact) -> bool:
    """A linked library whose (host) code this CPU can execute; whether a GPU device exists
    here is the loader's question."""
    t = a.manifest["target"]
    host_code = t["tvm_target"].get("host", t["tvm_target"])
    return a.library.suffix == ".so" and compiler.can_run_here(host_code)


def load_artifact_model(a: Artifact, device: DeviceSpec,
                        session=None) -> runtime.LoadedModel:
    """The artifact's library loaded on its device: here, or uploaded over RPC (through
    ``session`` = (RPC session, server) when the caller has already opened one)."""
    kind, name = a.manifest["target"]["device"], a.manifest["input"]["name"]
    if device.is_local:
        if not runs_on_this_host(a):
            raise EdgeCompileError(
                f"{a.path}: built for '{a.manifest['target']['preset']}', which this host "
                "cannot run; give the device with --rpc HOST:PORT or --tracker HOST:PORT --key KEY"
            )
        return runtime.load_local(a.library, kind, name)
    session, server = session or rpc_client.open_session(device)
    return runtime.load_remote(session, a.library, kind, name, server)
