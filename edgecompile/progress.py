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


class Ticker:
    """A one-line, self-overwriting progress line on a terminal (plain lines elsewhere),
    updated at most a few times a second."""

    def __init__(self, label: str, stream=None, every_s: float = 0.5):
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0
        self._text = ""

    def update(self, *values) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self._text = self._format(values)
        if self.tty:
            print(f"\r{self._text}\033[K", end="", file=self.stream, flush=True)

    def _format(self, values) -> str:
        if len(values) == 2 and isinstance(values[0], int):
            return f"{self.label}: {values[0]} runs, median {values[1]:.3f} ms"
        return f"{self.label}: " + " ".join(map(str, values))

    def done(self) -> None:
        if self.tty and self._text:
            print(f"\r{self._text}\033[K", file=self.stream, flush=True)
        elif self._text:
            print(self._text, file=self.stream, flush=True)
