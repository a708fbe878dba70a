"""RPC client: sessions with a device, directly or leased from a tracker under a key."""

from __future__ import annotations

import threading
from typing import Any

from edgecompile.backend.core import load_tvm
from edgecompile.backend.runtime import first_line
from edgecompile.devices import tracker
from edgecompile.devices.net import check_reachable, parse_hostport
from edgecompile.errors import EdgeCompileError


def open_session(spec, on_lease=None):
    """(RPC session, "host:port" of the server it reached) for a DeviceSpec: a direct server,
    or a device leased from a tracker under the spec's key. ``on_lease(server)`` is called as
    soon as the server is known, before connecting (a frozen server hangs the handshake)."""
    rpc = load_tvm().rpc
    if spec.rpc:
        check_reachable(spec.rpc, "RPC server", spec.timeout_s)
        host, port = parse_hostport(spec.rpc, "--rpc")
        if on_lease:
            on_lease(spec.rpc)
        try:
            session = _within(spec.timeout_s, lambda: rpc.connect(host, port, session_timeout=0),
                              f"RPC server {spec.rpc} accepted the connection but did not answer")
            return session, spec.rpc
        except EdgeCompileError:
            raise
        except Exception as e:
            raise EdgeCompileError(
                f"RPC server {spec.rpc} refused the session: {first_line(e)}"
            ) from None
    _check_tracker(spec)
    try:
        return _within(spec.timeout_s, lambda: _lease(spec.tracker, spec.key, on_lease),
                       f"no device under key '{spec.key}' at tracker {spec.tracker} answered")
    except EdgeCompileError:
        raise
    except Exception as e:
        raise EdgeCompileError(
            f"tracker {spec.tracker} gave no working device for key '{spec.key}': {first_line(e)}"
        ) from None


def check_device(spec) -> None:
    """Fail in one line before any long work (building the artifact first) where the device
    cannot be reached: nothing listens at the RPC server or tracker, or the tracker has no
    device under the key. A local spec needs nothing."""
    if spec.rpc:
        check_reachable(spec.rpc, "RPC server", spec.timeout_s)
    elif spec.tracker:
        _check_tracker(spec)


def _check_tracker(spec) -> None:
    check_reachable(spec.tracker, "tracker", spec.timeout_s)
    keys = tracker.key_counts(spec.tracker, spec.timeout_s)
    if spec.key not in keys:
        # TVM's request() would wait forever for a device that never registers.
        known = ", ".join(sorted(keys)) or "none"
        raise EdgeCompileError(
            f"no device registered under key '{spec.key}' at tracker {spec.tracker} "
            f"(keys there: {known})"
        )


def _within(timeout_s: float, call, what: str):
    """``call()`` or a one-line error after ``timeout_s``: TVM's client blocks forever on a
    server that accepts a connection and then never answers (frozen, or wedged)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise EdgeCompileError(f"{what} within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _lease(tracker_address: str, key: str, on_lease=None):
    """TVM's TrackerSession.request, keeping the address of the server the tracker picked
    (the farm records which device ran each job): REQUEST, then connect with the match key.
    Blocks until a device under ``key`` is free."""
    host, port, matchkey = tracker.request(tracker_address, key)
    if on_lease:
        on_lease(f"{host}:{port}")
    return load_tvm().rpc.connect(host, port, matchkey, 0), f"{host}:{port}"
