"""MetaSchedule tuning: records really measured, against the default schedules they must beat,
stored per target + CPU, resumed, applied by build where they won (and said so in the
manifest), on another CPU of the same ISA class too, never on another class.

The tiny run tunes the two heaviest tasks of SqueezeNet 1.1 at 64x64 with a handful of trials
and no cost model, into a temporary records root (never the repository's tuning/).
"""

import dataclasses
import io
import json
import shutil

import pytest
import tvm
import tvm_ffi

from edgecompile.backend import compiler, core
from edgecompile.measure.verify import verify
from edgecompile.pipeline.build import build, build_or_reuse
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.targets import get_target
from edgecompile.tune import records as tuning
from edgecompile.tune import run as tune_run
from edgecompile.tune.in_context import check_in_context

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


def test_kernels_written_scheduled_are_no_tuning_task():
    """SqueezeNet 1.1 at 64 px has Winograd transforms (written as scheduled TIR, Shuffle nodes
    that MetaSchedule's FLOP estimate cannot read): none of them is a task, whatever their time,
    and every task left is one the estimate reads."""
    from edgecompile.backend import metaschedule as tt
    from edgecompile.backend.cpu_schedules.tags import is_scheduled
    from edgecompile.pipeline.build import final_graph
    from edgecompile.pipeline.stages.export import INPUT_NAME

    g = final_graph(BuildOptions(MODEL, "x86", input_size=SIZE))
    target = tuning.tuning_target(get_target("x86"), 2, None)
    prepared = tt.prepare(g.folded, INPUT_NAME, g.spec.input_shape, target)
    scheduled = [f for f in prepared.mod.functions.values()
                 if isinstance(f, tvm.tirx.PrimFunc) and is_scheduled(f)]
    assert scheduled  # the control: the model has such kernels
    tasks = tt.extract_tasks(prepared, target)
    assert tasks and not any(t.name.startswith("winograd") for t in tasks)
    for t in tasks:
        tvm.s_tir.analysis.estimate_tir_flops(t.workload)


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
    assert key["caches"] == core.host_caches() and key["caches"]["l1d_kb"] > 0  # for likeness()


def test_resumed_run_reuses_records(tuned):
    root, first = tuned
    names = tuple(t["task"] for t in first.tasks)
    again = tune_run.tune(dataclasses.replace(_opts(root), max_tasks=None, only=names))
    assert again.trials_run == 0  # every task already has its budget
    assert [t["trials"] for t in again.tasks] == [t["trials"] for t in first.tasks]
    more = tune_run.tune(dataclasses.replace(_opts(root), max_tasks=None, only=names,
                                           trials_per_task=TRIALS + 2, seed=1))
    assert 0 < more.trials_run <= TASKS * 2  # only the rest of the larger budget


def test_rule_search_times_the_rules_own_choices_and_resumes(tmp_path):
    """`--search rules`: the records are the rules' other ranked schedules of each kernel
    (knobs.py), every one measured, none of them the default itself; each task's best is then
    timed inside whole inferences, which decides; a second run has nothing left to time."""
    from edgecompile.backend import metaschedule as tt
    from edgecompile.backend.cpu_schedules import schedule_one

    opts = tune_run.TuneOptions(MODEL, "x86", input_size=SIZE, root=tmp_path, max_tasks=TASKS,
                                search="rules", trials_per_task=6)
    out = io.StringIO()
    r = tune_run.tune(opts, stream=out)
    assert 0 < r.trials_run <= TASKS * 6 and r.valid == r.trials_run
    assert "records against the defaults inside whole inferences" in out.getvalue()
    by_task = {v["task"]: v for v in tuning.read_defaults(r.directory).values()}
    database = tt.open_database(r.directory)
    target = tuning.tuning_target(get_target("x86"), 2)
    for row in r.tasks:
        if row["trials_this_run"] == 0:
            continue  # a kernel whose rule offers no choice
        entry = by_task[row["task"]]
        assert entry["context_default_ms"] == row["in_inference_default_ms"] > 0
        assert entry["context_record_ms"] == row["in_inference_record_ms"] > 0
        assert row["record_used"] == tuning.entry_wins(entry) == tuning.record_wins(
            entry["context_default_ms"], entry["context_record_ms"])
    # No record is the default schedule (head_to_head times that one).
    g_tasks = {t["task"] for t in r.tasks if t["trials_this_run"]}
    assert g_tasks
    from edgecompile.pipeline.build import final_graph
    from edgecompile.pipeline.stages.export import INPUT_NAME

    g = final_graph(BuildOptions(MODEL, "x86", input_size=SIZE))
    build_target = compiler.make_target(get_target("x86").target, get_target("x86").host)
    for t in tt.extract_tasks(tt.prepare(g.folded, INPUT_NAME, g.spec.input_shape, target), target):
        if t.name not in g_tasks:
            continue
        default = schedule_one(tt._main_func(t.workload), build_target)["main"].body
        for rec in database.get_top_k(database.commit_workload(t.workload), 100):
            sch = tvm.s_tir.Schedule(t.workload)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            assert not tvm_ffi.structural_equal(sch.mod["main"].body, default)
    # The same tasks again (--focus would now pick others: the records made these cheaper).
    again = tune_run.tune(dataclasses.replace(opts, max_tasks=None, only=tuple(t["task"] for t in r.tasks)),
                          stream=io.StringIO())
    assert again.trials_run == 0


