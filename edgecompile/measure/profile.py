"""Where an inference's time goes, per kernel and per operator class, on any device.

Every kernel of the artifact (its kernel table, written at build) is timed by TVM's evaluator on
the device -- here or over RPC -- with the model's thread pool, and weighted by how often one
inference calls it. Per operator class (regular / pointwise / depthwise / grouped / partial
convolution, dense, pooling, data movement, elementwise): time, share of the latency, FLOPs,
bytes, achieved GFLOP/s and GB/s -- FasterNet's question (do depthwise and grouped convolutions
reach the device's FLOPS?) measured. Also a Chrome trace-event file of one inference, which
Perfetto and chrome://tracing open.
"""

from __future__ import annotations

from typing import Any

from edgecompile.errors import EdgeCompileError
from edgecompile.listing import as_table
from edgecompile.pipeline.artifact import Artifact


def profile_kernels(a: Artifact, model, latency_median_ms: float, repeat: int = 5,
                    device_input=None) -> dict[str, Any]:
    """Per-kernel and per-class times of ``a`` loaded as ``model`` (a backend LoadedModel).

    On this host (``device_input`` given, the model local) each kernel is also timed *in
    context* -- inside whole inferences, through the VM's instrument hook -- which is what its
    share of the latency really is: alone, with its inputs hot in its own core's cache and the
    thread pool awake, a kernel runs faster than between its neighbours (on this shared 2-core
    machine the isolated times summed to 56-103% of the latency, depending on its load). Over
    RPC only the isolated times exist."""
    table = a.kernel_table()
    if table is None or not a.kernels_library.is_file():
        raise EdgeCompileError(f"{a.path}: no kernel table (built before it existed, or with a "
                               "pipeline that writes none): rebuild it to profile its kernels")
    secs = model.time_kernels(a.kernels_library, table["kernels"], repeat=repeat)
    in_context = (_in_context_ms(model, device_input, repeat)
                  if device_input is not None and model.session is None else None)
    rows = []
    for k in table["kernels"]:
        per_call = secs[k["name"]] * 1e3
        rows.append({
            "name": k["name"], "op_class": k["op_class"], "calls": k["calls"],
            "ms_per_call": per_call, "ms": per_call * k["calls"],
            "flops": k["flops"] * k["calls"], "bytes": k["bytes"] * k["calls"],
        })
        if in_context is not None:
            rows[-1]["ms_in_context"] = in_context.get(k["name"], 0.0)
    for r in rows:
        _rates(r, latency_median_ms)
    rows.sort(key=lambda r: -r["ms"])
    kernels_ms = sum(r["ms"] for r in rows)
    out = {
        "method": "each kernel timed alone by TVM's evaluator on the device, x calls per inference",
        "repeat": repeat, "latency_ms": latency_median_ms, "kernels_ms": kernels_ms,
        "outside_kernels_ms": latency_median_ms - kernels_ms,
        "classes": class_summary(rows, latency_median_ms), "kernels": rows,
        "sequence": table["sequence"],
    }
    if in_context is not None:
        out["kernels_in_context_ms"] = sum(r["ms_in_context"] for r in rows)
    return out


def _in_context_ms(model, device_input, runs: int) -> dict[str, float]:
    """Kernel name -> ms per inference inside whole inferences (median over ``runs``)."""
    import numpy as np

    model.call_times(device_input)  # the instrumented VM's first run: allocation, warm-up
    per_run = []
    for _ in range(max(1, runs)):
        totals: dict[str, float] = {}
        for name, secs in model.call_times(device_input):
            totals[name] = totals.get(name, 0.0) + secs * 1e3
        per_run.append(totals)
    return {n: float(np.median([t.get(n, 0.0) for t in per_run])) for n in per_run[0]}


def _rates(r: dict[str, Any], latency_ms: float) -> None:
    secs = r["ms"] * 1e-3
    r["share"] = r["ms"] / latency_ms if latency_ms else 0.0
    r["gflops"] = r["flops"] / secs / 1e9 if secs else 0.0
    r["gbps"] = r["bytes"] / secs / 1e9 if secs else 0.0


def class_summary(rows: list[dict[str, Any]], latency_ms: float) -> list[dict[str, Any]]:
    # The classifier's own order (importing it loads TVM: only ever after kernels were timed).
    from edgecompile.backend.kernels import OP_CLASSES

    out = []
    for c in OP_CLASSES:
        members = [r for r in rows if r["op_class"] == c]
        if not members:
            continue
        s = {"op_class": c, "kernels": len(members), "calls": sum(r["calls"] for r in members),
             "ms": sum(r["ms"] for r in members), "flops": sum(r["flops"] for r in members),
             "bytes": sum(r["bytes"] for r in members)}
        _rates(s, latency_ms)
        if all("ms_in_context" in r for r in members):
            s["ms_in_context"] = sum(r["ms_in_context"] for r in members)
            s["share_in_context"] = s["ms_in_context"] / latency_ms if latency_ms else 0.0
        out.append(s)
    return out


def chrome_trace(profile: dict[str, Any], title: str) -> dict[str, Any]:
    """One inference as Chrome trace events: the kernels in call order, each as long as its
    measured time (the timeline is rebuilt from the per-kernel times, not recorded)."""
    by_name = {r["name"]: r for r in profile["kernels"]}
    events, t_us = [], 0.0
    for name in profile["sequence"]:
        r = by_name[name]
        dur = r["ms_per_call"] * 1e3
        events.append({"name": name, "cat": r["op_class"], "ph": "X", "ts": round(t_us, 3),
                       "dur": round(dur, 3), "pid": 1, "tid": 1,
                       "args": {"op_class": r["op_class"], "GFLOP/s": round(r["gflops"], 2)}})
        t_us += dur
    meta = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": title}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "kernels"}}]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}


def format_profile(p: dict[str, Any], top: int = 15) -> str:
    classes = [{"class": c["op_class"], "kernels": c["kernels"], "calls": c["calls"],
                "ms alone": f"{c['ms']:.3f}", "GFLOP/s alone": f"{c['gflops']:.1f}",
                "GB/s alone": f"{c['gbps']:.1f}"}
               | ({"ms in context": f"{c['ms_in_context']:.3f}",
                   "% of latency": f"{100 * c['share_in_context']:.1f}"} if "ms_in_context" in c
                  else {"% of latency (alone)": f"{100 * c['share']:.1f}"})
               for c in p["classes"]]
    kernels = [{"kernel": r["name"][:56], "class": r["op_class"], "calls": r["calls"],
                "ms": f"{r['ms']:.3f}", "% of latency": f"{100 * r['share']:.1f}",
                "GFLOP/s": f"{r['gflops']:.1f}"} for r in p["kernels"][:top]]
    more = len(p["kernels"]) - top
    context = (f"; timed inside inferences they sum to {p['kernels_in_context_ms']:.3f} ms"
               if "kernels_in_context_ms" in p else "")
    return "\n".join([
        as_table(classes), "",
        as_table(kernels), *([f"... {more} more kernels (all of them in --format json)"] if more > 0 else []),
        f"kernels: {p['kernels_ms']:.3f} ms of a {p['latency_ms']:.3f} ms median inference; the rest "
        f"({p['outside_kernels_ms']:.3f} ms) is the VM between kernels and cache effects "
        f"({p['method']}, median of {p['repeat']}){context}",
    ])
