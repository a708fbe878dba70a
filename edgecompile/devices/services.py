"""Start and stop real TVM RPC services on this machine: a tracker, native servers.

Each service runs in its own process group (the RPC server forks a worker that outlives its
parent), is waited for until it accepts connections, and is stopped by killing the group.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgecompile.devices import tracker as tracker_protocol
from edgecompile.devices.net import accepts, free_port, kill_group
from edgecompile.devices.opencl_runtime import rpc_server_args
from edgecompile.errors import EdgeCompileError

START_TIMEOUT_S = 60.0


@dataclass
class Service:
    """A running RPC service; ``stop()`` (or leaving the ``with``) ends its whole process group."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)
    key: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the whole process group: the server's forked workers too."""
        kill_group(self.proc, grace_s=timeout_s)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(name: str, argv: Sequence[str], host: str, port: int, log_dir: Path,
          env: dict[str, str] | None = None, key: str | None = None,
          timeout_s: float = START_TIMEOUT_S, ready=None) -> Service:
    """Start ``argv`` in a new session and wait until ``ready()`` (default: the port accepts)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    svc = Service(name, host, port, proc, log, key)
    ready = ready or (lambda: accepts(host, port))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not svc.alive():
            tail = log.read_text(errors="replace")[-1500:]
            raise EdgeCompileError(f"{name} exited during start-up (code {proc.returncode}):\n{tail}")
        if ready():
            return svc
        time.sleep(0.2)
    svc.stop()
    raise EdgeCompileError(f"{name} did not come up on {host}:{port} within {timeout_s:.0f}s")


def start_tracker(log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> Service:
    port = port or free_port()
    argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1), "--silent"]
    return spawn("tracker", argv, host, port, log_dir)


def start_native_server(log_dir: Path, port: int | None = None, tracker: str | None = None,
                        key: str | None = None, host: str = "127.0.0.1",
                        env: dict[str, str] | None = None, opencl: bool = False) -> Service:
    """A tvm.exec.rpc_server running on this machine's own CPU (the `x86` device); with
    ``opencl``, its sessions load our OpenCL plug-in, so it also serves tvm.opencl(0)."""
    port = port or free_port()
    # --port-end port+1: rpc_server silently moves to the next free port otherwise, and a
    # client could end up talking to another server.
    argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]
    if opencl:
        argv += rpc_server_args()
    if tracker:
        argv += ["--tracker", tracker, "--key", key or "x86"]
    ready = None
    if tracker:
        # Ask the tracker, never the server: a probe connection to the server counts as a
        # (failed) session, after which the server drops and re-registers its slot.
        ready = lambda: tracker_protocol.registered(tracker, key or "x86", port)  # noqa: E731
    return spawn("rpc-server", argv, host, port, log_dir, env=env, key=key, ready=ready)
