"""Stage-by-stage progress with timings, on stderr so stdout stays machine-readable."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class StageProgress:
    def __init__(self, total: int, stream=None, quiet: bool = False):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self.done += 1
        tag = f"[{self.done}/{self.total}] {name:<10}"
        self._say(f"{tag} {detail}".rstrip() + " ...")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._say(f"{tag} failed after {time.perf_counter() - start:.1f}s")
            raise
        self.timings[name] = round(time.perf_counter() - start, 3)
        self._say(f"{tag} done in {self.timings[name]:.1f}s")

    def note(self, text: str) -> None:
        self._say(f"      {text}")
