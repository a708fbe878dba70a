"""The emulated arm64 device, for real: qemu-user running the Debian arm64 rootfs's Python with
an aarch64 TVM, serving tvm.exec.rpc_server; the x86 side connects, uploads a cross-compiled
library and runs it. The rootfs is built by scripts/setup.sh beforehand (prepare() is cached);
a machine without qemu-user-static skips the device tests.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import refused_address

from edgecompile.devices import emulated as emu
from edgecompile.devices import tracker as tracker_protocol
from edgecompile.devices.emulated import server as emu_server
from edgecompile.devices.emulated import tools as emu_tools
from edgecompile.devices.net import free_port, group_members
from edgecompile.errors import EdgeCompileError, UnknownNameError, UsageError
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions

pytestmark = [pytest.mark.rpc, pytest.mark.tvm]
REPO = Path(__file__).resolve().parents[1]
MODEL, SIZE = "squeezenet1_1", 32  # the quickest model to build; every layer still runs
SIGILL = -int(signal.SIGILL)

SVE_PRESET = """\
description = "aarch64 with SVE (test preset)"
inherits = "arm64"
device_core = "max,sve-default-vector-length=16"
[target]
mcpu = "neoverse-v1"
mattr = ["+neon", "+sve"]
"""


# --- no device needed --------------------------------------------------------------------------


def test_missing_packages_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu, no debootstrap, no dpkg-deb
    monkeypatch.setattr(emu_tools, "which", lambda tool: None)
    with pytest.raises(EdgeCompileError) as e:
        emu.prepare(tmp_path / "rootfs")
    msg = str(e.value)
    for pkg in ("qemu-user-static", "debootstrap", "dpkg"):
        assert pkg in msg
    assert "apt-get install" in msg and "setup.sh" in msg
    assert not (tmp_path / "rootfs").exists()  # failed before touching anything


def test_mirror_comes_from_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECOMPILE_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    assert emu.debian_mirror(tmp_path) == emu.DEFAULT_MIRROR  # nothing configured
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    (tmp_path / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert emu.debian_mirror(tmp_path) == "http://mirror.example/debian"
    monkeypatch.setenv("EDGECOMPILE_DEBIAN_MIRROR", "http://override.example/debian")
    assert emu.debian_mirror(tmp_path) == "http://override.example/debian"


def test_default_root_follows_edgecompile_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    assert emu.default_root() == tmp_path / "arm64-rootfs"


def test_refuses_a_directory_it_did_not_make(tmp_path):
    if emu.missing_packages():
        pytest.skip("prepare's packages are not installed")
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(EdgeCompileError, match="not made by edgecompile"):
        emu.prepare(tmp_path, quiet=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# --- the real device -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root():
    if emu.qemu_binary() is None:
        pytest.skip("qemu-user-static not installed (scripts/setup.sh)")
    return emu.prepare()  # cached by scripts/setup.sh; builds it (about a minute) otherwise


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    out = tmp_path_factory.mktemp("emu-art")
    sve = out / "sve.toml"
    sve.write_text(SVE_PRESET)
    built = {}
    for name, target in (("x86", "x86"), ("rpi4", "rpi4"), ("sve", str(sve))):
        a = build(BuildOptions(MODEL, target, output_dir=out, input_size=SIZE), quiet=True)
        built[name] = a.library
    return built


def _image(seed=0):
    # Image-like input (smooth, O(1)) so the comparison tests something after global pooling.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 3, SIZE // 4, SIZE // 4)).astype("float32")
    return np.ascontiguousarray(np.repeat(np.repeat(x, 4, axis=2), 4, axis=3))


def _run_local(lib_path, x):
    import tvm
    import tvm.relax

    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _run_remote(remote, lib_path, x):
    import tvm
    import tvm.relax

    remote.upload(str(lib_path), "model.so")
    lib = remote.load_module("model.so")
    dev = remote.cpu()
    out = tvm.relax.VirtualMachine(lib, dev)["main"](tvm.runtime.tensor(x, dev))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _assert_gone(dev):
    assert not dev.alive()
    assert group_members(dev.pid) == []
    assert not dev.run_dir.exists()
    with socket.socket() as s:
        assert s.connect_ex((dev.host, dev.port)) != 0  # nothing listens any more


def test_prepare_is_cached(root):
    t = time.perf_counter()
    assert emu.prepare() == root
    assert time.perf_counter() - t < 1.0
    assert emu.is_ready(root)
    assert (root / "usr" / "bin" / "python3.11").exists() and (root / "bin").is_symlink()
    assert not list((root / "opt" / "tvm" / "tvm" / "lib").glob("libtvm_compiler*"))
    for d in emu.HOST_DIRS:  # must come from the host under qemu-user
        assert not (root / d).exists()


def test_unknown_core_is_refused_before_starting(root):
    with pytest.raises(UnknownNameError, match="cortex-a72") as e:
        emu.start("cortex-a7z", root=root)
    assert e.value.suggestion in ("cortex-a72", "cortex-a76")
    with pytest.raises(UsageError, match="needs a key"):
        emu.start("cortex-a72", tracker="127.0.0.1:9190", root=root)


def test_aarch64_library_runs_on_pinned_cortex_a72_and_matches_x86(root, libs):
    import tvm.rpc

    x = _image()
    expected = _run_local(libs["x86"], x)
    with emu.start("cortex-a72", root=root) as dev:
        assert dev.alive() and dev.core == "cortex-a72"
        members = group_members(dev.pid)
        assert len(members) >= 2  # the server and the listening worker it started
        remote = tvm.rpc.connect(dev.host, dev.port)
        got = _run_remote(remote, libs["rpi4"], x)
        del remote
        assert dev.session_failures() == []
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # not a degenerate all-zero comparison
    _assert_gone(dev)
    assert "bind to" in dev.log()  # the log outlives the run directory


def test_registers_with_a_tracker(root, libs, tmp_path):
    import tvm.rpc

    tport = free_port()
    tracker = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
         str(tport), "--port-end", str(tport + 1), "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                tracker_protocol.summary(f"127.0.0.1:{tport}")
                break
            except EdgeCompileError:
                assert time.monotonic() < deadline and tracker.poll() is None
                time.sleep(0.2)
        with emu.start("cortex-a53", tracker=f"127.0.0.1:{tport}", key="emu-a53",
                       root=root) as dev:
            summary = tracker_protocol.summary(f"127.0.0.1:{tport}")
            assert summary["queue_info"]["emu-a53"]["free"] == 1
            remote = tvm.rpc.connect_tracker("127.0.0.1", tport).request("emu-a53",
                                                                         session_timeout=120)
            x = _image(1)
            np.testing.assert_allclose(_run_remote(remote, libs["rpi4"], x),
                                       _run_local(libs["x86"], x), rtol=1e-4, atol=1e-4)
            del remote
        _assert_gone(dev)
    finally:
        os.killpg(tracker.pid, signal.SIGKILL)
        tracker.wait()


def test_unreachable_tracker_fails_fast(root):
    t = time.perf_counter()
    with refused_address() as tracker, pytest.raises(EdgeCompileError, match="cannot reach RPC tracker"):
        emu.start("cortex-a72", tracker=tracker, key="k", root=root)
    assert time.perf_counter() - t < 10


def test_port_in_use_fails_fast(root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(EdgeCompileError, match="in use"):
            emu.start("cortex-a72", port=s.getsockname()[1], root=root)


def test_server_dying_at_start_reports_its_stderr(root, monkeypatch, tmp_path):
    monkeypatch.setattr(emu_server, "SERVER_MODULE", "tvm.exec.no_such_server")
    # A private temp dir: under xdist another worker may be starting a device of its own.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(EdgeCompileError, match=r"exited during start-up(.|\n)*no_such_server"):
        emu.start("cortex-a72", root=root, timeout=60)
    assert [d for d in os.listdir(tmp_path) if d.startswith("edgecompile-emu-")] == []


def test_sve_code_dies_with_sigill_on_cortex_a72_and_runs_on_an_sve_core(root, libs):
    """The point of pinning the core: a library built for a core with SVE uses instructions a
    Cortex-A72 lacks. Pinned to cortex-a72 the RPC session dies with SIGILL; on a core with
    128-bit SVE it runs and matches x86."""
    import tvm.rpc

    x = _image(2)
    expected = _run_local(libs["x86"], x)
    with emu.start("cortex-a72", root=root) as dev:
        remote = tvm.rpc.connect(dev.host, dev.port)
        with pytest.raises(Exception, match="kShutdown|closed|Connection|Broken"):
            _run_remote(remote, libs["sve"], x)
        del remote
        deadline = time.monotonic() + 30
        while not dev.session_failures() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dev.session_failures() == [SIGILL], dev.log()[-2000:]
    _assert_gone(dev)

    with emu.start("max,sve-default-vector-length=16", root=root) as dev:
        remote = tvm.rpc.connect(dev.host, dev.port)
        got = _run_remote(remote, libs["sve"], x)
        del remote
        assert dev.session_failures() == []
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    _assert_gone(dev)


def _pids_with_port(port):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{d}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if b"--port" in cmd and str(port).encode() in cmd and state != "Z":
                pids.append(int(d))
    return pids


def test_script_start_stays_in_foreground_and_stops_everything_on_sigterm(root):
    import tvm.rpc

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "emulated_device.py"), "start", "--target",
         "rpi4", "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()  # HOST:PORT once it accepts connections
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line), proc.stderr.read()
        host, port = line.split(":")
        assert _pids_with_port(port)
        remote = tvm.rpc.connect(host, int(port))
        assert remote.cpu().exist
        del remote
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "cortex-a72" in proc.stderr.read()
        assert _pids_with_port(port) == []
    finally:
        if proc.poll() is None:
            proc.kill()
