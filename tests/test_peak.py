"""`edgecompile peak`: the device's ceilings, measured here and over RPC, cached per device.

Only that the figures are real measurements of the stated work is checked here (finite,
positive, consistent with the kernel sizes); how close they come to the machine's GEMM figure
is the benchmark's job (README: scripts/gemm_peak.py beside `edgecompile peak`).
"""

import io
import json
import subprocess
import sys

import pytest

from edgecompile.backend import peak as kernels
from edgecompile.devices.services import start_native_server
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError
from edgecompile.measure.peak import PeakOptions, format_peak, run_peak

pytestmark = pytest.mark.tvm


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "peaks.jsonl"


def test_peak_here_then_cached(cache, tmp_path):
    log = io.StringIO()
    r = run_peak(PeakOptions("x86", threads=1, runs=3), stream=log, results=tmp_path / "r.jsonl")
    assert r["kind"] == "peak" and r["threads"] == 1 and r["target"] == "x86"
    assert 0.5 < r["compute_gflops"] < 5000 and 0.1 < r["bandwidth_gbps"] < 5000
    # One thread: the pool runs the parallel loop inline, so the pair differs by noise only.
    assert abs(r["fork_join_us"]) < 5 and "parallel loop" in r["fork_join_kernel"]
    assert "fork-join" in format_peak(r)
    assert "building and timing the compute kernel" in log.getvalue()
    assert json.loads((tmp_path / "r.jsonl").read_text()) == r
    # Cached: the same record back, nothing built or timed.
    log = io.StringIO()
    again = run_peak(PeakOptions("x86", threads=1, runs=3), stream=log)
    assert again == r and "cached result" in log.getvalue() and "building" not in log.getvalue()
    # Another thread count is another entry; --refresh measures again.
    fresh = run_peak(PeakOptions("x86", threads=1, runs=3, refresh=True), stream=io.StringIO())
    assert fresh["time"] >= r["time"] and len(cache.read_text().splitlines()) == 2
    # A line cut short in the cache is skipped, not fatal.
    with cache.open("a") as f:
        f.write('{"kind": "peak", "key": ')
    assert run_peak(PeakOptions("x86", threads=1, runs=3), stream=io.StringIO()) == fresh


def test_the_kernels_are_the_work_they_claim():
    assert kernels.compute_flops() == 2 * 1024 * 1024 * 14 * 14
    assert kernels.stream_bytes() == 2 * 4 * (1 << 23)


def test_the_fork_join_pair_differs_only_in_the_parallel_loop():
    """The two chains behind fork_join_us: LAUNCH_CALLS calls of one kernel each, the kernel
    the same but for its outer loop, parallel in one and serial in the other."""
    mods = {k: kernels._module(k) for k in ("launch", "launch_serial")}
    for kind, mod in mods.items():
        step = mod["step"]
        assert step.attrs["tirx.is_scheduled"], "our rules must leave the hand-written loop alone"
        assert mod["main"].script().count("R.call_tir(step,") == kernels.LAUNCH_CALLS
        assert ("T.parallel(" in step.script()) == (kind == "launch")
    assert mods["launch"]["step"].script().replace("T.parallel(", "range(") == \
        mods["launch_serial"]["step"].script()


@pytest.mark.rpc
def test_peak_over_rpc(cache, tmp_path):
    with start_native_server(tmp_path) as server:
        r = run_peak(PeakOptions("x86", threads=1, runs=3), DeviceSpec(rpc=server.address),
                     stream=io.StringIO())
    assert r["device"] == f"RPC server {server.address}" and r["server"] == server.address
    assert r["compute_gflops"] > 0 and r["bandwidth_gbps"] > 0


def test_unreachable_device_is_one_line(cache):
    from conftest import refused_address

    with refused_address() as address, pytest.raises(EdgeCompileError, match="cannot reach RPC server"):
        run_peak(PeakOptions("x86"), DeviceSpec(rpc=address, timeout_s=2), stream=io.StringIO())


def test_peak_cli_json(cache):
    cmd = [sys.executable, "-m", "edgecompile", "peak", "--threads", "1", "--runs", "3",
           "--format", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compute_gflops"] > 0
