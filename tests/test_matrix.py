"""The device farm on real RPC services: two native servers under one key behind a tracker.

One device is killed (or frozen) while it runs a job; every job must still end up in the
results exactly once, the lost attempt recorded, and a re-run must skip what is done.
"""

import json
import os
import signal
import threading

import pytest
from conftest import act_when

from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.errors import EdgeCompileError
from edgecompile.measure.matrix import MatrixOptions, expand_models, run_matrix

pytestmark = [pytest.mark.tvm, pytest.mark.rpc]
MODELS = ("squeezenet1_1", "mobilenet_v2_035", "shufflenet_v2_x0_5", "mobilenet_v1_025")


def _opts(tmp_path, tracker, **kw):
    base = dict(models=MODELS, targets=("x86",), tracker=tracker, results=tmp_path / "r.jsonl",
                output_dir=tmp_path / "build", input_size=32, bench_min_time_s=0.5,
                bench_min_runs=10)
    return MatrixOptions(**(base | kw))


def _when_running_on(server, action):
    """(say, watcher): ``action`` runs 0.3 s after the farm says a job runs on ``server``, well
    inside that job (load, bench). (Waiting for both devices to be busy at once could miss: each
    job is a process that starts in seconds on a loaded machine, and two leases need not overlap.)"""
    seen = threading.Event()
    watcher = act_when(seen.is_set, action, settle_s=0.3, poll_s=0.05, timeout_s=200)
    return (lambda text: seen.set() if text.endswith(f"running on {server.address}") else None), watcher


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def farm(tmp_path):
    logs = tmp_path / "logs"
    with start_tracker(logs) as tracker, \
            start_native_server(logs, tracker=tracker.address, key="x86") as a, \
            start_native_server(logs, tracker=tracker.address, key="x86") as b:
        yield tracker, a, b


def test_a_device_killed_mid_job_loses_nothing(tmp_path, farm):
    tracker, a, b = farm
    say, watcher = _when_running_on(b, b.stop)
    records = run_matrix(_opts(tmp_path, tracker.address), say=say)
    watcher.join(timeout=30)
    assert not watcher.is_alive() and not b.alive()
    on_disk = _records(tmp_path / "r.jsonl")
    assert sorted(r["model"] for r in on_disk) == sorted(MODELS)  # each exactly once
    assert all(r["status"] == "ok" for r in on_disk) and len(records) == len(MODELS)
    servers = {r["server"] for r in on_disk}
    assert a.address in servers  # the survivor took the rest
    lost = [att for r in on_disk for att in r["failed_attempts"]]
    assert len(lost) == 1 and lost[0]["server"] == b.address  # the killed job, recorded
    # A second run has nothing to do.
    assert run_matrix(_opts(tmp_path, tracker.address)) == []


def test_a_frozen_device_times_out_and_the_job_moves(tmp_path, farm):
    tracker, a, b = farm
    say, watcher = _when_running_on(b, lambda: os.killpg(b.proc.pid, signal.SIGSTOP))
    try:
        run_matrix(_opts(tmp_path, tracker.address, job_timeout_s=45), say=say)
    finally:
        watcher.join(timeout=1)
        os.killpg(b.proc.pid, signal.SIGCONT)
    on_disk = _records(tmp_path / "r.jsonl")
    assert sorted(r["model"] for r in on_disk) == sorted(MODELS)
    assert all(r["status"] == "ok" for r in on_disk), [(r["model"], r["failed_attempts"]) for r in on_disk]
    timeouts = [att for r in on_disk for att in r["failed_attempts"]]
    assert len(timeouts) == 1 and "timed out running" in timeouts[0]["error"]


def test_resume_skips_done_jobs_and_tolerates_a_cut_line(tmp_path, farm):
    tracker, _, _ = farm
    opts = _opts(tmp_path, tracker.address, models=MODELS[:2])
    run_matrix(opts)
    with open(tmp_path / "r.jsonl", "a") as fh:
        fh.write('{"kind": "matrix", "key": ')  # a crash mid-write
    records = run_matrix(_opts(tmp_path, tracker.address, models=MODELS[:3]))
    assert [r["model"] for r in records] == [MODELS[2]]


