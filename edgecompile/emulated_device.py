"""An emulated arm64 device on this x86 machine: a real ``tvm.exec.rpc_server`` under qemu-user.

``prepare()`` builds, once, a Debian arm64 root filesystem with Python and a runtime-only
aarch64 TVM in it; ``start(core)`` runs the RPC server in it with qemu pinned to the device's
core, so code that uses an instruction the board lacks dies there with SIGILL, as on the board.
It is for checking that an artifact *runs and is correct* on the target ISA, never for latency
(MobileNetV2 at 224x224 takes seconds per inference here).

How it works, and why it needs no system-wide set-up (no binfmt_misc, no chroot, no root to run):

* qemu-user runs one aarch64 Linux process on the host kernel. With ``QEMU_LD_PREFIX=ROOT`` every
  absolute path the guest opens is looked up as ``ROOT/path`` first and on the host when that
  does not exist, so the guest's loader, libc and Python come from the rootfs while sockets,
  ``/proc``, ``/dev`` and temporary files are the host's (``prepare`` removes the rootfs's own
  ``dev proc sys tmp`` so they fall through to the host).
* The RPC server starts its listening worker with ``subprocess.Popen([sys.executable, ...])``.
  The host kernel cannot exec an aarch64 binary without a binfmt_misc handler, so the guest gets
  ``sys.executable`` pointing at a small host shell script that runs the guest Python under qemu
  again (a ``sitecustomize`` sets it). Forked session workers need nothing: a fork of qemu is qemu.
* The server runs in its own process group; ``stop()`` kills the group, so the worker that
  outlives its parent goes too.

Default location: ``$EDGECOMPILE_CACHE/arm64-rootfs`` (``~/.cache/edgecompile/arm64-rootfs``).
Building it needs Debian's ``qemu-user-static debootstrap`` (and ``fakeroot`` when not root),
a Debian mirror (the one this machine's apt uses when it is a Debian mirror, else
deb.debian.org; ``$EDGECOMPILE_DEBIAN_MIRROR`` overrides) and PyPI.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgeCompileError, UnknownNameError, UsageError
from edgecompile.progress import StageProgress

# What the rootfs is. Bump RECIPE when the recipe changes so existing caches are redone.
RECIPE = 1
SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36
GUEST_PYTHON = "3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Same TVM as the host side (pyproject pins them); the others are what the RPC server imports.
GUEST_REQUIREMENTS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    "psutil",
    "cloudpickle",
)
SERVER_MODULE = "tvm.exec.rpc_server"
START_TIMEOUT_S = 120.0

ROOTFS_DIRNAME = "arm64-rootfs"
STATE_DIR = ".edgecompile"  # inside the rootfs: stage stamps and the ready marker
READY = "ready.json"
# Left by debootstrap but must come from the host under qemu-user (see the module docstring).
HOST_DIRS = ("dev", "proc", "sys", "tmp")

# tool -> Debian package that provides it
_TOOLS_PREPARE = {"debootstrap": "debootstrap", "dpkg-deb": "dpkg", "tar": "tar"}
_QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")  # the first found is used
_QEMU_PACKAGE = "qemu-user-static"
_DEBIAN_SUITES = {
    "bookworm", "trixie", "forky", "bullseye", "buster", "sid",
    "stable", "testing", "unstable", "oldstable",
}


def default_root() -> Path:
    from edgecompile.paths import cache_dir

    return cache_dir().expanduser() / ROOTFS_DIRNAME


# ---------------------------------------------------------------------------------------------
# Host tools and packages


def _which(tool: str) -> str | None:
    # debootstrap lives in /usr/sbin, which a user's PATH on Debian does not include
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def qemu_binary() -> str | None:
    for name in _QEMU_BINARIES:
        path = _which(name)
        if path:
            return path
    return None


def missing_packages(for_prepare: bool = True) -> list[str]:
    """Debian packages whose tools are not on PATH (empty: nothing missing)."""
    missing = [] if qemu_binary() else [_QEMU_PACKAGE]
    if for_prepare:
        missing += [pkg for tool, pkg in _TOOLS_PREPARE.items() if _which(tool) is None]
        if os.geteuid() != 0 and _which("fakeroot") is None:
            missing.append("fakeroot")  # debootstrap refuses to run as a user without it
    return sorted(set(missing))


def _require_packages(for_prepare: bool) -> None:
    missing = missing_packages(for_prepare)
    if missing:
        names = " ".join(missing)
        raise EdgeCompileError(
            f"the emulated arm64 device needs Debian packages that are not installed: {names} "
            f"(run scripts/setup.sh, or: sudo apt-get install {names})"
        )


@functools.lru_cache(maxsize=4)
def _qemu_cpus(qemu: str) -> tuple[str, ...]:
    out = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    _, _, listing = text.partition("Available CPUs:")
    return tuple(w for w in (listing or text).split() if re.fullmatch(r"[a-z0-9][\w.-]*", w))


def qemu_cpus() -> list[str]:
    """The CPU models this machine's qemu-aarch64 can emulate (``-cpu help``)."""
    _require_packages(for_prepare=False)
    return list(_qemu_cpus(qemu_binary()))


