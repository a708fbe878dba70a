"""Environment variables set for one block of tuning (and restored after it)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environ(**values: str | None):
    """Set the given variables (None: leave as is) for the block, then restore them."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
