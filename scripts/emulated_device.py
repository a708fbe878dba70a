#!/usr/bin/env python3
"""An emulated arm64 device (qemu-user + Debian arm64 rootfs) running a real TVM RPC server.

    python scripts/emulated_device.py prepare                 # once: rootfs + aarch64 TVM (cached)
    python scripts/emulated_device.py start --core cortex-a72 [--port P] [--tracker H:P --key K]
    python scripts/emulated_device.py start --target rpi4 --tracker 127.0.0.1:9190

`start` stays in the foreground (prints HOST:PORT on stdout once the server accepts
connections) until Ctrl-C or SIGTERM, then stops every process it started. All the logic is in
edgecompile.emulated_device; this is only the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from edgecompile import emulated_device as emu
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgecompile import emulated_device as emu
from edgecompile.errors import EdgeCompileError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emulated_device.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    root_help = f"rootfs directory (default: {emu.default_root()})"

    s = sub.add_parser("prepare", help="build the arm64 rootfs with TVM in it (idempotent)")
    s.add_argument("--root", type=Path, help=root_help)
    s.add_argument("--mirror", help="Debian mirror (default: this machine's apt mirror, "
                                    f"else {emu.DEFAULT_MIRROR})")

    s = sub.add_parser("start", help="run an RPC server in the device, in the foreground")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--core", help="qemu CPU to pin, e.g. cortex-a72 (see `cores`)")
    which.add_argument("--target", help="a target preset: its device_core (and rpc_key as the "
                                        "default --key)")
    s.add_argument("--port", type=int, help="server port (default: a free one)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--tracker", help="register with this RPC tracker, HOST:PORT")
    s.add_argument("--key", help="device key under the tracker")
    s.add_argument("--no-restart", action="store_true",
                   help="exit when an RPC session crashes instead of restarting the server")
    s.add_argument("--root", type=Path, help=root_help)

    sub.add_parser("cores", help="the CPU models qemu can pin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "prepare":
            print(emu.prepare(args.root, mirror=args.mirror))
            return 0
        if args.command == "cores":
            print("\n".join(emu.qemu_cpus()))
            return 0
        core, key = args.core, args.key
        if args.target:
            from edgecompile.targets import get_target

            preset = get_target(args.target)
            if not preset.device_core:
                raise EdgeCompileError(f"target '{preset.name}' has no device_core to emulate")
            core = preset.device_core
            if args.tracker and not key:
                key = preset.rpc_key or None
        return emu.serve(core, args.port, args.tracker, key, args.root, host=args.host,
                         restart=not args.no_restart)
    except EdgeCompileError as e:
        print(f"emulated_device: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
