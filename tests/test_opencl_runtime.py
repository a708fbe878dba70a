"""The OpenCL runtime plug-in (edgecompile/opencl_runtime) against a real OpenCL ICD (pocl).

No mocks: the plug-in is compiled here, loaded into this process, and runs TVM-compiled kernels
on ``tvm.opencl(0)``.  The device tests need an OpenCL platform (Debian: pocl-opencl-icd
ocl-icd-libopencl1, installed by scripts/setup.sh); without one they fail, never skip.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

# pocl caches compiled kernels under $HOME unless told otherwise; keep that out of the home dir.
os.environ.setdefault("POCL_CACHE_DIR", tempfile.mkdtemp(prefix="edgecompile-pocl-"))

pytestmark = [
    pytest.mark.tvm,
    # torch.onnx.export(dynamo=False) is deprecated in torch 2.9+, and still what we test with
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

LIB = "libtvm_runtime_opencl.so"


def _opencl_platform_count() -> int:
    try:
        lib = ctypes.CDLL("libOpenCL.so.1")
    except OSError:
        return 0
    n = ctypes.c_uint32(0)
    if lib.clGetPlatformIDs(0, None, ctypes.byref(n)) != 0:
        return 0
    return n.value


def test_an_opencl_platform_is_installed():
    # Decided with ctypes, independently of the plug-in, so a broken plug-in cannot hide here.
    assert _opencl_platform_count() > 0, "no OpenCL platform: apt-get install pocl-opencl-icd"


needs_opencl = pytest.mark.opencl


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """Build the plug-in from source into a fresh directory and load it into this process."""
    from edgecompile.backend.opencl import ensure_loaded
    from edgecompile.devices.opencl_runtime.build import build

    path = build(tmp_path_factory.mktemp("oclrt"))
    assert path.name == LIB and path.stat().st_size > 0
    # Returns another path (or None) when an OpenCL runtime was registered earlier in this
    # process (another test's ensure_loaded(), LD_LIBRARY_PATH); the tests below then use that one.
    ensure_loaded(path.parent)
    return path


def _elf_machine(path: Path) -> int:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def test_plugin_registers_opencl_runtime(plugin):
    import tvm

    expected = {"x86_64": 62, "aarch64": 183}.get(os.uname().machine)
    if expected is not None:
        assert _elf_machine(plugin) == expected
    for name in (
        "device_api.opencl",
        "ffi.Module.load_from_bytes.opencl",
        "ffi.Module.create.opencl",
    ):
        assert tvm.get_global_func(name, allow_missing=True) is not None, name


def test_cross_build_aarch64(tmp_path):
    from edgecompile.devices.opencl_runtime.build import build

    path = build(tmp_path, cxx="aarch64-linux-gnu-g++")
    assert _elf_machine(path) == 183  # EM_AARCH64
    dynamic = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert "libc.so.6" in needed, dynamic  # readelf really listed the dynamic section
    # dlopen()s OpenCL and takes TVM's symbols from the process: no link-time dependency on either
    assert not [lib for lib in needed if "OpenCL" in lib or "libtvm" in lib], needed


@needs_opencl
def test_device_exists_and_reports_attributes(plugin):
    import tvm

    dev = tvm.opencl(0)
    assert dev.exist
    assert dev.max_threads_per_block >= 1
    assert dev.max_shared_memory_per_block >= 1024
    assert dev.device_name
    assert not tvm.opencl(64).exist


@needs_opencl
def test_copies_roundtrip(plugin):
    import tvm

    dev = tvm.opencl(0)
    a = np.random.default_rng(0).standard_normal((7, 13)).astype("float32")
    t = tvm.runtime.tensor(a, dev)
    np.testing.assert_array_equal(t.numpy(), a)
    t2 = tvm.runtime.empty(a.shape, "float32", dev)
    t2.copyfrom(t)  # device -> device
    np.testing.assert_array_equal(t2.numpy(), a)
    assert tvm.runtime.empty((0,), "float32", dev).numpy().shape == (0,)


def _onnx_small_net():
    import onnx
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.Softmax(dim=-1),
    ).eval()
    bn = model[1]
    bn.running_mean.data = torch.randn(8) * 0.1
    bn.running_var.data = torch.rand(8) + 0.5
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
    return onnx.load_from_string(buf.getvalue()), x.numpy(), ref


def _compile(onnx_model, shape):
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx_model, shape_dict={"input": list(shape)}, keep_params_in_input=False)
    target = tvm.target.Target({"kind": "opencl", "device": "mali"}, host={"kind": "llvm"})
    return tvm.compile(mod, target=target, relax_pipeline="default")


def _modules(m):
    yield m
    for i in m.imports:
        yield from _modules(i)


@pytest.fixture(scope="module")
def small_net_lib(plugin, tmp_path_factory):
    onnx_model, x, ref = _onnx_small_net()
    ex = _compile(onnx_model, x.shape)
    path = tmp_path_factory.mktemp("oclnet") / "net.so"
    ex.export_library(str(path))
    return ex, path, x, ref


@needs_opencl
def test_exported_model_runs_and_matches_pytorch(small_net_lib):
    import tvm
    from tvm import relax

    _, path, x, ref = small_net_lib
    lib = tvm.runtime.load_module(str(path))
    cl = [m for m in _modules(lib) if m.kind == "opencl"]
    assert len(cl) == 1
    assert cl[0].inspect_source().count("__kernel") >= 3
    dev = tvm.opencl(0)
    vm = relax.VirtualMachine(lib, dev)
    out = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
    assert out.shape == ref.shape
    assert ref.std() > 1e-3  # a constant output would make the comparison vacuous
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)


@needs_opencl
def test_in_process_compiled_module_runs(small_net_lib):
    """ffi.Module.create.opencl: tvm.compile's result runs without an export/load round trip."""
    import tvm
    from tvm import relax

    ex, _, x, ref = small_net_lib
    dev = tvm.opencl(0)
    out = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_serialised_form_matches_tvm_fallback(plugin, monkeypatch):
    """SaveToBytes is byte-identical to the compiler's own OpenCL module serialisation."""
    import tvm

    onnx_model, x, _ = _onnx_small_net()
    pack = tvm.get_global_func("runtime.ModulePackImportsToTensor")
    blobs = {}
    for force in ("0", "1"):
        monkeypatch.setenv("TVM_COMPILE_FORCE_FALLBACK", force)
        host = _compile(onnx_model, x.shape).mod.imports[0]
        assert [m.kind for m in host.imports] == ["opencl"]
        blobs[force] = pack(host).numpy().tobytes()
    assert blobs["0"] == blobs["1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_opencl
def test_rpc_server_loads_plugin(plugin, small_net_lib, tmp_path):
    """`tvm.exec.rpc_server --load-library <plug-in>` serves tvm.opencl to a client."""
    import tvm
    from tvm import relax, rpc

    from edgecompile.devices.opencl_runtime import rpc_server_args

    _, path, x, ref = small_net_lib
    port = _free_port()
    log = open(tmp_path / "rpc_server.log", "w")  # noqa: SIM115  (closed in finally)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
            *rpc_server_args(plugin.parent),
        ],
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                remote = rpc.connect("127.0.0.1", port, session_timeout=120)
                break
            except Exception as err:
                if time.time() > deadline or proc.poll() is not None:
                    log.flush()
                    server_log = (tmp_path / "rpc_server.log").read_text()[-4000:]
                    raise AssertionError(f"no RPC server: {err}\n{server_log}") from err
                time.sleep(0.3)
        rdev = remote.cl(0)
        assert rdev.exist
        remote.upload(str(path))
        vm = relax.VirtualMachine(remote.load_module(path.name), rdev)
        out = vm["main"](tvm.runtime.tensor(x, rdev)).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)
    finally:
        os.killpg(proc.pid, 15)  # the server forks a worker per session: end the whole group
        proc.wait(timeout=30)
        log.close()
