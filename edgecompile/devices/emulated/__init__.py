"""An emulated arm64 device: a real TVM RPC server under qemu-user, pinned to a board's core.

Correct, never fast: for checking that an artifact runs and is right on the target ISA.

- tools.py: the host tools it needs (qemu-user, debootstrap) and the cores qemu can pin;
- mirror.py: the Debian mirror the rootfs comes from;
- rootfs.py: ``prepare()`` builds the arm64 root filesystem with a runtime-only TVM, once;
- server.py: ``start(core)`` runs the RPC server in it, ``EmulatedDevice.stop()`` ends it;
- serve.py: ``serve()``, the foreground loop behind ``edgecompile device start``.
"""

from edgecompile.devices.emulated.mirror import DEFAULT_MIRROR, debian_mirror
from edgecompile.devices.emulated.rootfs import HOST_DIRS, default_root, is_ready, prepare
from edgecompile.devices.emulated.serve import resolve_core, serve
from edgecompile.devices.emulated.server import EmulatedDevice, start
from edgecompile.devices.emulated.tools import check_core, missing_packages, qemu_binary, qemu_cpus

__all__ = [
    "DEFAULT_MIRROR", "HOST_DIRS", "EmulatedDevice", "check_core", "debian_mirror", "default_root",
    "is_ready", "missing_packages", "prepare", "qemu_binary", "qemu_cpus", "resolve_core", "serve",
    "start",
]
