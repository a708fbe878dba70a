"""MetaSchedule for the mobile-GPU presets, end to end on a real OpenCL device (pocl on this
CPU) behind real RPC servers that load our OpenCL plug-in: candidates with MetaSchedule's GPU
search space (thread binding, local memory) are built here, timed on the device's OpenCL queue,
recorded per GPU and driver class; `build` applies the records that beat dlight's default
schedules and the artifact still matches PyTorch there. And the failures a user meets: a server
without the plug-in, a device without OpenCL, a device that dies mid-tuning (records kept, a
rerun resumes), a target that needs the Android NDK.

Timings on pocl are not performance: what is checked is the mechanism. Whether two random
candidates beat dlight on pocl is chance, so a test that needs a record applied makes the
stored defaults lose (as the emulated-Pi test does). The host side is this machine's
(--native-host), the kernels the preset's own.
"""

import os
import signal
import subprocess
import sys

import pytest
from conftest import act_when

from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.measure.verify import verify
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.targets import get_target
from edgecompile.tune import records as tuning
from edgecompile.tune import run as tune_run

pytestmark = [pytest.mark.tvm, pytest.mark.opencl, pytest.mark.rpc,
              pytest.mark.usefixtures("pocl_cache")]
MODEL, SIZE, TASKS, TRIALS = "squeezenet1_1", 64, 2, 2


@pytest.fixture(scope="module")
def opencl_server(tmp_path_factory):
    with start_native_server(tmp_path_factory.mktemp("logs"), opencl=True) as server:
        yield server


def _opts(target, root, **kw):
    kw = {"trials_per_task": TRIALS, "max_tasks": TASKS, "trials_per_iter": TRIALS} | kw
    return tune_run.TuneOptions(MODEL, target, input_size=SIZE, root=root, cost_model="random",
                                search="replay-trace", seed=0, native_host=True, **kw)


def _make_records_win(directory):
    defaults = tuning.read_defaults(directory)
    assert defaults and all(v["default_ms"] > 0 for v in defaults.values())
    tuning.write_defaults(directory, {k: v | {"default_ms": 1e3} for k, v in defaults.items()})


def _build_with(root, target, out, monkeypatch):
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(root))
    return build(BuildOptions(MODEL, target, output_dir=out, input_size=SIZE, native_host=True),
                 quiet=True)


@pytest.fixture(scope="module")
def mali_tuned(tmp_path_factory, opencl_server):
    root = tmp_path_factory.mktemp("records")
    return root, tune_run.tune(_opts("mali", root, rpc=opencl_server.address))


def test_mali_tuning_measures_on_the_opencl_device(mali_tuned):
    root, r = mali_tuned
    assert r.trials_run == TASKS * TRIALS
    assert r.valid > 0, "no candidate ran on the device: tuning measured nothing"
    assert all(t["best_ms"] and t["best_ms"] > 0 for t in r.tasks if t["valid_this_run"])
    # One database per GPU and driver class, named after what the device reported.
    key = tuning.read_key(r.directory)
    assert r.directory.parent == root and r.directory.name.startswith("mali-")
    assert key["isa"] == "opencl-mali" and key["layout"] == "tvm-gpu-legalized-1"
    assert key["device"]["name"] and key["device"]["driver"], key
    gpu_class = f"{key['device']['name']} {key['device']['driver'].split()[0]}"
    assert r.directory.name == f"mali-{tuning.device_slug(gpu_class)}"
    # The search stayed within the device's limits and the preset's.
    assert key["device"]["max_threads_per_block"] > 0
    # dlight's default of every task was timed on the device: what a record has to beat.
    defaults = tuning.read_defaults(r.directory)
    assert len(defaults) >= TASKS and all(v["default_ms"] > 0 for v in defaults.values())
    assert all(v.get("record_ms") for v in defaults.values() if "record_ms" in v)