def check_core(core: str) -> None:
    """Raise UnknownNameError unless qemu knows ``core`` (properties after a comma are
    passed through, e.g. ``max,sve-default-vector-length=16``)."""
    name = core.split(",", 1)[0]
    cpus = qemu_cpus()
    if name not in cpus:
        raise UnknownNameError("qemu CPU", name, cpus)


# ---------------------------------------------------------------------------------------------
# Debian mirror


def _apt_source_entries(etc_apt: Path) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of every enabled entry in sources.list and sources.list.d."""
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                yield (fields.get("types", "").split(), fields.get("uris", "").split(),
                       fields.get("suites", "").split())
        else:  # one-line format: deb [options] uri suite [component...]
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3:
                    yield [line[0]], [line[1]], [line[2]]


def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror for the rootfs: $EDGECOMPILE_DEBIAN_MIRROR, else the first apt source
    of this machine that serves a Debian release, else deb.debian.org."""
    env = os.environ.get("EDGECOMPILE_DEBIAN_MIRROR")
    if env:
        return env
    for types, uris, suites in _apt_source_entries(etc_apt):
        if "deb" in types and any(s in _DEBIAN_SUITES for s in suites):
            for uri in uris:
                if re.match(r"(https?|ftp|file):", uri):
                    return uri
    return DEFAULT_MIRROR


# ---------------------------------------------------------------------------------------------
# prepare


