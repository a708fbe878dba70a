"""The emulated arm64 device's root filesystem: Debian arm64 with Python and a runtime-only TVM.

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
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecompile.devices.emulated.mirror import debian_mirror
from edgecompile.devices.emulated.tools import qemu_binary, require_packages, which
from edgecompile.errors import EdgeCompileError
from edgecompile.paths import write_atomic
from edgecompile.progress import StageProgress

# What the rootfs is. Bump RECIPE when the recipe changes so existing caches are redone.
RECIPE = 1
SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36
GUEST_PYTHON = "3.11"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Same TVM as the host side (pyproject pins them); the others are what the RPC server imports.
GUEST_REQUIREMENTS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    "psutil",
    "cloudpickle",
)
ROOTFS_DIRNAME = "arm64-rootfs"
STATE_DIR = ".edgecompile"  # inside the rootfs: stage stamps and the ready marker
READY = "ready.json"
# Left by debootstrap but must come from the host under qemu-user (see the module docstring).
HOST_DIRS = ("dev", "proc", "sys", "tmp")

def default_root() -> Path:
    from edgecompile.paths import cache_dir

    return cache_dir().expanduser() / ROOTFS_DIRNAME


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
    write_atomic(path, json.dumps(data, indent=2) + "\n")


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


def guest_env(root: Path, core: str, pythonpath: list[Path]) -> dict[str, str]:
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
    require_packages(for_prepare=True)
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
            cmd = [which("debootstrap"), "--arch=arm64", "--variant=minbase", "--foreign",
                   "--include=python3", SUITE, str(root), mirror]
            if os.geteuid() != 0:
                cmd = [which("fakeroot"), *cmd]
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
    env = guest_env(root, "cortex-a53", [root / "opt" / "tvm"])
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
