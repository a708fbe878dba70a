"""The project's one error type, and the 'unknown name' error that lists candidates.

The CLI catches ``EdgeCompileError`` and prints its message with ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeCompileError(Exception):
    """An error a user can act on: printed as one line, no traceback."""

    exit_code: int = 1


class UsageError(EdgeCompileError):
    """Bad input on the command line (unknown name, bad option): exit code 2 like argparse."""

    exit_code = 2


class UnknownNameError(UsageError):
    """An unknown model / target / family name; the message lists candidates and the closest."""

    def __init__(self, kind: str, name: str, candidates: Iterable[str]):
        self.kind, self.name = kind, name
        self.candidates = sorted(candidates)
        close = difflib.get_close_matches(name, self.candidates, n=1, cutoff=0.5)
        self.suggestion = close[0] if close else None
        hint = f" Did you mean '{self.suggestion}'?" if self.suggestion else ""
        super().__init__(
            f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(self.candidates)}"
        )
