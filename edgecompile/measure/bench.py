"""`edgecompile bench`: on-device latency of an artifact, like TFLite's benchmark_model.

Warm-up runs first; then timed rounds until both a minimum total time and a minimum number of
runs are reached. Each run is timed on the device by TVM's own evaluator (one inference per
sample), so the RPC link and host-side Python are not in the figures. Cold start is measured
on the host: upload + load + first inference, the cost a user pays once.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.backend import core, rpc_client
from edgecompile.devices.spec import DeviceSpec
from edgecompile.measure.compare import compare_engines
from edgecompile.measure.load import load_artifact_model
from edgecompile.measure.profile import chrome_trace, profile_kernels
from edgecompile.measure.results import append_jsonl, record_header
from edgecompile.pipeline import numerics
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.build import build_or_reuse
from edgecompile.progress import Ticker


@dataclass(frozen=True)
class BenchOptions:
    warmup: int = 5
    min_time_s: float = 2.0
    min_runs: int = 20
    max_runs: int = 5000
    round_runs: int = 10  # runs per round trip to the device
    threads: int | None = None  # None: the device runtime's default
    affinity: str = "default"
    profile_runs: int = 0  # > 0: also time every kernel on the device, median of this many repeats


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median": float(np.median(ms)), "mean": float(ms.mean()),
        "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
        "min": float(ms.min()), "max": float(ms.max()),
        "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, "runs": int(len(ms)),
    }


def load_timed(a: Artifact, device: DeviceSpec, session=None) -> tuple[Any, dict[str, float]]:
    """The artifact loaded on its device, and the cold start: upload + load, first run.
    ``session``: an already opened (RPC session, server), so waiting for a device is not timed."""
    x = numerics.parity_inputs(1, tuple(a.manifest["input"]["shape"])[1:])
    core.warm_import()  # the one-time import of TVM is not the device's cold start
    t0 = time.perf_counter()
    model = load_artifact_model(a, device, session)
    t1 = time.perf_counter()
    model.run(x)
    t2 = time.perf_counter()
    return model, {"load": (t1 - t0) * 1e3, "first_run": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}


def bench_artifact(a: Artifact, device: DeviceSpec | None = None,
                   opts: BenchOptions | None = None, progress=None,
                   loaded: tuple[Any, dict[str, float]] | None = None) -> dict[str, Any]:
    """Latency of ``a`` on ``device``; ``loaded`` reuses a model from :func:`load_timed`."""
    device, opts = device or DeviceSpec(), opts or BenchOptions()
    shape = tuple(a.manifest["input"]["shape"])
    model, cold = loaded or load_timed(a, device)
    threads = model.configure_threads(opts.threads, opts.affinity)
    dev_x = model.put(numerics.parity_inputs(1, shape[1:]))

    model.time_runs(dev_x, max(opts.warmup, 1))
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < opts.max_runs and (
        len(samples) < opts.min_runs or time.perf_counter() - start < opts.min_time_s
    ):
        samples += model.time_runs(dev_x, opts.round_runs)
        if progress:
            progress(len(samples), float(np.median(samples)) * 1e3)

    stats = latency_stats(samples)
    macs = a.manifest["model"]["macs_counted"]
    profile = (profile_kernels(a, model, stats["median"], opts.profile_runs, device_input=dev_x)
               if opts.profile_runs else None)
    return record_header("bench", a, device.describe(), model.server) | {
        "input_shape": list(shape),
        "threads": threads,
        "affinity": opts.affinity,
        "warmup": opts.warmup,
        "latency_ms": stats,
        "cold_start_ms": cold,
        "artifact_bytes": a.library.stat().st_size,
        "input_size": shape[-1],
        "params": a.manifest["model"].get("params_counted"),
        "macs": macs,
        # achieved GFLOP/s = 2 FLOPs per multiply-add / median latency
        "gflops": 2 * macs / (stats["median"] * 1e-3) / 1e9,
        "tuning": a.manifest["tuning"]["records"],
        "schedules": a.manifest["pipeline"].get("schedules"),
        "emulated": model.device_info.get("emulated"),
        "profile": profile,
        "options": asdict(opts),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def run_bench(model_or_dir: str, target: str | None, device: DeviceSpec, opts: BenchOptions, *,
              output_dir: Path = Path("build"), input_size: int | None = None,
              compare: Sequence[str] = (), results: Path | None = None,
              trace: Path | None = None) -> dict[str, Any]:
    """`edgecompile bench`: the artifact (built first, or reused, when given a model name)
    timed on its device with progress on stderr; ``compare`` adds other engines timed here,
    interleaved; ``results`` appends the record to a JSON-lines file; ``trace`` writes the
    kernel profile as a Chrome trace (Perfetto, chrome://tracing)."""
    rpc_client.check_device(device)  # before the build, not after it
    artifact = build_or_reuse(model_or_dir, target, output_dir, input_size)
    ticker = Ticker(f"bench {artifact.manifest['model']['name']} on {device.describe()}")
    record = bench_artifact(artifact, device, opts, progress=ticker.update)
    ticker.done()
    if compare:
        record["compare"] = compare_engines(artifact, list(compare), threads=record["threads"])
    if trace and record["profile"]:
        from edgecompile.pipeline.artifact import write_json

        write_json(trace, chrome_trace(record["profile"], f"{record['model']} on {record['device']}"))
    if results:
        append_jsonl(results, record)
    return record


def format_report(r: dict[str, Any]) -> str:
    lat, cold = r["latency_ms"], r["cold_start_ms"]
    rows = [
        ("model", f"{r['model']} -> {r['target']} on {r['device']}"),
        ("input", "x".join(map(str, r["input_shape"]))),
        ("threads", f"{r['threads']} (affinity {r['affinity']})"),
        ("runs", f"{lat['runs']} after {r['warmup']} warm-up"),
        ("median", f"{lat['median']:.3f} ms"),
        ("mean", f"{lat['mean']:.3f} ms (std {lat['std']:.3f})"),
        ("p90 / p99", f"{lat['p90']:.3f} / {lat['p99']:.3f} ms"),
        ("min / max", f"{lat['min']:.3f} / {lat['max']:.3f} ms"),
        ("cold start", f"{cold['total']:.1f} ms (load {cold['load']:.1f}, first run "
                       f"{cold['first_run']:.1f})"),
        ("artifact", f"{r['artifact_bytes'] / 1e6:.2f} MB"),
        ("throughput", f"{r['gflops']:.2f} GFLOP/s achieved ({r['macs'] / 1e6:.1f}M MACs)"),
    ]
    return "\n".join(f"{k:<11} {v}" for k, v in rows)