def test_defaults_are_measured_for_every_task(tuned):
    """What a record must beat: the default schedule of each task, timed by the same runner."""
    root, r = tuned
    d = tuning.records_dir(get_target("x86"), root)
    (registered,) = [m for m in tuning.read_models(d).values() if m["model"] == MODEL]
    defaults = tuning.read_defaults(d)
    assert len(defaults) == registered["tasks"]
    assert all(0 < v["default_ms"] < 1000 for v in defaults.values())
    assert all(len(v["default_schedule"]) == 16 for v in defaults.values())
    by_task = {v["task"]: v for v in defaults.values()}
    for row in r.tasks:
        assert row["record_ms"] is not None  # timed head to head with the default
        # Every record was timed inside whole inferences too (tune.in_context.check_in_context),
        # and that decided. (defaults.json has the figures of the latest run: other tests tune
        # these tasks again.)
        assert "context_record_ms" in by_task[row["task"]]
        inside = row["in_inference_default_ms"], row["in_inference_record_ms"]
        assert inside[0] > 0 and inside[1] > 0
        assert row["record_used"] == tuning.record_wins(*inside)


def _with_defaults(root, dest, default_ms):
    """A copy of the tuned records whose defaults.json says every default took ``default_ms``:
    the real records then win (or lose) every comparison."""
    here = tuning.records_dir(get_target("x86"), root)
    shutil.copytree(here, dest / here.name)
    defaults = tuning.read_defaults(dest / here.name)
    # Without the in-context figures of the tiny run: the head-to-head alone decides here.
    tuning.write_defaults(dest / here.name, {
        k: {f: x for f, x in v.items() if not f.startswith("context_")} | {"default_ms": default_ms}
        for k, v in defaults.items()})
    return dest / here.name


def test_records_that_lose_inside_the_inference_are_not_applied(tuned, tmp_path, monkeypatch):
    """Records that won the head-to-head but ran slower inside whole inferences (tune's
    in-context check, the context_* figures) are not used; where they won there too, they are."""
    root, _ = tuned
    for name, context, applied in (("lost", (1e-9, 1.0), 0), ("won", (1.0, 1e-9), TASKS)):
        d = _with_defaults(root, tmp_path / name, 1e3)
        tuning.write_defaults(d, {k: v | {"context_default_ms": context[0], "context_record_ms": context[1]}
                                  for k, v in tuning.read_defaults(d).items()})
        monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
        a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / f"{name}-out", input_size=SIZE),
                  quiet=True)
        assert a.manifest["tuning"]["tasks_tuned"] == applied, name


def test_in_context_check_times_every_record_inside_whole_inferences(tuned, tmp_path):
    """tune's in-context check builds the model with the records it checks and without, and
    finds each of those tasks among the model's kernels (task names are the kernels' names),
    timed in both builds."""
    from edgecompile.backend import metaschedule as tt
    from edgecompile.pipeline.build import final_graph
    from edgecompile.pipeline.stages.export import INPUT_NAME

    root, _ = tuned
    d = _with_defaults(root, tmp_path / "slow-defaults", 1e3)  # every record wins the head-to-head
    preset = get_target("x86")
    g = final_graph(BuildOptions(MODEL, "x86", input_size=SIZE))
    target = tuning.tuning_target(preset, 2)
    tasks = tt.extract_tasks(tt.prepare(g.folded, INPUT_NAME, g.spec.input_shape, target), target)
    database = tt.open_database(d)
    hashes = {t.name: tt.workload_hash(database, t) for t in tasks}
    winners = [t for t in tasks if tuning.entry_wins(tuning.read_defaults(d).get(hashes[t.name], {}))]
    assert len(winners) == TASKS
    out = io.StringIO()
    decided = check_in_context(g.folded, g.spec.input_shape, preset, d, tasks, winners, hashes, 2, out)
    # The records build read this database (not the shipped one, nor $EDGECOMPILE_TUNING_DIR).
    assert f"the records build uses {TASKS} records" in out.getvalue()
    for t in winners:
        assert decided[t.name]["context_default_ms"] > 0 and decided[t.name]["context_record_ms"] > 0