def _run(cmd: list[str], what: str, log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n".encode())
        fh.flush()
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env=env)
    if r.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise EdgeCompileError(f"{what} failed (exit {r.returncode}; full log {log}):\n{tail}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def is_ready(root: Path | None = None) -> bool:
    root = Path(root) if root else default_root()
    m = _read_json(root / STATE_DIR / READY)
    return bool(m) and m.get("recipe") == RECIPE and m.get("requirements") == list(
        GUEST_REQUIREMENTS)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One prepare at a time per rootfs (parallel test workers, two terminals)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _guest_env(root: Path, core: str, pythonpath: list[Path]) -> dict[str, str]:
    """The environment of a guest process: the host's, minus what would confuse the guest's
    Python / loader (host PYTHON* settings, LD_PRELOAD of x86 libraries)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("LD_PRELOAD", "LD_LIBRARY_PATH",
                                                       "VIRTUAL_ENV")}
    env.update(QEMU_LD_PREFIX=str(root), QEMU_CPU=core, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    return env


def prepare(root: Path | None = None, *, mirror: str | None = None,
            quiet: bool = False) -> Path:
    """Build the arm64 rootfs with TVM in it, unless it is already there; return its path.

    Idempotent and resumable: each stage leaves a stamp, the ready marker is written last, so a
    second call returns at once and an interrupted one redoes only what is missing.
    """
    root = Path(root) if root else default_root()
    root = root.absolute()
    if is_ready(root):
        return root
    _require_packages(for_prepare=True)
    with _lock(root):
        if is_ready(root):  # another process finished it while we waited
            return root
        _prepare_locked(root, mirror or debian_mirror(), quiet)
    return root


def _prepare_locked(root: Path, mirror: str, quiet: bool) -> None:
    state = root / STATE_DIR
    if root.exists() and any(root.iterdir()) and not state.is_dir():
        raise EdgeCompileError(
            f"{root} exists and was not made by edgecompile; remove it or pass another root"
        )
    state.mkdir(parents=True, exist_ok=True)
    recipe = state / "recipe"
    if recipe.exists() and recipe.read_text().strip() != str(RECIPE):
        for s in state.glob("*.done"):  # built by another recipe: redo every stage
            s.unlink()
    recipe.write_text(f"{RECIPE}\n")
    log = state / "prepare.log"
    progress = StageProgress(total=4, quiet=quiet)
    progress.note(f"emulated arm64 device: Debian {SUITE} arm64 rootfs in {root}")

    stamp = state / "debootstrap.done"
    with progress.stage("rootfs", f"debootstrap --foreign from {mirror}"):
        if stamp.exists():
            progress.note("already there")
        else:
            # A partial debootstrap is not resumable: start that stage from an empty root.
            for child in root.iterdir():
                if child.name != STATE_DIR:
                    _remove(child)
            for s in state.glob("*.done"):
                s.unlink()
            cmd = [_which("debootstrap"), "--arch=arm64", "--variant=minbase", "--foreign",
                   "--include=python3", SUITE, str(root), mirror]
            if os.geteuid() != 0:
                cmd = [_which("fakeroot"), *cmd]
            _run(cmd, f"debootstrap from {mirror} (set EDGECOMPILE_DEBIAN_MIRROR to use "
                      "another Debian mirror)", log)
            stamp.touch()

    stamp = state / "unpack.done"
    with progress.stage("unpack", "dpkg-deb | tar -x each downloaded package (no emulated 2nd stage)"):
        if stamp.exists():
            progress.note("already there")
        else:
            _unpack_debs(root, log)
            stamp.touch()

    stamp = state / "tvm.done"
    with progress.stage("tvm", f"pip --platform {WHEEL_PLATFORM}: {' '.join(GUEST_REQUIREMENTS)}"):
        if _read_json(stamp) == {"requirements": list(GUEST_REQUIREMENTS)}:
            progress.note("already there")
        else:
            _install_guest_packages(root, log)
            _write_json(stamp, {"requirements": list(GUEST_REQUIREMENTS)})

    with progress.stage("check", "import TVM's RPC server in the guest (cortex-a53)"):
        versions = _smoke_test(root, log)
        progress.note(", ".join(f"{k} {v}" for k, v in versions.items()))
    _write_json(state / READY, {
        "recipe": RECIPE, "suite": SUITE, "mirror": mirror,
        "requirements": list(GUEST_REQUIREMENTS), "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": progress.timings,
    })
    progress.note(f"ready: {root}")


def _remove(path: Path) -> None:
    """rm -rf, also through the read-only directories a rootfs has (dr-xr-xr-x proc, ...)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for d, _, _ in os.walk(path):
            os.chmod(d, 0o700)
        shutil.rmtree(path)


def _unpack_debs(root: Path, log: Path) -> None:
    debpaths = root / "debootstrap" / "debpaths"
    if not debpaths.is_file():
        raise EdgeCompileError(f"{debpaths} missing: the debootstrap stage did not finish")
    debs = []
    for line in debpaths.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            debs.append(root / parts[1].lstrip("/"))
    for deb in debs:
        # dpkg-deb -x would replace the merged-/usr symlinks (/bin -> usr/bin ...) with real
        # directories; tar --keep-directory-symlink keeps them.
        with open(log, "ab") as fh:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                    stdout=subprocess.PIPE, stderr=fh)
            tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
                                 stdin=dpkg.stdout, stderr=fh)
            dpkg.stdout.close()
            if dpkg.wait() != 0 or tar.returncode != 0:
                raise EdgeCompileError(f"unpacking {deb.name} into {root} failed (see {log})")
    python = root / "usr" / "bin" / f"python{GUEST_PYTHON}"
    if not python.exists():
        raise EdgeCompileError(f"the rootfs has no {python.relative_to(root)} after unpacking")
    for name in HOST_DIRS:
        _remove(root / name)
    for deb in debs:  # about 60 MB that nothing needs any more
        deb.unlink(missing_ok=True)


def _install_guest_packages(root: Path, log: Path) -> None:
    final = root / "opt" / "tvm"
    tmp = root / "opt" / "tvm.partial"
    _remove(tmp)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--target", str(tmp), "--platform", WHEEL_PLATFORM,
           "--python-version", GUEST_PYTHON, "--implementation", "cp",
           "--only-binary=:all:", "--no-compile", "--no-warn-script-location",
           *GUEST_REQUIREMENTS]
    _run(cmd, "pip install of the aarch64 wheels", log)
    # The compiler library (240 MB, LLVM inside) is never used on the device; without it
    # `import tvm` loads the runtime only, and takes half the time under emulation.
    for lib in (tmp / "tvm" / "lib").glob("libtvm_compiler*.so"):
        lib.unlink()
    _remove(final)
    os.replace(tmp, final)


_SMOKE = """
import json, importlib.metadata as md
import numpy, psutil, cloudpickle, multiprocessing, argparse, logging
import tvm, tvm.runtime, tvm.rpc, tvm.rpc.server, tvm.exec.rpc_server, tvm.exec.popen_worker
names = ("apache-tvm", "apache-tvm-ffi", "numpy", "psutil", "cloudpickle")
print("VERSIONS=" + json.dumps({n: md.version(n) for n in names}))
"""


