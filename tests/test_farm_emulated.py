"""The farm of issue 4: a tracker, two emulated Raspberry Pi 4s (key rpi4) and this host's CPU
(key x86). matrix over every family completes, uses both Pis, and survives one of them being
killed in the middle of a job, with every result present exactly once."""

import json
import threading

import pytest
from conftest import act_when

from edgecompile.devices import emulated as emu
from edgecompile.devices import tracker as tracker_protocol
from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.measure.matrix import MatrixOptions, run_matrix
from edgecompile.models import list_families, list_models

pytestmark = [pytest.mark.tvm, pytest.mark.rpc]
ONE_PER_FAMILY = tuple(list_models(f)[0] for f in list_families())


def _free(tracker: str, key: str) -> int:
    summary = tracker_protocol.summary(tracker)
    return summary.get("queue_info", {}).get(key, {}).get("free", 0)


def _kill_mid_job_after_first_result(tracker, victim, results, killed):
    """Once ``victim`` has delivered a result and is busy again, kill it (1 s into the job:
    upload, load or timing)."""
    def served_and_busy():
        lines = results.read_text().splitlines() if results.exists() else []
        served = any(json.loads(line).get("server") == victim.address for line in lines)
        return served and _free(tracker.address, "rpi4") == 0

    def kill():
        victim.stop()
        killed.set()

    return act_when(served_and_busy, kill, settle_s=1.0, poll_s=0.1, timeout_s=900)


def test_farm_of_two_emulated_pis_and_this_cpu(tmp_path):
    emu.prepare(quiet=True)
    results = tmp_path / "results.jsonl"
    killed = threading.Event()
    with start_tracker(tmp_path / "logs") as tracker, \
            emu.start("cortex-a72", tracker=tracker.address, key="rpi4") as pi_a, \
            emu.start("cortex-a72", tracker=tracker.address, key="rpi4") as pi_b, \
            start_native_server(tmp_path / "logs", tracker=tracker.address, key="x86"):
        watcher = _kill_mid_job_after_first_result(tracker, pi_b, results, killed)
        records = run_matrix(MatrixOptions(
            models=ONE_PER_FAMILY, targets=("rpi4", "x86"), tracker=tracker.address,
            results=results, output_dir=tmp_path / "build", input_size=32,
            bench_min_time_s=0.2, bench_min_runs=5, warmup=1, job_timeout_s=600,
        ))
        watcher.join(timeout=1)
    assert killed.is_set(), "the second Pi was never busy after its first result"
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    jobs = sorted((r["model"], r["target"]) for r in lines)
    assert jobs == sorted((m, t) for m in ONE_PER_FAMILY for t in ("rpi4", "x86"))  # once each
    assert all(r["status"] == "ok" for r in lines) and len(records) == len(lines)
    pi_servers = {r["server"] for r in lines if r["target"] == "rpi4"}
    assert pi_servers == {pi_a.address, pi_b.address}  # both Pis delivered results
    lost = [a for r in lines for a in r["failed_attempts"]]
    assert len(lost) == 1 and lost[0]["server"] == pi_b.address  # the killed job, recorded
    for r in lines:
        assert r["bench"]["latency_ms"]["runs"] >= 5 and r["bench"]["server"] == r["server"]
