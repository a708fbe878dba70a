"""mali and adreno artifacts of every family run their OpenCL kernels on a real OpenCL device
(pocl on this CPU), in this process and through an RPC server that loads our plug-in.

The host side is compiled for this machine (--native-host); the kernels are the preset's own.
pocl compiles each kernel source once and caches it, so the RPC run after the local one
costs little: both share POCL_CACHE_DIR.
"""


import pytest

from edgecompile.devices.services import start_native_server
from edgecompile.devices.spec import DeviceSpec
from edgecompile.measure.verify import verify
from edgecompile.models import list_families, list_models
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions

pytestmark = [pytest.mark.tvm, pytest.mark.opencl, pytest.mark.rpc]
ONE_PER_FAMILY = [list_models(f)[0] for f in list_families()]
SIZE = 64


@pytest.fixture(scope="module")
def opencl_server(pocl_cache, tmp_path_factory):
    with start_native_server(tmp_path_factory.mktemp("logs"), opencl=True) as server:
        yield server


# mali: every family in the default run; adreno's kernels come from the same GPU schedules,
# so two families by default and the rest under -m slow.
ADRENO_DEFAULT = {"mobilenet_v1_100", "fasternet_t0"}
CASES = [("mali", n) for n in ONE_PER_FAMILY] + [
    pytest.param("adreno", n, marks=() if n in ADRENO_DEFAULT else pytest.mark.slow)
    for n in ONE_PER_FAMILY
]


@pytest.mark.parametrize("target, name", CASES)
def test_gpu_artifact_on_pocl_locally_and_over_rpc(name, target, tmp_path, opencl_server):
    a = build(BuildOptions(name, target, output_dir=tmp_path, input_size=SIZE, native_host=True),
              quiet=True)
    assert a.manifest["target"]["kernels"]["on_host"] == []
    local = verify(a.path, samples=2)
    assert local.ok, (local.onnx, local.tvm)
    remote = verify(a.path, samples=2, device=DeviceSpec(rpc=opencl_server.address))
    assert remote.ok and opencl_server.address in remote.where, remote.tvm


@pytest.mark.parametrize("target", ["mali", "adreno"])
def test_a_family_at_224_on_pocl(target, tmp_path, pocl_cache):
    a = build(BuildOptions("mobilenet_v2_100", target, output_dir=tmp_path, native_host=True),
              quiet=True)
    assert a.manifest["input"]["shape"] == [1, 3, 224, 224]
    r = verify(a.path, samples=1)
    assert r.ok, (r.onnx, r.tvm)
