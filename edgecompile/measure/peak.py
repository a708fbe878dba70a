"""`edgecompile peak`: a device's fp32 compute and memory-bandwidth ceilings, measured on it,
and on CPUs what its thread pool costs each parallel kernel (fork-join).

The kernels (backend/peak.py) are compiled for the device's target and timed there, here
or over RPC like `bench`, with the thread count asked for. The result is one JSON line, which
reports join with the bench results of the same device and target (the roofline: what share of
the device's ceiling a model reaches), and is cached per device, target, threads and TVM version
in $EDGECOMPILE_CACHE/peaks.jsonl: a device's ceilings do not change between runs (--refresh
measures again).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.backend import compiler, core, peak, rpc_client, runtime
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError
from edgecompile.measure.results import append_jsonl
from edgecompile.paths import cache_dir
from edgecompile.targets import get_target

CACHE_FILE = "peaks.jsonl"


@dataclass(frozen=True)
class PeakOptions:
    target: str
    threads: int | None = None  # None: the device runtime's default
    runs: int = 20
    refresh: bool = False  # measure even when the cache has this device


def device_identity(device: DeviceSpec) -> str:
    """What the cache keys a device by: its address, or this host's CPU (which changes between
    machines that all call themselves "this host")."""
    if device.is_local:
        return f"this host ({core.host_cpu_model()}, {core.host_cpu()})"
    return device.describe()


def run_peak(opts: PeakOptions, device: DeviceSpec | None = None, results: Path | None = None,
             stream=None) -> dict[str, Any]:
    device = device or DeviceSpec()
    stream = stream or sys.stderr
    preset = get_target(opts.target)
    key = {"device": device_identity(device), "target": preset.name, "threads": opts.threads,
           "tvm": core.version()}
    record = None if opts.refresh else _cached(key)
    if record is None:
        record = _measure(opts, preset, device, stream) | {"key": key}
        _cache(record)
    else:
        stream.write(f"peak: cached result for {key['device']} / {preset.name} "
                     f"(measured {record['time']}; --refresh to measure again)\n")
    if results:
        append_jsonl(results, record)
    return record


def _measure(opts: PeakOptions, preset, device: DeviceSpec, stream) -> dict[str, Any]:
    if device.is_local and not compiler.can_run_here(preset.target):
        raise EdgeCompileError(f"'{preset.name}' code does not run on this host: give the device "
                               "with --rpc HOST:PORT or --tracker HOST:PORT --key KEY")
    session, server = (None, "local") if device.is_local else rpc_client.open_session(device)
    cross = None if device.is_local else preset.cross_compiler

    def load(kind: str, tmp: str):
        stream.write(f"peak: building and timing the {kind.replace('_', ' ')} kernel for "
                     f"{preset.name} on {device.describe()}\n")
        lib = peak.build_peak_library(kind, preset.target, preset.host, Path(tmp) / f"{kind}.so", cross)
        model = (runtime.load_local(lib, preset.device, peak.INPUT) if session is None
                 else runtime.load_remote(session, lib, preset.device, peak.INPUT, server))
        threads = model.configure_threads(opts.threads, "default")
        x = model.put(np.random.default_rng(0).uniform(-1, 1, peak.input_shape(kind)).astype("float32"))
        model.time_runs(x, 3)  # warm-up: pages, caches, thread pool
        return model, x, threads

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ec-peak-") as tmp:
        for kind in ("compute", "bandwidth"):
            model, x, threads = load(kind, tmp)
            out[kind] = float(np.median(model.time_runs(x, opts.runs)))
        # The fork-join pair is a CPU thread pool's: GPU kernels are launched by their driver.
        fork_join = _fork_join([load(k, tmp)[:2] for k in ("launch", "launch_serial")], opts.runs) \
            if preset.device == "cpu" else None
    return {
        "kind": "peak", "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device.describe(), "server": server, "target": preset.name, "threads": threads,
        "compute_gflops": peak.compute_flops() / out["compute"] / 1e9,
        "bandwidth_gbps": peak.stream_bytes() / out["bandwidth"] / 1e9,
        "compute_kernel": f"pointwise conv {peak.COMPUTE_CHANNELS}->{peak.COMPUTE_CHANNELS} "
                          f"@{peak.COMPUTE_MAP}x{peak.COMPUTE_MAP}, fp32",
        "bandwidth_kernel": f"y = 2x + 1 over {peak.STREAM_FLOATS} floats (read + write)",
        "fork_join_us": fork_join,
        "fork_join_kernel": None if fork_join is None else
        f"{peak.LAUNCH_CALLS} calls of x + 1 over {peak.LAUNCH_FLOATS} floats, a {peak.LAUNCH_TASKS}"
        f"-iteration parallel loop, less the same calls with the loop serial",
        "runs": opts.runs, "tvm": core.version(),
    }


FORK_JOIN_ROUNDS, FORK_JOIN_WARMUP_S = 5, 0.2


def _fork_join(pair, runs: int) -> float:
    """Microseconds the thread pool adds to each parallel kernel: the parallel chain's time less
    the serial one's (the same VM dispatch, the same work), per call; the median of
    FORK_JOIN_ROUNDS rounds that time the two chains back to back, so that a minute in which
    the device is busier weighs on both (on the 2-vCPU VM one chain's time varied 0.9-3.1 us a
    call from one second to the next). Near zero at one thread, where the loop runs inline."""
    (par, x_par), (ser, x_ser) = pair
    # A thread pool just (re)configured ran this chain 3-4x slower for its first ~10 ms (2.9 vs
    # 0.8 us a call on the 2-vCPU VM, whatever the warm-up count): warm it up for a while.
    until = time.monotonic() + FORK_JOIN_WARMUP_S
    while time.monotonic() < until:
        par.time_runs(x_par, 10)
    diffs = [float(np.median(par.time_runs(x_par, runs))) - float(np.median(ser.time_runs(x_ser, runs)))
             for _ in range(FORK_JOIN_ROUNDS)]
    return float(np.median(diffs)) / peak.LAUNCH_CALLS * 1e6


def _cache_file() -> Path:
    return cache_dir() / CACHE_FILE


def _cached(key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        lines = _cache_file().read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted write: the others still count
        if r.get("key") == key:
            return r
    return None


def _cache(record: dict[str, Any]) -> None:
    _cache_file().parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(_cache_file(), record)


def format_peak(r: dict[str, Any]) -> str:
    return (f"{r['target']} on {r['device']}, {r['threads']} threads:\n"
            f"  compute    {r['compute_gflops']:.1f} GFLOP/s  ({r['compute_kernel']})\n"
            f"  bandwidth  {r['bandwidth_gbps']:.1f} GB/s  ({r['bandwidth_kernel']})"
            + ("" if r.get("fork_join_us") is None else
               f"\n  fork-join  {r['fork_join_us']:.2f} us per parallel kernel  ({r['fork_join_kernel']})"))
