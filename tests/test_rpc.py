"""verify over real TVM RPC: a native server on loopback, direct and through a tracker."""

import subprocess
import sys

import pytest
from conftest import refused_address

from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.measure.verify import verify
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions

pytestmark = [pytest.mark.rpc, pytest.mark.tvm]


@pytest.fixture(scope="module")
def x86_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art")
    return build(BuildOptions("shufflenet_v2_x0_5", "x86", output_dir=out, input_size=64),
                 quiet=True)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    with start_tracker(logs) as tracker, \
            start_native_server(logs, tracker=tracker.address, key="x86") as server:
        yield tracker, server


def test_verify_through_a_tracker_key(x86_artifact, farm):
    tracker, _ = farm
    r = verify(x86_artifact.path, device=DeviceSpec(tracker=tracker.address, key="x86"))
    assert r.ok and "tracker" in r.where, (r.onnx, r.tvm)


def test_verify_on_a_direct_server(x86_artifact, tmp_path):
    with start_native_server(tmp_path) as server:
        r = verify(x86_artifact.path, device=DeviceSpec(rpc=server.address))
    assert r.ok and server.address in r.where


def test_wrong_key_lists_the_keys_there(x86_artifact, farm):
    tracker, _ = farm
    with pytest.raises(EdgeCompileError, match="no device registered under key 'rpi4'.*x86"):
        verify(x86_artifact.path, device=DeviceSpec(tracker=tracker.address, key="rpi4"))


@pytest.mark.parametrize("kind", ["rpc", "tracker"])
def test_nothing_listening_fails_fast_in_one_line(x86_artifact, kind):
    # The port is picked (and held) here, not at collection: another xdist worker may start a
    # server on a port that was free when the tests were collected.
    with refused_address() as address:
        spec = DeviceSpec(rpc=address) if kind == "rpc" else DeviceSpec(tracker=address, key="x86")
        with pytest.raises(EdgeCompileError, match="cannot reach .* Connection refused"):
            verify(x86_artifact.path, device=spec)


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_an_unreachable_device_fails_before_the_build(command, farm, tmp_path):
    # Given a model name, bench and eval build it first: a device that cannot be reached must
    # say so at once, not after a build of up to a minute, and leave no half-made output.
    from edgecompile.measure.bench import BenchOptions, run_bench
    from edgecompile.measure.evaluate import EvalOptions, run_eval

    tracker, _ = farm
    out = tmp_path / "build"

    def run(device):
        if command == "bench":
            return run_bench("squeezenet1_1", "x86", device, BenchOptions(), output_dir=out, input_size=64)
        return run_eval("squeezenet1_1", "x86", tmp_path / "images", device, EvalOptions(),
                        output_dir=out, input_size=64)

    with refused_address() as address, pytest.raises(EdgeCompileError, match="cannot reach RPC server"):
        run(DeviceSpec(rpc=address))
    with pytest.raises(EdgeCompileError, match="no device registered under key 'rpi4'.*keys there: x86"):
        run(DeviceSpec(tracker=tracker.address, key="rpi4"))
    assert not out.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"tracker": "127.0.0.1:9190"}, "needs --key"),
    ({"key": "x86"}, "goes with --tracker"),
    ({"rpc": "localhost"}, "expected HOST:PORT"),
    ({"rpc": "a:1", "tracker": "b:2", "key": "k"}, "not both"),
])
def test_bad_device_flags(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DeviceSpec(**kwargs)


def test_cli_verify_over_rpc_and_connection_error(x86_artifact, farm):
    tracker, _ = farm
    cmd = [sys.executable, "-m", "edgecompile", "verify", str(x86_artifact.path)]
    r = subprocess.run(cmd + ["--tracker", tracker.address, "--key", "x86"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    with refused_address() as address:
        r = subprocess.run(cmd + ["--rpc", address], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot reach RPC server" in r.stderr


def test_a_server_that_never_answers_times_out_in_one_line(x86_artifact, tmp_path):
    import os
    import signal
    import time

    with start_native_server(tmp_path) as server:
        os.killpg(server.proc.pid, signal.SIGSTOP)  # the port still accepts; nobody answers
        try:
            t = time.monotonic()
            with pytest.raises(EdgeCompileError, match="did not answer within 5s"):
                verify(x86_artifact.path, device=DeviceSpec(rpc=server.address, timeout_s=5))
            assert time.monotonic() - t < 30
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)


def test_a_tracker_that_resets_the_connection_fails_in_one_line(x86_artifact):
    """Something listens at the tracker's address but drops every connection (a crashed
    tracker behind a proxy, the wrong service): one line naming it, not a raw reset."""
    import socket
    import struct
    import threading

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        stop = threading.Event()

        def drop_all():
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # linger 0: a reset, not a clean close

        worker = threading.Thread(target=drop_all, daemon=True)
        worker.start()
        address = f"127.0.0.1:{srv.getsockname()[1]}"
        try:
            with pytest.raises(EdgeCompileError) as err:
                verify(x86_artifact.path, device=DeviceSpec(tracker=address, key="x86"))
        finally:
            stop.set()
            worker.join()
    # The reset can come at the reachability probe or at the tracker's summary: one line that
    # names the tracker either way, never a raw ConnectionResetError.
    message = str(err.value)
    assert f"tracker {address}" in message and "\n" not in message, message
