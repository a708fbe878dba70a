"""An emulated arm64 device (qemu-user + Debian arm64 rootfs) running a real TVM RPC server.

    python scripts/emulated_device.py prepare                 # once: rootfs + aarch64 TVM (cached)
    python scripts/emulated_device.py start --target rpi4     # foreground; prints HOST:PORT
    python scripts/emulated_device.py start --core cortex-a72 --tracker 127.0.0.1:9190 --key rpi4
    python scripts/emulated_device.py cores                   # CPUs qemu can pin

The same as `edgecompile device ...`: this script only forwards to the CLI.
"""

import sys

from edgecompile.cli import main

if __name__ == "__main__":
    sys.exit(main(["device", *sys.argv[1:]]))
