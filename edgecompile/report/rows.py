"""Records -> one row per device, target and architecture: the table every output shares.

Bench, eval and peak results are joined on (device, target, model, input size); where a
combination was measured more than once, the newest result counts. Every figure in a row is
copied or computed from the records here, once, so the HTML, CSV, Markdown and terminal tables
and the plots cannot disagree.
"""

from __future__ import annotations

from typing import Any

from edgecompile.report.load import Loaded

# (key, header with unit) in table order.
COLUMNS = [
    ("device", "device"), ("target", "target"), ("model", "model"), ("family", "family"),
    ("input_size", "input px"), ("params_m", "params (M)"), ("macs_m", "MACs (M)"),
    ("median_ms", "median ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
    ("cold_start_ms", "cold start ms"), ("gflops", "GFLOP/s"), ("peak_pct", "% of peak"),
    ("artifact_mb", "artifact MB"), ("schedules", "schedules"), ("top1", "top-1 %"),
    ("top5", "top-5 %"), ("agreement", "agrees with PyTorch %"), ("emulated", "emulated"),
]
NOT_A_LATENCY = "emulated: not a latency"


def _key(rec: dict[str, Any]) -> tuple:
    size = rec.get("input_size") or (rec.get("input_shape") or [None])[-1]
    return rec["device"], rec["target"], rec["model"], size


def _newest(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r.get("time", "")):
        out[_key(r)] = r
    return out


def peak_for(peaks: list[dict[str, Any]], device: str, target: str) -> dict[str, Any] | None:
    matching = [p for p in peaks if p["device"] == device and p["target"] == target]
    return max(matching, key=lambda p: p.get("time", "")) if matching else None


def build_rows(loaded: Loaded) -> list[dict[str, Any]]:
    benches, evals = _newest(loaded.bench), _newest(loaded.eval)
    for key in [k for k in evals if k[3] is None]:  # an eval line from before input_size
        sizes = [b for b in benches if b[:3] == key[:3]]
        if len(sizes) == 1:
            evals[sizes[0]] = evals.pop(key)
    rows = []
    for key in sorted(set(benches) | set(evals), key=lambda k: tuple(str(x) for x in k)):
        b, e = benches.get(key), evals.get(key)
        device, target, model, size = key
        row: dict[str, Any] = {c: None for c, _ in COLUMNS}
        row |= {"device": device, "target": target, "model": model, "input_size": size,
                "family": (b or e).get("family")}
        if b:
            lat = b["latency_ms"]
            row |= {
                "params_m": _div(b.get("params"), 1e6), "macs_m": b["macs"] / 1e6,
                "median_ms": lat["median"], "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                "cold_start_ms": (b.get("cold_start_ms") or {}).get("total"),
                "gflops": b.get("gflops"), "artifact_mb": _div(b.get("artifact_bytes"), 1e6),
                "schedules": "tuned" if b.get("tuning") else (b.get("schedules") or "default"),
                "emulated": b.get("emulated"), "profile": b.get("profile"),
                "threads": b.get("threads"),
            }
            p = peak_for(loaded.peak, device, target)
            if p and b.get("gflops"):
                row["peak_pct"] = 100.0 * b["gflops"] / p["compute_gflops"]
                row["peak"] = p
        if e:
            row |= {"top1": e["top1"], "top5": e.get("top5"), "agreement": e.get("top1_agreement"),
                    "torch_top1": e.get("torch_top1")}
            row["emulated"] = row["emulated"] or e.get("emulated")
        rows.append(row)
    return rows


def _div(v, d: float):
    return None if v is None else v / d


def cell(row: dict[str, Any], key: str) -> str:
    """How a figure is written in every table (HTML, CSV, Markdown, terminal)."""
    v = row.get(key)
    if v is None:
        return ""
    if key == "emulated":
        return f"{NOT_A_LATENCY} ({v})"
    if isinstance(v, float):
        return f"{v:.3f}" if key.endswith("_ms") else f"{v:.2f}"
    return str(v)