def test_build_applies_records_that_win_and_says_so(tuned, tmp_path, monkeypatch):
    root, _ = tuned
    d = _with_defaults(root, tmp_path / "slow-defaults", 1e3)
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path, input_size=SIZE), quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] == str(d) and t["match"] == "exact" and t["mode"] == "isa"
    key = json.loads((d / tuning.KEY_FILE).read_text())
    assert t["measured_on"] == {"cpu": key["cpu"], "mcpu": key["target"]["mcpu"],
                                "isa": key["isa"], "threads": key["tuned_threads"]}
    # Exactly the tuned tasks were applied, out of every task of the model (the count tuning
    # extracted and registered in models.json), most of which keep the default schedules.
    (registered,) = [m for m in tuning.read_models(d).values() if m["model"] == MODEL]
    assert t["tasks_tuned"] == t["tasks_with_records"] == TASKS
    assert t["tasks_total"] == registered["tasks"] > TASKS
    r = verify(a.path, samples=2)  # tuned kernels beside the default ones still agree
    assert r.ok, (r.onnx, r.tvm)
    # The kernel table reads the kernels unscheduled: a tuned kernel keeps its operator class.
    plain = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "plain", input_size=SIZE,
                               records="none"), quiet=True)
    assert {k["name"]: k["op_class"] for k in a.kernel_table()["kernels"]} == \
        {k["name"]: k["op_class"] for k in plain.kernel_table()["kernels"]}



def test_tuned_channel_vector_kernel_keeps_its_class(tmp_path, monkeypatch):
    """A kernel scheduled from a record has its blocks renamed (edge_pw_fvec_update): the
    kernel table still says pointwise (it read the kernels unscheduled), not pooling."""
    plain = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "plain", input_size=SIZE,
                               records="none"), quiet=True)
    classes = {k["name"]: k["op_class"] for k in plain.kernel_table()["kernels"]}
    fvec = sorted(n for n, c in classes.items() if c == "pointwise" and "conv2d_cv" in n)[0]
    root = tmp_path / "records"
    tune_run.tune(dataclasses.replace(_opts(root), max_tasks=None, only=(fvec,), trials_per_task=2,
                                      trials_per_iter=2))
    d = _with_defaults(root, tmp_path / "slow-defaults", 1e3)
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "tuned", input_size=SIZE), quiet=True)
    assert a.manifest["tuning"]["tasks_tuned"] == 1
    assert {k["name"]: k["op_class"] for k in a.kernel_table()["kernels"]} == classes


def test_compaction_interrupted_between_its_renames_is_finished(tuned, tmp_path, monkeypatch):
    """Compaction renumbers the records to the workloads it keeps, so the two files change
    together. Interrupted after the records file was renamed and before the workloads file
    was, the database would pair records with the wrong workloads; the journal lets the next
    reader (a build here) finish the swap."""
    from edgecompile.backend.metaschedule import RECORD_FILE, WORKLOAD_FILE

    root, _ = tuned
    d = _with_defaults(root, tmp_path / "uncompacted", 1e3)
    # An uncompacted database: one workload without records at index 0, the records after it.
    wl = (d / WORKLOAD_FILE).read_text().splitlines()
    (d / WORKLOAD_FILE).write_text("\n".join([wl[0]] + wl) + "\n")
    recs = [json.loads(line) for line in (d / RECORD_FILE).read_text().splitlines() if line.strip()]
    (d / RECORD_FILE).write_text("".join(json.dumps([r[0] + 1] + r[1:]) + "\n" for r in recs))

    finish = tuning.finish_compaction
    monkeypatch.setattr(tuning, "finish_compaction", lambda directory: None)  # "interrupted"
    tuning.compact_records(d)
    journal = json.loads((d / tuning.COMPACTION_JOURNAL).read_text())
    (d / journal[RECORD_FILE]).replace(d / RECORD_FILE)  # the first rename happened, not the second
    monkeypatch.setattr(tuning, "finish_compaction", finish)

    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "a", input_size=SIZE), quiet=True)
    assert not (d / tuning.COMPACTION_JOURNAL).exists()
    assert (d / WORKLOAD_FILE).read_text().splitlines() == wl
    assert a.manifest["tuning"]["tasks_tuned"] == TASKS
    assert verify(a.path, samples=1).ok


