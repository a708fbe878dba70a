"""An emulated arm64 device on this x86 machine: a real ``tvm.exec.rpc_server`` under qemu-user,
started in the prepared rootfs (see rootfs.py for how the guest runs), and stopped with its
whole process group."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from edgecompile.devices import tracker as tracker_protocol
from edgecompile.devices.emulated.rootfs import GUEST_PYTHON, default_root, guest_env, is_ready
from edgecompile.devices.emulated.tools import check_core, qemu_binary, require_packages
from edgecompile.devices.net import accepts, free_port, kill_group, parse_hostport, port_free
from edgecompile.errors import EdgeCompileError, UsageError

SERVER_MODULE = "tvm.exec.rpc_server"
START_TIMEOUT_S = 120.0

_SITECUSTOMIZE = """\
# Written by edgecompile.devices.emulated: the host kernel cannot exec the guest's aarch64 python
# (no binfmt_misc handler needed), so child interpreters start through a host script that runs
# it under qemu again.
import os, sys
_exe = os.environ.get("EDGECOMPILE_GUEST_PYTHON")
if _exe:
    sys.executable = _exe
# So that results can say they were measured under emulation (never a latency): the server's
# sessions answer edgecompile.device_info (backend.runtime.LoadedModel.device_info).
_info = os.environ.get("EDGECOMPILE_DEVICE_INFO")
if _info:
    try:
        import tvm_ffi
        tvm_ffi.register_global_func("edgecompile.device_info", lambda: _info, override=True)
    except Exception:
        pass
"""

def _cleanup(proc: subprocess.Popen, run_dir: Path) -> None:
    try:
        kill_group(proc)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass(eq=False)
class EmulatedDevice:
    """A running emulated device: connect with ``tvm.rpc.connect(host, port)``, or through
    the tracker under ``key``. ``stop()`` (or leaving the ``with``) ends every process of it."""

    host: str
    port: int
    core: str
    key: str | None
    tracker: str | None
    root: Path
    proc: subprocess.Popen = field(repr=False)
    run_dir: Path = field(repr=False)
    _final_log: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _cleanup, self.proc, self.run_dir)

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group."""
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "server.log"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """The server's stdout and stderr so far (kept after ``stop()``)."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def session_failures(self) -> list[int]:
        """Exit codes of RPC sessions that died (negative: killed by that signal, e.g.
        -4 = SIGILL: the code used an instruction the pinned core lacks). Note that TVM's
        rpc_server stops accepting connections after such a failure: restart the device."""
        return [int(c) for c in re.findall(
            r"Child process \d+ exited unsuccessfully with error code (-?\d+)", self.log())]

    def stop(self) -> None:
        """Kill the server's whole process group (idempotent)."""
        if self._finalizer.alive:
            text = self.log()
            self._finalizer()
            self._final_log = text

    def __enter__(self) -> EmulatedDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe_signal(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"exit {code}"


def start(core: str, port: int | None = None, tracker: str | None = None,
          key: str | None = None, root: Path | None = None, *, host: str = "127.0.0.1",
          timeout: float = START_TIMEOUT_S) -> EmulatedDevice:
    """Start ``tvm.exec.rpc_server`` in the emulated device, qemu pinned to ``core`` (qemu's
    CPU name, e.g. a preset's ``device_core``), and wait until it accepts connections (and,
    with a tracker, until the tracker lists it under ``key``)."""
    root = (Path(root) if root else default_root()).absolute()
    require_packages(for_prepare=False)
    check_core(core)
    if tracker and not key:
        raise UsageError("an emulated device registered with a tracker needs a key")
    if key and not tracker:
        raise UsageError("key goes with a tracker HOST:PORT")
    if not is_ready(root):
        raise EdgeCompileError(
            f"no emulated arm64 device prepared in {root}: run "
            "`python scripts/emulated_device.py prepare` first (downloads about 150 MB once)"
        )
    if tracker:
        parse_hostport(tracker, "tracker")
        try:
            tracker_protocol.summary(tracker)
        except EdgeCompileError as e:
            raise EdgeCompileError(f"cannot reach RPC tracker {tracker}: {e}") from None
    if port is not None:
        if not port_free(host, port):
            raise EdgeCompileError(f"port {host}:{port} is in use")
        return _start_once(core, port, tracker, key, root, host, timeout)
    for attempt in range(3):  # an auto-picked port can be taken before the server binds it
        try:
            return _start_once(core, free_port(host), tracker, key, root, host, timeout)
        except _PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _PortTaken(EdgeCompileError):
    pass


def _start_once(core: str, port: int, tracker: str | None, key: str | None, root: Path,
                host: str, timeout: float) -> EmulatedDevice:
    qemu = qemu_binary()
    guest_python = root / "usr" / "bin" / f"python{GUEST_PYTHON}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"edgecompile-emu-{port}-"))
    (run_dir / "tmp").mkdir()
    (run_dir / "site").mkdir()
    (run_dir / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    wrapper = run_dir / "python3"
    wrapper.write_text(
        "#!/bin/sh\n# The guest's python, for the guest's subprocesses (see sitecustomize.py)\n"
        f"exec {shlex.quote(qemu)} -L {shlex.quote(str(root))} -cpu {shlex.quote(core)} "
        f"{shlex.quote(str(guest_python))} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    env = guest_env(root, core, [run_dir / "site", root / "opt" / "tvm"])
    env["EDGECOMPILE_GUEST_PYTHON"] = str(wrapper)
    env["EDGECOMPILE_DEVICE_INFO"] = json.dumps({"emulated": f"qemu-aarch64 -cpu {core}"})
    env["TMPDIR"] = str(run_dir / "tmp")  # uploaded libraries; removed with the run dir

    argv = [qemu, "-L", str(root), "-cpu", core, str(guest_python), "-m", SERVER_MODULE,
            "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    if tracker:
        argv += ["--tracker", tracker, "--key", key]
    with open(run_dir / "server.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=run_dir)
    dev = EmulatedDevice(host=host, port=port, core=core, key=key, tracker=tracker, root=root,
                         proc=proc, run_dir=run_dir)
    bound = f"bind to {host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            text = dev.log()
            if not dev.alive():
                tail = "\n".join(text.splitlines()[-12:])
                cls = _PortTaken if "cannot bind" in text else EdgeCompileError
                raise cls(f"the emulated device's RPC server (qemu -cpu {core}) exited during "
                          f"start-up ({describe_signal(proc.returncode)}):\n{tail}")
            if bound in text and accepts(host, port, timeout_s=2.0) and (
                    not tracker or tracker_protocol.registered(tracker, key, port)):
                return dev
            if time.monotonic() > deadline:
                tail = "\n".join(text.splitlines()[-12:])
                what = f"registered with {tracker} as '{key}'" if tracker else "accepting"
                raise EdgeCompileError(f"the emulated device's RPC server was not {what} on "
                                       f"{host}:{port} after {timeout:.0f}s:\n{tail}")
            time.sleep(0.2)
    except BaseException:
        dev.stop()
        raise