def _smoke_test(root: Path, log: Path) -> dict[str, str]:
    """Import what the RPC server imports, in the guest; this also leaves the .pyc files in the
    rootfs, which more than halves every later server start."""
    qemu = qemu_binary()
    env = _guest_env(root, "cortex-a53", [root / "opt" / "tvm"])
    cmd = [qemu, "-cpu", "cortex-a53", str(root / "usr" / "bin" / f"python{GUEST_PYTHON}"),
           "-c", _SMOKE]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(cmd[:4])} -c <smoke test>\n{r.stdout}{r.stderr}")
    m = re.search(r"^VERSIONS=(.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-10:])
        raise EdgeCompileError(f"TVM does not import in the emulated device (exit "
                               f"{r.returncode}):\n{tail}")
    return json.loads(m.group(1))


# ---------------------------------------------------------------------------------------------
# start / stop


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rpc_server does
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


# TVM's RPC wire protocol, the few bits needed here (tvm/rpc/base.py).
_RPC_MAGIC = 0xFF271
_TRACKER_MAGIC = 0x2F271
_TRACKER_SUMMARY = 6


def _recvall(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def tracker_summary(tracker: str, timeout: float = 5.0) -> dict[str, Any]:
    """The tracker's summary ({"queue_info": ..., "server_info": ...}), without importing TVM."""
    host, port = _parse_hostport(tracker, "tracker")
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack("<i", _TRACKER_MAGIC))
        if struct.unpack("<i", _recvall(s, 4))[0] != _TRACKER_MAGIC:
            raise ConnectionError(f"{tracker} is not a TVM RPC tracker")
        msg = json.dumps([_TRACKER_SUMMARY]).encode()
        s.sendall(struct.pack("<i", len(msg)) + msg)
        size = struct.unpack("<i", _recvall(s, 4))[0]
        code, summary = json.loads(_recvall(s, size))
    return summary


def _registered(tracker: str, key: str, port: int) -> bool:
    try:
        summary = tracker_summary(tracker)
    except (OSError, ValueError):
        return False
    if summary.get("queue_info", {}).get(key, {}).get("free", 0) < 1:
        return False
    return any(info.get("key") == f"server:{key}" and list(info.get("addr", []))[1:2] == [port]
               for info in summary.get("server_info", []))


def _accepts(host: str, port: int) -> bool:
    """A connection the server drops at once: a wrong magic number is refused cleanly, where a
    bare connect-and-close makes the server's listen loop reset its tracker connection."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as s:
            s.sendall(struct.pack("<i", 0))
        return True
    except OSError:
        return False


_SITECUSTOMIZE = """\
# Written by edgecompile.emulated_device: the host kernel cannot exec the guest's aarch64 python
# (no binfmt_misc handler needed), so child interpreters start through a host script that runs
# it under qemu again.
import os, sys
_exe = os.environ.get("EDGECOMPILE_GUEST_PYTHON")
if _exe:
    sys.executable = _exe
"""


def _kill_group(proc: subprocess.Popen, grace: float = 3.0, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL it, until no process of it is left."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_members(pgid):
                return
            time.sleep(0.05)
    raise EdgeCompileError(f"processes {group_members(pgid)} of the emulated device did not exit")


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


def _cleanup(proc: subprocess.Popen, run_dir: Path) -> None:
    try:
        _kill_group(proc)
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


def _describe_signal(code: int) -> str:
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
    _require_packages(for_prepare=False)
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
        _parse_hostport(tracker, "tracker")
        try:
            tracker_summary(tracker)
        except (OSError, ValueError) as e:
            raise EdgeCompileError(f"cannot reach RPC tracker {tracker}: {e}") from None
    if port is not None:
        if not _port_free(host, port):
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
    env = _guest_env(root, core, [run_dir / "site", root / "opt" / "tvm"])
    env["EDGECOMPILE_GUEST_PYTHON"] = str(wrapper)
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
                          f"start-up ({_describe_signal(proc.returncode)}):\n{tail}")
            if bound in text and _accepts(host, port) and (
                    not tracker or _registered(tracker, key, port)):
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


# ---------------------------------------------------------------------------------------------
# foreground serving (scripts/emulated_device.py start, and the CLI)


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
            new = [_describe_signal(c) for c in failures[seen:]]
            seen = len(failures)
            why = (f"an RPC session died ({', '.join(new)})" if new
                   else f"the server exited ({_describe_signal(dev.proc.returncode)})")
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
