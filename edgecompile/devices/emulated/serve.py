"""`edgecompile device start`: an emulated device in the foreground, restarted when a session
crashes it, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from edgecompile.devices.emulated.rootfs import prepare
from edgecompile.devices.emulated.server import describe_signal, start
from edgecompile.errors import EdgeCompileError


def resolve_core(core: str | None, target: str | None, tracker: str | None,
                 key: str | None) -> tuple[str, str | None]:
    """(qemu core, tracker key) from --core, or from a target preset's device_core / rpc_key."""
    if not target:
        return core, key
    from edgecompile.targets import get_target

    preset = get_target(target)
    if not preset.device_core:
        raise EdgeCompileError(f"target '{preset.name}' has no device_core to emulate")
    return preset.device_core, key or (preset.rpc_key if tracker else None) or None


def serve(core: str, port: int | None = None, tracker: str | None = None,
          key: str | None = None, root: Path | None = None, *, host: str = "127.0.0.1",
          restart: bool = True, stream=None) -> int:
    """Run the device in the foreground until SIGINT / SIGTERM; stop everything on the way out.

    Prints ``HOST:PORT`` on stdout once the server accepts connections, progress on stderr.
    With ``restart``, a server whose RPC session crashed (TVM's server then stops accepting
    connections) or that died is started again on the same port.
    """
    stream = stream or sys.stderr
    root = prepare(root, quiet=False)

    def _term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    dev = None
    try:
        t0 = time.perf_counter()
        dev = start(core, port, tracker, key, root, host=host)
        port = dev.port
        print(f"emulated {core} device: rpc_server on {dev.address}"
              + (f", tracker {tracker} key '{key}'" if tracker else "")
              + f" (pid {dev.pid}, up in {time.perf_counter() - t0:.1f}s); Ctrl-C stops it",
              file=stream, flush=True)
        print(dev.address, flush=True)
        seen = 0
        while True:
            time.sleep(0.5)
            failures = dev.session_failures()
            if dev.alive() and len(failures) == seen:
                continue
            new = [describe_signal(c) for c in failures[seen:]]
            seen = len(failures)
            why = (f"an RPC session died ({', '.join(new)})" if new
                   else f"the server exited ({describe_signal(dev.proc.returncode)})")
            print(f"emulated device: {why}", file=stream, flush=True)
            if not restart:
                print(dev.log()[-2000:], file=stream)
                return 1
            dev.stop()
            dev = start(core, port, tracker, key, root, host=host)
            seen = 0
            print(f"emulated device: restarted on {dev.address}", file=stream, flush=True)
    except KeyboardInterrupt:
        print("emulated device: stopping", file=stream, flush=True)
        return 0
    finally:
        if dev is not None:
            dev.stop()
        signal.signal(signal.SIGTERM, old)