def test_mali_build_applies_the_records_and_verifies_over_rpc(mali_tuned, opencl_server, tmp_path,
                                                                monkeypatch):
    root, r = mali_tuned
    _make_records_win(r.directory)
    a = _build_with(root, "mali", tmp_path, monkeypatch)
    t = a.manifest["tuning"]
    assert t["records"] == str(r.directory) and t["match"] == "exact", t
    assert t["tasks_tuned"] >= 1, t
    assert t["measured_on"]["device"]["name"] == tuning.read_key(r.directory)["device"]["name"]
    # The kernel guard still holds: every function became an OpenCL kernel.
    k = a.manifest["target"]["kernels"]
    assert k["module"] == "opencl" and k["on_host"] == [] and k["kernels"] > 0
    v = verify(a.path, samples=2, device=DeviceSpec(rpc=opencl_server.address))
    assert v.ok and v.tvm.top1_agreement == 1.0 and opencl_server.address in v.where, (v.onnx, v.tvm)


def test_records_that_lose_to_dlight_are_not_applied(mali_tuned, tmp_path, monkeypatch):
    root, r = mali_tuned
    defaults = tuning.read_defaults(r.directory)
    tuning.write_defaults(r.directory, {k: v | {"default_ms": 1e-6} for k, v in defaults.items()})
    try:
        a = _build_with(root, "mali", tmp_path, monkeypatch)
    finally:
        tuning.write_defaults(r.directory, defaults)
    t = a.manifest["tuning"]
    assert t["records"] is None and t["tasks_tuned"] == 0, t


def _tuned_tasks(result) -> tuple[str, ...]:
    """The tasks a run tuned: the same ones again (--focus re-ranks once records exist)."""
    return tuple(t["task"] for t in result.tasks)


def test_mali_tuning_resumes(mali_tuned, opencl_server):
    root, r = mali_tuned
    again = tune_run.tune(_opts("mali", root, rpc=opencl_server.address, max_tasks=None,
                                only=_tuned_tasks(r)))
    assert again.trials_run == 0 and again.directory == r.directory


def test_mali_tuning_through_a_tracker_key_served_by_two_devices(tmp_path, monkeypatch, mali_tuned):
    logs = tmp_path / "logs"
    with start_tracker(logs) as tracker, \
            start_native_server(logs, tracker=tracker.address, key="mali-farm", opencl=True), \
            start_native_server(logs, tracker=tracker.address, key="mali-farm", opencl=True):
        r = tune_run.tune(_opts("mali", tmp_path / "records", tracker=tracker.address,
                                key="mali-farm", max_tasks=None, only=_tuned_tasks(mali_tuned[1])))
        assert r.trials_run == TASKS * TRIALS and r.valid > 0
        assert "key 'mali-farm'" in tuning.read_key(r.directory)["cpu"]
        _make_records_win(r.directory)
        a = _build_with(tmp_path / "records", "mali", tmp_path / "out", monkeypatch)
        assert a.manifest["tuning"]["tasks_tuned"] >= 1, a.manifest["tuning"]
        v = verify(a.path, samples=2, device=DeviceSpec(tracker=tracker.address, key="mali-farm"))
        assert v.ok, (v.onnx, v.tvm)


def test_adreno_tuning_builds_candidates_and_build_applies_them(tmp_path, opencl_server, monkeypatch,
                                                               mali_tuned):
    """Adreno's kernels come from TVM's Adreno rules (its convolution and pooling rules): the
    records compete with those. With no NDK here the candidates' host side is this machine's.
    (Adreno without texture memory legalises as Mali does: the same tasks.)"""
    r = tune_run.tune(_opts("adreno", tmp_path / "records", rpc=opencl_server.address,
                            max_tasks=None, only=_tuned_tasks(mali_tuned[1])))
    assert r.trials_run == TASKS * TRIALS and r.valid > 0 and r.directory.name.startswith("adreno-")
    assert tuning.read_key(r.directory)["isa"] == "opencl-adreno"
    _make_records_win(r.directory)
    a = _build_with(tmp_path / "records", "adreno", tmp_path / "out", monkeypatch)
    assert a.manifest["tuning"]["tasks_tuned"] >= 1 and a.manifest["target"]["kernels"]["on_host"] == []
    v = verify(a.path, samples=2)  # this process, on pocl
    assert v.ok, (v.onnx, v.tvm)


