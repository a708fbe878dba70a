"""Results as data: one JSON object per measurement, appended to JSON-lines files.

Every record starts with the same header (what ran where, when), so the reports that come
later can join bench, eval and matrix lines on it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from edgecompile.pipeline.artifact import Artifact


def record_header(kind: str, a: Artifact, device_description: str, server: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": a.manifest["model"]["name"],
        "family": a.manifest["model"]["family"],
        "target": a.manifest["target"]["preset"],
        "device": device_description,
        "server": server,
        "artifact": str(a.path),
    }


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one result as a JSON line; a line is written whole or not at all (O_APPEND)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
