"""MetaSchedule tuning: records really measured, stored per target + CPU, resumed, applied by
build (and said so in the manifest), and never applied to another CPU.

The tiny run tunes the two heaviest tasks of SqueezeNet 1.1 at 64x64 with a handful of trials
and no cost model, into a temporary records root (never the repository's tuning/).
"""

import dataclasses
import json
import shutil

import pytest

from edgecompile.measure.verify import verify
from edgecompile.pipeline.build import build, build_or_reuse
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.targets import get_target
from edgecompile.tune import records as tuning
from edgecompile.tune import run as tune_run

# Real MetaSchedule runs of a few trials each (about 30 s in all); the real workload below is slow.
pytestmark = pytest.mark.tvm

MODEL, SIZE, TASKS, TRIALS = "squeezenet1_1", 64, 2, 4


def _opts(root, **kw):
    return tune_run.TuneOptions(MODEL, "x86", trials_per_task=TRIALS, input_size=SIZE, root=root,
                              max_tasks=TASKS, trials_per_iter=TRIALS, cost_model="random",
                              search="replay-trace", seed=0, **kw)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    first = tune_run.tune(_opts(root))
    return root, first


def test_tiny_tuning_really_measures(tuned):
    root, r = tuned
    assert r.trials_run == TASKS * TRIALS
    assert r.valid > 0, "no candidate built and ran: tuning measured nothing"
    measured = [t for t in r.tasks if t["best_ms"] is not None]
    assert len(measured) == TASKS
    assert all(0 < t["best_ms"] < 1000 for t in measured)


def test_records_land_in_the_per_cpu_database(tuned):
    root, r = tuned
    preset = get_target("x86")
    d = tuning.records_dir(preset, root)
    assert r.directory == d
    assert d.name == f"x86-{tuning.target_key(preset)['mcpu']}" and d.name != "x86-native"
    lines = (d / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) >= r.valid
    key = json.loads((d / tuning.KEY_FILE).read_text())
    assert key["target"] == tuning.target_key(preset)


def test_resumed_run_reuses_records(tuned):
    root, first = tuned
    names = tuple(t["task"] for t in first.tasks)
    again = tune_run.tune(dataclasses.replace(_opts(root), max_tasks=None, only=names))
    assert again.trials_run == 0  # every task already has its budget
    assert [t["trials"] for t in again.tasks] == [t["trials"] for t in first.tasks]
    more = tune_run.tune(dataclasses.replace(_opts(root), max_tasks=None, only=names,
                                           trials_per_task=TRIALS + 2, seed=1))
    assert 0 < more.trials_run <= TASKS * 2  # only the rest of the larger budget


def test_build_applies_records_and_says_so(tuned, tmp_path, monkeypatch):
    root, _ = tuned
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(root))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path, input_size=SIZE, use_records=True),
              quiet=True)
    t = a.manifest["tuning"]
    d = tuning.records_dir(get_target("x86"), root)
    assert t["records"] == str(d)
    # Exactly the tuned tasks matched, out of every task of the model (the count tuning
    # extracted and registered in models.json), most of which were left untuned.
    (registered,) = [m for m in tuning.read_models(d).values() if m["model"] == MODEL]
    assert t["tasks_matched"] == TASKS
    assert t["tasks_total"] == registered["tasks"] > TASKS
    r = verify(a.path, samples=2)  # tuned kernels (and pre-packed weights) still agree
    assert r.ok, (r.onnx, r.tvm)


def test_records_for_another_cpu_are_not_applied(tuned, tmp_path, monkeypatch):
    root, _ = tuned
    here = tuning.records_dir(get_target("x86"), root)
    # Another CPU's preset looks in its own directory ...
    assert tuning.records_dir(get_target("x86-avx512"), root) != here
    # ... and a directory whose key names another CPU is refused even under the right name.
    other = tmp_path / "other"
    shutil.copytree(here, other / here.name)
    key = json.loads((other / here.name / tuning.KEY_FILE).read_text())
    key["target"]["mcpu"] = "skylake-avx512"
    (other / here.name / tuning.KEY_FILE).write_text(json.dumps(key))
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(other))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "b", input_size=SIZE,
                           use_records=True), quiet=True)
    assert a.manifest["tuning"]["records"] is None
    assert "skylake-avx512" in a.manifest["tuning"]["reason"]


@pytest.mark.slow
def test_mobilenet_v2_tuning_makes_it_faster(tmp_path):
    """A real workload: 16 trials for each task of MobileNetV2 at 224 (some 10 minutes here)."""
    r = tune_run.tune(tune_run.TuneOptions("mobilenet_v2_100", "x86", trials_per_task=16, root=tmp_path))
    assert not r.untuned and r.valid > 0.5 * r.trials_run


def test_reuse_follows_the_records(tuned, tmp_path, monkeypatch):
    """bench/eval/matrix reuse a built artifact only while it was built with the records a build
    would use today: new records for the model make them rebuild it."""
    root, _ = tuned
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(tmp_path / "none"))
    untuned = build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE, quiet=True)
    assert untuned.manifest["tuning"]["records"] is None
    assert build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE).manifest == untuned.manifest
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(root))
    tuned_now = build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE, quiet=True)
    assert tuned_now.manifest["tuning"]["tasks_matched"] >= TASKS
    assert build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE).manifest == tuned_now.manifest


def test_tuning_leaves_the_thread_setting_as_it_was(tmp_path):
    """Candidates are measured with the tuned thread count, set for tuning's worker processes
    only: the caller's later TVM runs (and servers it starts) keep their own."""
    import os

    before = os.environ.get("TVM_NUM_THREADS")
    tune_run.tune(dataclasses.replace(_opts(tmp_path), max_tasks=1, trials_per_task=1,
                                    trials_per_iter=1, threads=7))
    assert os.environ.get("TVM_NUM_THREADS") == before


def test_uneven_budgets_keep_stdout_clean_and_progress_counting(tuned, tmp_path, capfd):
    """Tasks with different remaining budgets are tuned by one MetaSchedule call each. The
    second call used to log its tables to stdout (breaking `tune --format json`) and restart
    the progress count at 1."""
    import io
    import re

    names = tuple(t["task"] for t in tuned[1].tasks)
    tune_run.tune(dataclasses.replace(_opts(tmp_path), max_tasks=None, only=names[:1],
                                    trials_per_task=2, trials_per_iter=2))
    capfd.readouterr()
    progress = io.StringIO()
    r = tune_run.tune(dataclasses.replace(_opts(tmp_path), max_tasks=None, only=names), progress)
    assert r.trials_run == 2 + TRIALS  # two groups: 2 left of one task, 4 of the other
    assert capfd.readouterr().out == ""
    counts = [int(m) for m in re.findall(r"\] (\d+)/6 trials", progress.getvalue())]
    assert counts == sorted(counts) and counts[-1] == 6, progress.getvalue()


def test_tune_cli_json_is_the_only_thing_on_stdout(tmp_path):
    """In a fresh process, MetaSchedule's first logging setup (while building the tuning
    contexts) must not print to stdout either: `tune --format json | jq` is the contract."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edgecompile", "tune", MODEL, "--target", "x86", "--input-size",
           str(SIZE), "--trials-per-task", "1", "--focus", "1", "--records-dir", str(tmp_path),
           "--format", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["trials_run"] == 1 and result["model"] == MODEL