def test_records_slower_than_the_defaults_are_not_applied(tuned, tmp_path, monkeypatch):
    root, _ = tuned
    d = _with_defaults(root, tmp_path / "fast-defaults", 1e-9)
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path, input_size=SIZE), quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] is None and t["searched"] == [str(d)] and t["tasks_tuned"] == 0
    assert "beat the default" in t["reason"]


def test_records_timed_against_another_default_wait_for_a_recheck(tuned, tmp_path, monkeypatch):
    """A record won against the default schedule of its day; once the rules give that kernel
    another schedule, the comparison says nothing: the build keeps the default and counts the
    record as stale, until `tune --recheck` has timed the two against each other again."""
    root, first = tuned
    d = _with_defaults(root, tmp_path / "old-rules", 1e3)
    defaults = tuning.read_defaults(d)
    tuning.write_defaults(d, {k: v | {"default_schedule": "0" * 16} for k, v in defaults.items()})
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(d.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "a", input_size=SIZE), quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] is None and t["tasks_tuned"] == 0 and t["tasks_stale"] == TASKS

    again = tune_run.tune(dataclasses.replace(_opts(d.parent), max_tasks=None, recheck=True))
    assert again.trials_run == 0  # no search, only the head-to-head
    assert sorted(r["task"] for r in again.tasks) == sorted(r["task"] for r in first.tasks)
    rechecked = tuning.read_defaults(d)
    assert all(v["default_schedule"] != "0" * 16 for v in rechecked.values())
    timed = [k for k, v in defaults.items() if "record_ms" in v]
    assert timed and all(rechecked[k]["record_ms"] > 0 for k in timed)


def test_records_travel_within_an_isa_class_only(tuned, tmp_path, monkeypatch):
    """Records tuned on another CPU of this ISA class are used, and the manifest says where they
    were measured; `--records exact` refuses them; a database of another class is never used."""
    root, _ = tuned
    d = _with_defaults(root, tmp_path / "other", 1e3)
    other = d.with_name("x86-someothercpu")
    d.rename(other)
    key = json.loads((other / tuning.KEY_FILE).read_text())
    key["target"]["mcpu"], key["cpu"] = "someothercpu", "Some Other CPU (someothercpu)"
    (other / tuning.KEY_FILE).write_text(json.dumps(key))
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(other.parent))
    a = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "a", input_size=SIZE), quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] == str(other) and t["match"] == "isa"
    assert t["measured_on"]["cpu"] == "Some Other CPU (someothercpu)" and t["tasks_tuned"] == TASKS
    assert verify(a.path, samples=1).ok
    b = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "b", input_size=SIZE, records="exact"),
              quiet=True)
    assert b.manifest["tuning"]["records"] is None and "no records at" in b.manifest["tuning"]["reason"]
    key["isa"] = "aarch64-neon"
    (other / tuning.KEY_FILE).write_text(json.dumps(key))
    c = build(BuildOptions(MODEL, "x86", output_dir=tmp_path / "c", input_size=SIZE), quiet=True)
    assert c.manifest["tuning"]["records"] is None


@pytest.mark.slow
def test_mobilenet_v2_tuning_makes_it_faster(tmp_path):
    """A real workload: 16 trials for each task of MobileNetV2 at 224 (some 10 minutes here)."""
    r = tune_run.tune(tune_run.TuneOptions("mobilenet_v2_100", "x86", trials_per_task=16, root=tmp_path))
    assert not r.untuned and r.valid > 0.5 * r.trials_run


def test_reuse_follows_the_records(tuned, tmp_path, monkeypatch):
    """bench/eval/matrix reuse a built artifact only while it was built with the records a build
    would use today: new records for the model make them rebuild it."""
    root = _with_defaults(tuned[0], tmp_path / "slow-defaults", 1e3).parent
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(tmp_path / "none"))
    untuned = build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE, quiet=True)
    assert untuned.manifest["tuning"]["records"] is None
    assert build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE).manifest == untuned.manifest
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(root))
    tuned_now = build_or_reuse(MODEL, "x86", tmp_path / "out", input_size=SIZE, quiet=True)
    assert tuned_now.manifest["tuning"]["tasks_tuned"] >= TASKS
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
