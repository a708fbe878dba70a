"""The build artifact: a directory with the library, the final ONNX graph and a manifest.

    <out>/<model>-<target>/
        model.so        compiled library (Relax VM executable), for the target's machine
        model.onnx      the exact graph that was compiled (after simplify + BN fold)
        manifest.json   what it is, how it was built, sha256 of every file

Directories are written atomically: everything goes to a temporary sibling first and is moved
into place only when complete, so an interrupted build never leaves a partial artifact and
never damages the one already there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgeCompileError
from edgecompile.paths import file_sha256, write_atomic

MANIFEST = "manifest.json"
LIBRARY = "model.so"
ONNX_FILE = "model.onnx"
KERNELS_FILE = "kernels.json"  # each kernel's operator class, FLOPs, bytes, arguments
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def library(self) -> Path:
        return self.path / self.manifest.get("library", LIBRARY)

    @property
    def onnx(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def kernels_library(self) -> Path:
        """The kernels alone, timed one by one by ``bench --profile`` (built with the table)."""
        return self.path / f"kernels{self.library.suffix}"

    def kernel_table(self) -> dict[str, Any] | None:
        """The kernels' table (backend.kernels), or None: built before it existed, or by a
        pipeline that does not write one."""
        f = self.path / KERNELS_FILE
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EdgeCompileError(f"{f}: unreadable kernel table ({e})") from None

    @classmethod
    def load(cls, path: Path) -> Artifact:
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise EdgeCompileError(f"{path}: not an artifact directory (no {MANIFEST})")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgeCompileError(f"{mf}: not valid JSON ({e})") from None
        if manifest.get("schema") != SCHEMA_VERSION:
            raise EdgeCompileError(f"{mf}: unknown manifest schema {manifest.get('schema')!r}")
        return cls(path, manifest)

    def hash_mismatches(self) -> list[str]:
        """Files whose sha256 differs from the manifest's (or that are gone)."""
        bad = []
        for name, meta in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file() or file_sha256(f) != meta["sha256"]:
                bad.append(name)
        return bad


def describe_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {
        n: {"sha256": file_sha256(directory / n), "bytes": (directory / n).stat().st_size}
        for n in names
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Swap: move the old artifact aside, move the new one in, then delete the old one.
    # os.rename of a directory is atomic on one filesystem; the old one is only removed
    # once the new one is in place.
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rename(final, old / "a")
    try:
        os.rename(tmp, final)
    except OSError as e:
        if old is not None:
            os.rename(old / "a", final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgeCompileError(f"cannot move the artifact into {final}: {e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
