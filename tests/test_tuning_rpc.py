"""Tuning over RPC, end to end, on the emulated Raspberry Pi 4: MetaSchedule's RPC runner
measures candidates cross-compiled for aarch64 on the device, the records land in the rpi4
database for the Pi's CPU, and the rpi4 artifact built with them still verifies there.

Emulated timings are not performance; what is checked is that candidates really built, ran on
the device and were recorded, and that the tuned kernels compute the same as PyTorch.
"""

import pytest

from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.devices.spec import DeviceSpec
from edgecompile.measure.verify import verify
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.targets import get_target
from edgecompile.tune import records as tuning
from edgecompile.tune import run as tune_run

pytestmark = [pytest.mark.tvm, pytest.mark.rpc]
MODEL, SIZE, TASKS, TRIALS = "squeezenet1_1", 64, 2, 2


@pytest.mark.parametrize("search", ["replay-trace", "rules"])
def test_tune_on_the_emulated_pi_then_the_tuned_artifact_verifies(tmp_path, emulated_rpi4, monkeypatch,
                                                                  search):
    """MetaSchedule's random candidates, or the NEON rules' own ranked choices (--search rules:
    cross-compiled, timed on the device; no in-context check over RPC, the head-to-head decides)."""
    r = tune_run.tune(tune_run.TuneOptions(
        MODEL, "rpi4", trials_per_task=TRIALS, input_size=SIZE, root=tmp_path, max_tasks=TASKS,
        trials_per_iter=TRIALS, cost_model="random", search=search, seed=0,
        rpc=emulated_rpi4.address))
    if search == "rules":  # a kernel's rule may offer fewer choices than the budget
        assert 0 < r.trials_run <= TASKS * TRIALS
    else:
        assert r.trials_run == TASKS * TRIALS
    assert r.valid > 0, "no candidate ran on the device: tuning measured nothing"
    assert r.directory.name == "rpi4-cortex-a72"
    assert all(t["best_ms"] and t["best_ms"] > 0 for t in r.tasks if t["valid_this_run"])

    # The defaults were timed on the device too; whether two random candidates beat them under
    # emulation is chance, so they are made to win here: the point is applying them.
    defaults = tuning.read_defaults(r.directory)
    assert defaults and all(v["default_ms"] > 0 for v in defaults.values())
    tuning.write_defaults(r.directory, {k: v | {"default_ms": 1e3} for k, v in defaults.items()})
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(tmp_path))
    a = build(BuildOptions(MODEL, "rpi4", output_dir=tmp_path / "out", input_size=SIZE), quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] == str(r.directory) and t["tasks_tuned"] >= 1, t
    v = verify(a.path, samples=2, device=DeviceSpec(rpc=emulated_rpi4.address))
    assert v.ok and v.tvm.top1_agreement == 1.0, (v.onnx, v.tvm)


def test_tune_through_a_tracker_key_on_two_devices(tmp_path):
    """The farm form: every server under the key measures candidates (here two native servers
    on this CPU behind a real tracker); the records are the same per-CPU database."""
    logs = tmp_path / "logs"
    with start_tracker(logs) as tracker, \
            start_native_server(logs, tracker=tracker.address, key="x86-farm"), \
            start_native_server(logs, tracker=tracker.address, key="x86-farm"):
        r = tune_run.tune(tune_run.TuneOptions(
            MODEL, "x86", trials_per_task=TRIALS, input_size=SIZE, root=tmp_path / "records",
            max_tasks=TASKS, trials_per_iter=TRIALS, cost_model="random", search="replay-trace",
            seed=0, tracker=tracker.address, key="x86-farm"))
    assert r.trials_run == TASKS * TRIALS and r.valid > 0
    assert r.directory == tuning.records_dir(get_target("x86"), tmp_path / "records")


def test_tune_timeout_bounds_reaching_the_device(tmp_path):
    """`tune --timeout S`: a server that accepts but never answers (frozen) is reported in one
    line after S seconds, before any export or tuning; it used to be parsed and ignored."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with start_native_server(tmp_path / "logs") as server:
        os.killpg(server.proc.pid, signal.SIGSTOP)  # the port still accepts; nobody answers
        try:
            t = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "edgecompile", "tune", MODEL, "--target", "x86", "--input-size",
                 str(SIZE), "--trials-per-task", "1", "--focus", "1", "--records-dir",
                 str(tmp_path / "records"), "--rpc", server.address, "--timeout", "3"],
                capture_output=True, text=True, timeout=120)
            elapsed = time.monotonic() - t
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"edgecompile: error: RPC server {server.address} accepted the connection but did not "
        "answer within 3s"], r.stderr
    assert elapsed < 25  # 3 s and a process start, not the default 30 s
    assert not (tmp_path / "records").exists()  # failed before touching the records
