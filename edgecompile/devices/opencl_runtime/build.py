"""Compile the OpenCL runtime plug-in ``libtvm_runtime_opencl.so``.

The plug-in is built against the headers that the ``apache-tvm`` and ``apache-tvm-ffi`` wheels
ship (``tvm/include``, ``tvm_ffi/include``, dlpack).  It links neither TVM nor OpenCL:

* TVM symbols resolve at load time from ``libtvm_runtime.so`` / ``libtvm_ffi.so``, which
  ``import tvm`` loads with ``RTLD_GLOBAL`` (so the plug-in must be loaded after ``import tvm``);
* OpenCL is opened with ``dlopen("libOpenCL.so.1")`` on first use (see ``cl_loader.cc``).

That makes a cross build need nothing but a cross C++ compiler: the wheels' headers are the same
on every architecture.  Usage::

    python -m edgecompile.devices.opencl_runtime.build --out DIR [--cxx aarch64-linux-gnu-g++]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIB_NAME = "libtvm_runtime_opencl.so"
SOURCES = ("cl_loader.cc", "opencl_device_api.cc", "opencl_module.cc")
HEADERS = ("cl_loader.h", "opencl_common.h")
SRC_DIR = Path(__file__).resolve().parent


def include_dirs() -> list[Path]:
    """Header directories of the installed tvm / tvm_ffi wheels (found without importing tvm)."""
    import importlib.util

    dirs: list[Path] = []
    for pkg, subdirs in (
        ("tvm_ffi", ("include", "include/dlpack/include", "3rdparty/dlpack/include")),
        ("tvm", ("include",)),
    ):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {pkg!r} is not installed: cannot find its headers")
        root = Path(next(iter(spec.submodule_search_locations)))
        dirs.extend(root / s for s in subdirs if (root / s).is_dir())
    if not any((d / "dlpack" / "dlpack.h").is_file() for d in dirs):
        raise RuntimeError(f"dlpack/dlpack.h not found under {dirs}")
    return dirs


def _base_flags(cxx: str, sysroot: str | None) -> list[str]:
    cmd = shlex.split(cxx) + [
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-fvisibility=hidden",
        "-Wall",
        "-Wno-unused-function",
        "-DNDEBUG",
    ]
    if sysroot:
        cmd.append(f"--sysroot={sysroot}")
    return cmd


def compile_commands(
    out: Path,
    cxx: str = "g++",
    sysroot: str | None = None,
    extra_flags: Sequence[str] = (),
) -> tuple[list[list[str]], list[str]]:
    """(one compile command per source, the link command) producing ``out``."""
    base = _base_flags(cxx, sysroot)
    incs = [a for d in include_dirs() for a in ("-I", str(d))]
    objs = [out.parent / f".{out.name}.{Path(s).stem}.o" for s in SOURCES]
    compiles = [
        base + incs + list(extra_flags) + ["-c", str(SRC_DIR / s), "-o", str(o)]
        for s, o in zip(SOURCES, objs, strict=True)
    ]
    # libdl is part of libc on glibc >= 2.34; naming it keeps older boards working.
    link = base + ["-shared"] + [str(o) for o in objs] + list(extra_flags)
    link += ["-o", str(out), "-ldl", "-lpthread"]
    return compiles, link


def source_digest(cxx: str = "g++", extra_flags: Sequence[str] = ()) -> str:
    """Hash of the sources, headers, compiler and flags: names a cache entry."""
    h = hashlib.sha256()
    for name in SOURCES + HEADERS + ("build.py",):
        h.update(name.encode())
        h.update((SRC_DIR / name).read_bytes())
    h.update(cxx.encode())
    h.update(" ".join(extra_flags).encode())
    for d in include_dirs():
        h.update(str(d).encode())
    return h.hexdigest()[:16]


def build(
    out_dir: Path,
    cxx: str = "g++",
    sysroot: str | None = None,
    extra_flags: Sequence[str] = (),
    verbose: bool = False,
) -> Path:
    """Compile the plug-in into ``out_dir / libtvm_runtime_opencl.so`` and return its path.

    ``cxx`` may be a cross compiler (``aarch64-linux-gnu-g++``); ``sysroot`` and ``extra_flags``
    go to it unchanged (e.g. ``["-march=armv8-a"]``).  The library is written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / LIB_NAME
    tmp = out_dir / f".{LIB_NAME}.{os.getpid()}.tmp"
    compiles, link = compile_commands(tmp, cxx=cxx, sysroot=sysroot, extra_flags=extra_flags)

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        if verbose:
            print(" ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
        return subprocess.run(cmd, capture_output=True, text=True)

    objs = [Path(c[-1]) for c in compiles]
    try:
        with ThreadPoolExecutor(max_workers=len(compiles)) as pool:
            failed = [p for p in pool.map(run, compiles) if p.returncode != 0]
        if not failed:
            failed = [p for p in [run(link)] if p.returncode != 0]
        if failed:
            p = failed[0]
            raise RuntimeError(
                f"building {LIB_NAME} failed ({p.returncode}):\n"
                + " ".join(shlex.quote(str(c)) for c in p.args)
                + "\n"
                + p.stderr[-8000:]
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        for o in objs:
            o.unlink(missing_ok=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m edgecompile.devices.opencl_runtime.build",
        description=f"Build {LIB_NAME}, TVM's OpenCL runtime plug-in.",
    )
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--cxx", default="g++", help="C++ compiler (e.g. aarch64-linux-gnu-g++)")
    ap.add_argument("--sysroot", default=None, help="--sysroot for a cross compiler")
    ap.add_argument("--extra-flag", action="append", default=[], help="extra compiler flag (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    path = build(
        args.out,
        cxx=args.cxx,
        sysroot=args.sysroot,
        extra_flags=args.extra_flag,
        verbose=args.verbose,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