def test_mali_records_are_not_used_for_adreno(mali_tuned, tmp_path):
    """Records are per GPU class: a Mali database is never searched for an Adreno build."""
    root, r = mali_tuned
    found, why = tuning.candidate_records(get_target("adreno"), root)
    assert found == [] and "opencl-adreno" in why


def test_adreno_tuning_for_a_phone_without_an_ndk_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(EdgeCompileError, match="Android NDK"):
        tune_run.tune(tune_run.TuneOptions(MODEL, "adreno", rpc="127.0.0.1:1", root=tmp_path))
    assert not any(tmp_path.iterdir())


def test_gpu_tuning_needs_a_device(tmp_path):
    with pytest.raises(UsageError, match="timed on the GPU"):
        tune_run.tune(tune_run.TuneOptions(MODEL, "mali", root=tmp_path))


def _tune_cli(address, root, *extra):
    return subprocess.run(
        [sys.executable, "-m", "edgecompile", "tune", MODEL, "--target", "mali", "--native-host",
         "--input-size", str(SIZE), "--trials-per-task", "1", "--focus", "1", "--records-dir",
         str(root), "--rpc", address, *extra],
        capture_output=True, text=True, timeout=300)


def test_a_server_without_the_opencl_plugin_is_one_line(tmp_path):
    with start_native_server(tmp_path / "logs") as server:
        r = _tune_cli(server.address, tmp_path / "records")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"RPC server at {server.address} has no OpenCL runtime" in lines[0], r.stderr
    assert "--load-library" in lines[0]
    assert not (tmp_path / "records").exists()


def test_a_device_without_opencl_is_one_line(tmp_path):
    no_icd = tmp_path / "no-icd"
    no_icd.mkdir()  # ocl-icd finds no OpenCL driver there: a board without one
    env = os.environ | {"OCL_ICD_VENDORS": str(no_icd)}
    with start_native_server(tmp_path / "logs", opencl=True, env=env) as server:
        r = _tune_cli(server.address, tmp_path / "records")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the device at {server.address} has no OpenCL device" in lines[0], r.stderr
    assert not (tmp_path / "records").exists()


def test_a_device_that_dies_mid_tuning_keeps_the_records_and_a_rerun_resumes(tmp_path, mali_tuned):
    root = tmp_path / "records"
    trials = 6
    opts = _opts("mali", root, trials_per_task=trials, trials_per_iter=1, max_tasks=None,
                 only=_tuned_tasks(mali_tuned[1]))
    with start_native_server(tmp_path / "logs", opencl=True) as server:
        def recorded() -> bool:
            return any(f.stat().st_size > 0 for f in root.glob("*/database_tuning_record.json"))

        act_when(recorded, lambda: os.killpg(server.proc.pid, signal.SIGKILL), settle_s=0.5,
                 poll_s=0.2, timeout_s=300)
        with pytest.raises(EdgeCompileError, match="stopped answering during tuning") as e:
            tune_run.tune(tune_run.TuneOptions(**{**opts.__dict__, "rpc": server.address}))
    assert "run the same command again to resume" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    (directory,) = root.glob("mali-*")
    kept = len((directory / "database_tuning_record.json").read_text().splitlines())
    assert 1 <= kept < TASKS * trials
    with start_native_server(tmp_path / "logs2", opencl=True) as server:
        r = tune_run.tune(tune_run.TuneOptions(**{**opts.__dict__, "rpc": server.address}))
    # The rerun measures what is left, not everything again, and nothing failed for the device.
    assert 0 < r.trials_run <= TASKS * trials - kept
    assert sum(t["trials"] for t in r.tasks) == TASKS * trials


def test_the_tuning_target_keeps_within_the_device_limits():
    preset = get_target("mali")
    t = tuning.tuning_target(preset, None, {"max_threads_per_block": 64,
                                            "max_shared_memory_per_block": 1 << 30})
    assert int(t.attrs["max_threads_per_block"]) == 64 and int(t.attrs["max_num_threads"]) == 64
    assert int(t.attrs["max_shared_memory_per_block"]) == 16384  # the preset's is lower
    assert str(t.host.kind.name) == "llvm"
