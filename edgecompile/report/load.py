"""Results files -> usable records, and a line for every one that is not.

A report is made from whatever JSON lines `bench`, `eval`, `matrix` and `peak` appended; a
missing file, a line cut short by a crash, a record from an older schema or a bench without a
latency costs that file or line, named, never the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("bench", "eval", "matrix", "peak")


@dataclass
class Loaded:
    bench: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    peak: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what is wrong"


def load_results(paths: list[Path]) -> Loaded:
    out = Loaded()
    for path in paths:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            out.problems.append(f"{path}: cannot read ({e.strerror or type(e).__name__})")
            continue
        for n, line in enumerate(lines, 1):
            if line.strip():
                _take(line, f"{path}:{n}", out)
    return out


def _take(line: str, where: str, out: Loaded) -> None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        out.problems.append(f"{where}: not a JSON line ({e.msg}); skipped")
        return
    if not isinstance(rec, dict) or rec.get("kind") not in KINDS:
        kind = rec.get("kind") if isinstance(rec, dict) else type(rec).__name__
        out.problems.append(f"{where}: not a result of {', '.join(KINDS)} (kind {kind!r}); skipped")
        return
    if rec["kind"] == "matrix":
        if rec.get("status") != "ok":
            out.problems.append(f"{where}: matrix job {rec.get('model')}@{rec.get('target')} "
                                f"failed ({rec.get('status')}); skipped")
            return
        for part in ("bench", "eval"):
            if rec.get(part):
                _take(json.dumps(rec[part]), where, out)
        return
    why = _unusable(rec)
    if why:
        out.problems.append(f"{where}: {why}; skipped")
        return
    getattr(out, rec["kind"]).append(rec | {"source": where})


def _unusable(rec: dict[str, Any]) -> str | None:
    kind = rec["kind"]
    if kind == "peak":
        if not (_number(rec.get("compute_gflops")) and _number(rec.get("bandwidth_gbps"))):
            return "a peak result without compute and bandwidth figures"
        return None
    missing = [k for k in ("model", "target", "device") if not rec.get(k)]
    if missing:
        return f"a {kind} result without {', '.join(missing)} (an older schema?)"
    if kind == "bench":
        median = (rec.get("latency_ms") or {}).get("median")
        if not _number(median):
            return "a bench result without a latency (latency_ms.median)"
        if not _number(rec.get("macs")):
            return "a bench result without MACs (an older schema?)"
    if kind == "eval" and not _number(rec.get("top1"), allow_zero=True):
        return "an eval result without top-1"
    return None


def _number(v, allow_zero: bool = False) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or (allow_zero and v == 0))
