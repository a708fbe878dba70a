"""The host tools the emulated device needs: qemu-user and, to build the rootfs, debootstrap."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from edgecompile.errors import EdgeCompileError, UnknownNameError

# tool -> Debian package that provides it
_TOOLS_PREPARE = {"debootstrap": "debootstrap", "dpkg-deb": "dpkg", "tar": "tar"}
_QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")  # the first found is used
_QEMU_PACKAGE = "qemu-user-static"


def which(tool: str) -> str | None:
    # debootstrap lives in /usr/sbin, which a user's PATH on Debian does not include
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def qemu_binary() -> str | None:
    for name in _QEMU_BINARIES:
        path = which(name)
        if path:
            return path
    return None


def missing_packages(for_prepare: bool = True) -> list[str]:
    """Debian packages whose tools are not on PATH (empty: nothing missing)."""
    missing = [] if qemu_binary() else [_QEMU_PACKAGE]
    if for_prepare:
        missing += [pkg for tool, pkg in _TOOLS_PREPARE.items() if which(tool) is None]
        if os.geteuid() != 0 and which("fakeroot") is None:
            missing.append("fakeroot")  # debootstrap refuses to run as a user without it
    return sorted(set(missing))


def require_packages(for_prepare: bool) -> None:
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
    require_packages(for_prepare=False)
    return list(_qemu_cpus(qemu_binary()))


def check_core(core: str) -> None:
    """Raise UnknownNameError unless qemu knows ``core`` (properties after a comma are
    passed through, e.g. ``max,sve-default-vector-length=16``)."""
    name = core.split(",", 1)[0]
    cpus = qemu_cpus()
    if name not in cpus:
        raise UnknownNameError("qemu CPU", name, cpus)
