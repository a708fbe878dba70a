"""Where an artifact runs: this host, one RPC server, or any free device under a tracker key."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from edgecompile.errors import EdgeCompileError, UsageError

DEFAULT_TIMEOUT_S = 30.0


def parse_hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


@dataclass(frozen=True)
class DeviceSpec:
    rpc: str | None = None  # HOST:PORT of an rpc_server
    tracker: str | None = None  # HOST:PORT of an rpc_tracker
    key: str | None = None  # device key under the tracker
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.rpc and self.tracker:
            raise UsageError("give either --rpc or --tracker, not both")
        if self.tracker and not self.key:
            raise UsageError("--tracker needs --key (the device key the servers registered)")
        if self.key and not self.tracker:
            raise UsageError("--key goes with --tracker HOST:PORT")
        for flag, value in (("--rpc", self.rpc), ("--tracker", self.tracker)):
            if value:
                parse_hostport(value, flag)

    @property
    def is_local(self) -> bool:
        return not (self.rpc or self.tracker)

    def describe(self) -> str:
        if self.rpc:
            return f"RPC server {self.rpc}"
        if self.tracker:
            return f"tracker {self.tracker} key '{self.key}'"
        return "this host"


def check_reachable(value: str, what: str, timeout_s: float) -> None:
    """Fail in one line, now, when nothing listens: TVM's own client retries for a minute."""
    host, port = parse_hostport(value, what)
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 10.0)):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise EdgeCompileError(f"cannot reach {what} {value}: {reason}") from None
