"""Where edgecompile keeps things it can rebuild: $EDGECOMPILE_CACHE, else ~/.cache/edgecompile."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPILE_CACHE") or Path.home() / ".cache" / "edgecompile")