def test_unserved_key_is_a_clear_error(tmp_path, farm):
    tracker, _, _ = farm
    with pytest.raises(EdgeCompileError, match="under key.*rpi4.*keys there: x86"):
        run_matrix(_opts(tmp_path, tracker.address, targets=("rpi4",)))


def test_model_lists_expand_families():
    assert expand_models(["shufflenet_v2", "squeezenet1_1"]) == (
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
        "squeezenet1_1")


def test_targets_this_host_cannot_run_need_a_tracker(tmp_path):
    from edgecompile.errors import UsageError

    with pytest.raises(UsageError, match="rpi4 do not run on this host.*--tracker"):
        run_matrix(_opts(tmp_path, None, targets=("x86", "rpi4")))
    assert not (tmp_path / "build").exists()  # refused before building anything


# A job that writes much to stderr (warnings, a long traceback) before its result: more than a
# pipe buffer (64 KiB) must neither block the job nor hang the farm's reader.
_NOISY_JOB = """
import json, sys
sys.stderr.write("w" * (1 << 20) + "LAST-STDERR-LINE\\n")
sys.stderr.flush()
if sys.argv[1] == "result":
    print(json.dumps({"event": "result", "server": "local"}), flush=True)
sys.exit(0 if sys.argv[1] == "result" else 3)
"""


@pytest.mark.parametrize("ending", ["result", "exit"])
def test_a_job_flooding_stderr_does_not_hang_the_reader(ending):
    import queue
    import subprocess
    import sys
    import threading

    from edgecompile.measure.matrix import _kill, _read_events

    proc = subprocess.Popen([sys.executable, "-c", _NOISY_JOB, ending], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    events: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(proc, events), daemon=True)
    reader.start()
    try:
        first = events.get(timeout=60)  # the version that deadlocked gets nothing here
        assert first["event"] == ending
        if ending == "result":
            assert events.get(timeout=60)["event"] == "exit"
        else:  # the exit event still carries the stderr's tail
            assert first["stderr"].endswith("LAST-STDERR-LINE\n") and len(first["stderr"]) == 500
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert proc.wait(timeout=10) == (0 if ending == "result" else 3)
    finally:
        _kill(proc)


def test_profile_and_peak_through_the_farm(tmp_path, farm, monkeypatch):
    """`matrix --profile --peak`: each bench carries its kernel profile, measured on the leased
    device, and the results file one peak line per target: one run feeds the whole report."""
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    tracker, _, _ = farm
    opts = _opts(tmp_path, tracker.address, models=("fasternet_t0",), profile_runs=2, peak=True)
    (rec,) = run_matrix(opts)
    assert rec["status"] == "ok"
    profile = rec["bench"]["profile"]
    assert {c["op_class"] for c in profile["classes"]} >= {"pconv", "pointwise"}
    lines = _records(opts.results)
    (peak,) = [r for r in lines if r.get("kind") == "peak"]
    assert peak["target"] == "x86" and peak["device"] == f"tracker {tracker.address} key 'x86'"
    assert peak["compute_gflops"] > 0 and peak["bandwidth_gbps"] > 0


def test_weights_dir_builds_from_the_checkpoints_and_reuses_them(tmp_path, monkeypatch):
    """`matrix --weights-dir checkpoints/digits`: each model built from its checkpoint (its own
    classes and input size), and the artifact reused on the next run, not rebuilt."""
    from pathlib import Path

    from edgecompile.pipeline import build as building
    from edgecompile.pipeline.artifact import Artifact

    ckpts = Path(__file__).resolve().parents[1] / "checkpoints" / "digits"
    opts = MatrixOptions(models=("mobilenet_v1_025",), targets=("x86",), results=tmp_path / "r.jsonl",
                         output_dir=tmp_path / "build", bench_min_time_s=0.1, bench_min_runs=3,
                         weights_dir=ckpts)
    (rec,) = run_matrix(opts, say=lambda _: None)
    a = Artifact.load(rec["artifact"] if "artifact" in rec else rec["bench"]["artifact"])
    assert a.manifest["spec"]["weights"]["source"] == "file"
    assert a.manifest["spec"]["num_classes"] == 10
    built = []
    monkeypatch.setattr(building, "build", lambda *a, **k: built.append(a) or pytest.fail("rebuilt"))
    run_matrix(MatrixOptions(**{**opts.__dict__, "results": tmp_path / "r2.jsonl"}), say=lambda _: None)
    assert built == []
