"""TVM's RPC tracker protocol, the few messages we need, in plain Python (no TVM import).

Written once here for everything that talks to a tracker: the farm counting devices per key,
services waiting until a server has registered, the RPC client leasing a device. The wire
format is tvm/rpc/base.py's: a 4-byte little-endian magic each way, then length-prefixed JSON
messages ``[code, ...]``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from edgecompile.devices.net import parse_hostport
from edgecompile.errors import EdgeCompileError

TRACKER_MAGIC = 0x2F271
# TrackerCode (tvm/rpc/base.py)
SUCCESS = 0
REQUEST = 4
SUMMARY = 6


def _recvall(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the tracker")
        buf += chunk
    return buf


def _send(sock: socket.socket, msg: Any) -> None:
    data = json.dumps(msg).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def _recv(sock: socket.socket) -> Any:
    size = struct.unpack("<i", _recvall(sock, 4))[0]
    return json.loads(_recvall(sock, size))


def _connect(address: str, timeout_s: float | None) -> socket.socket:
    host, port = parse_hostport(address, "tracker")
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.sendall(struct.pack("<i", TRACKER_MAGIC))
        if struct.unpack("<i", _recvall(sock, 4))[0] != TRACKER_MAGIC:
            raise ConnectionError(f"{address} is not a TVM RPC tracker")
    except BaseException:
        sock.close()
        raise
    return sock


def summary(address: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The tracker's summary: {"queue_info": {key: {"free": n, "pending": m}}, "server_info":
    [{"key": "server:KEY", "addr": [host, port]}, ...]}. Anything but a tracker's answer (a
    reset, a timeout, another protocol) is one EdgeCompileError line."""
    try:
        with _connect(address, timeout_s) as s:
            _send(s, [SUMMARY])
            code, value = _recv(s)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise EdgeCompileError(f"tracker {address} did not answer as a TVM RPC tracker: {reason}") from None
    if code != SUCCESS:
        raise EdgeCompileError(f"tracker {address} answered {code} to a summary request")
    return value


def _server_key(info: dict[str, Any]) -> str:
    return str(info.get("key", "")).removeprefix("server:")


def key_counts(address: str, timeout_s: float = 5.0) -> dict[str, int]:
    """key -> number of servers registered under it (free or busy)."""
    counts: dict[str, int] = {}
    for info in summary(address, timeout_s).get("server_info", []):
        counts[_server_key(info)] = counts.get(_server_key(info), 0) + 1
    return counts


def servers(address: str, key: str, timeout_s: float = 5.0) -> set[str]:
    """"host:port" of every server registered under ``key``."""
    return {f"{info['addr'][0]}:{info['addr'][1]}"
            for info in summary(address, timeout_s).get("server_info", [])
            if _server_key(info) == key}


def registered(address: str, key: str, port: int | None = None) -> bool:
    """True once a server (on ``port``, if given) is registered under ``key`` and has put its
    slot in the tracker's queue (the two happen one after the other). False when the tracker
    cannot be asked."""
    try:
        s = summary(address)
    except EdgeCompileError:
        return False
    if s.get("queue_info", {}).get(key, {}).get("free", 0) < 1:
        return False
    return any(_server_key(info) == key
               and (port is None or list(info.get("addr", []))[1:2] == [port])
               for info in s.get("server_info", []))


def request(address: str, key: str, priority: int = 1) -> tuple[str, int, str]:
    """Lease a device under ``key``: (host, port, match key) of the server the tracker picked,
    to connect to with that match key. Blocks until one is free, as TVM's client does."""
    with _connect(address, None) as s:
        _send(s, [REQUEST, key, "", priority])
        value = _recv(s)
    if value[0] != SUCCESS:
        raise ConnectionError(f"tracker {address} answered {value!s}")
    host, port, matchkey = value[1]
    return host, int(port), matchkey
