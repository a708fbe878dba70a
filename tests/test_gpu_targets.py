"""Mobile-GPU presets: every family compiles with every kernel in the OpenCL module."""

import onnx
import pytest

from edgecompile.errors import EdgeCompileError
from edgecompile.models import list_families, list_models
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.pipeline.stages.compile import compile_onnx
from edgecompile.pipeline.stages.export import INPUT_NAME
from edgecompile.targets import get_target

pytestmark = pytest.mark.tvm
ONE_PER_FAMILY = [list_models(f)[0] for f in list_families()]
SIZE = 64


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_builds_for_mali_with_all_kernels_on_the_gpu(name, tmp_path):
    a = build(BuildOptions(name, "mali", output_dir=tmp_path, input_size=SIZE), quiet=True)
    k = a.manifest["target"]["kernels"]
    assert k["module"] == "opencl" and k["on_host"] == []
    assert k["kernels"] >= k["functions"] > 0
    lib = a.library.read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # aarch64 host
    assert b"__kernel" in lib  # the OpenCL C source travels inside the library


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_builds_for_adreno_as_objects_without_an_ndk(name, tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(EdgeCompileError, match="Android NDK"):
        build(BuildOptions(name, "adreno", output_dir=tmp_path, input_size=SIZE), quiet=True)
    a = build(BuildOptions(name, "adreno", output_dir=tmp_path, input_size=SIZE,
                           library_format="tar"), quiet=True)
    assert a.library.name == "model.tar" and a.hash_mismatches() == []
    assert a.manifest["target"]["kernels"]["on_host"] == []
    assert a.manifest["target"]["tvm_target"]["host"]["mtriple"] == "aarch64-linux-android"


def test_guard_refuses_kernels_left_on_the_host(tmp_path):
    # TVM's plain build pipeline applies no GPU schedules: every function stays host code,
    # silently. The guard must turn that into an error.
    a = build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path, input_size=SIZE), quiet=True)
    with pytest.raises(EdgeCompileError, match="would silently run on the host CPU"):
        compile_onnx(onnx.load(a.onnx), INPUT_NAME, (1, 3, SIZE, SIZE), get_target("mali"),
                     tmp_path / "lib.so", pipeline="default_build")
