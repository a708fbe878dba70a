"""Sockets and process groups: the small pieces every device and service needs once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from edgecompile.errors import EdgeCompileError, UsageError

# TVM's RPC magic (tvm/rpc/base.py): a server answers a client that opens with it.
RPC_MAGIC = 0xFF271


def parse_hostport(value: str, flag: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT"; a usage error naming ``flag`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def check_reachable(value: str, what: str, timeout_s: float) -> None:
    """Fail in one line, now, when nothing listens: TVM's own client retries for a minute."""
    host, port = parse_hostport(value, what)
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 10.0)):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise EdgeCompileError(f"cannot reach {what} {value}: {reason}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. Another process can take it before it is bound: callers that
    start a server on it retry on "cannot bind" (see devices.emulated.server.start)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rpc_server does
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def accepts(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something listens, probed with a wrong magic number: a TVM RPC server refuses
    that cleanly, where a bare connect-and-close makes its listen loop reset its tracker
    connection."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack("<i", 0))
        return True
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid`` (Linux /proc)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(d))
    return pids


def kill_group(proc: subprocess.Popen, grace_s: float = 3.0, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL it, until none of it is left.

    TVM's rpc_server forks a worker that outlives its parent, so killing the leader alone
    leaves a server listening."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, timeout_s)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_members(pgid):
                return
            time.sleep(0.05)
    raise EdgeCompileError(f"processes {group_members(pgid)} of process group {pgid} did not exit")
