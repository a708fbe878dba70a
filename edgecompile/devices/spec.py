"""Where an artifact runs: this host, one RPC server, or any free device under a tracker key."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompile.devices.net import parse_hostport
from edgecompile.errors import UsageError

DEFAULT_TIMEOUT_S = 30.0


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
