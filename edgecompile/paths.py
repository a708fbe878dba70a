"""Files: where edgecompile keeps things it can rebuild ($EDGECOMPILE_CACHE, else
~/.cache/edgecompile), and the digest that artifacts, checkpoints and records are pinned by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPILE_CACHE") or Path.home() / ".cache" / "edgecompile")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all: a temporary sibling, then a rename, so a reader (or a
    run interrupted mid-write) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
