"""MetaSchedule: the second half of our TVM layer.

Everything that touches ``tvm.s_tir`` (MetaSchedule's home in TVM 0.27) lives here, the way
the rest of the backend package holds the rest. The policy (which records apply to which
target, how the budget is split, resuming) lives in ``edgecompile.tune``.

The module a model is tuned and built from is prepared the same way both times (``prepare``),
so the tasks' structural hashes -- the database's keys -- match between ``tune`` and ``build``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend.core import load_tvm

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"



def ms_module():
    """tvm.s_tir.meta_schedule, with only the CPU tensor intrinsics registered (see below)."""
    _cpu_tensor_intrinsics_only()
    from tvm.s_tir import meta_schedule as ms

    return ms


def _cpu_tensor_intrinsics_only() -> None:
    """Register the CPU tensor intrinsics (x86, Arm) without the CUDA/ROCm ones.

    ``TuneContext()`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` registers every
    back end's intrinsics: 25-60 s here, almost all of it CUDA and ROCm, which CPU tuning never
    uses. We load the package without running its ``__init__`` and import the CPU modules; the
    later ``import tvm.s_tir.tensor_intrin`` then finds it loaded. (Same cause as the builder
    timeouts in the field notes.)
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    tvm.s_tir.tensor_intrin = pkg
    try:
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")
    except Exception:  # noqa: BLE001 -- fall back to the full import
        sys.modules.pop(name, None)
        importlib.import_module(name)


# ---------------------------------------------------------------------------------------------
# The module: ONNX -> the fused kernels our CPU pipeline builds


# The module tuned is the one the default schedules get: on CPUs our legalisation (weights
# re-blocked into the kernels' layouts, at build time), fused; on GPUs TVM's own legalisation
# and fusion for the target, before dlight's rules. key.json stores this name: records of
# another preparation have other workloads and would never match.
LAYOUT = "edgecompile-cpu-1"
GPU_LAYOUT = "tvm-gpu-legalized-1"


def layout_of(target) -> str:
    from edgecompile.backend.compiler import is_cpu

    return LAYOUT if is_cpu(target) else GPU_LAYOUT


@dataclass
class Prepared:
    mod: Any  # fused Relax IRModule, weights bound as constants, no kernel scheduled yet


def prepare(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...], target) -> Prepared:
    """ONNX -> Relax -> legalised and fused: exactly the kernels a build schedules with its
    default rules (ours on CPUs, dlight's on GPUs), so a tuned record and the default schedule
    compete for the same workload."""
    tvm = load_tvm()

    from edgecompile.backend.compiler import import_onnx

    mod = import_onnx(model, input_name, shape)
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(_prepare_passes(target))(mod)
    return Prepared(mod)


def _prepare_passes(target) -> list:
    from edgecompile.backend.compiler import is_cpu

    if not is_cpu(target):
        from edgecompile.backend.gpu_schedules import prepare_passes

        return prepare_passes(target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from edgecompile.backend.cpu_schedules import fuse_passes

    return cpu_generic.library_dispatch_passes(target) + fuse_passes(target)


def default_schedule(func, target):
    """One kernel as a build schedules it without records, as {"main": func}: our CPU rules,
    or dlight's GPU rules. What a tuning record has to beat."""
    from edgecompile.backend.compiler import is_cpu

    if not is_cpu(target):
        from edgecompile.backend.gpu_schedules import schedule_one

        return schedule_one(func, target)
    from edgecompile.backend.cpu_schedules import schedule_one

    return schedule_one(func, target)


@dataclass(frozen=True)
class Task:
    name: str
    weight: int  # how many times the model calls it
    flop: float
    context: Any = field(compare=False, repr=False)  # TuneContext
    workload: Any = field(compare=False, repr=False)  # the PrimFunc module (database key)


def extract_tasks(prepared: Prepared, target) -> list[Task]:
    from edgecompile.backend.cpu_schedules.tags import is_scheduled

    ms = ms_module()
    tvm = load_tvm()
    tasks = []
    for t in ms.relax_integration.extract_tasks(prepared.mod, target):
        funcs = [t.mod, *t.mod.functions.values()]  # the flag is on the PrimFunc, not the module
        if any(is_scheduled(f) for f in funcs):
            continue  # written scheduled (Winograd's transforms): their Shuffles stop the FLOP estimate
        wl = t.dispatched[0]
        try:
            flop = float(tvm.s_tir.analysis.estimate_tir_flops(wl))
        except Exception:  # noqa: BLE001 -- an estimate only
            flop = 0.0
        tasks.append(Task(t.task_name, int(t.weight), flop, t, wl))
    return tasks


# ---------------------------------------------------------------------------------------------
# The database


def open_database(directory: Path):
    ms = ms_module()
    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(directory / WORKLOAD_FILE),
        path_tuning_record=str(directory / RECORD_FILE),
        allow_missing=True,
    )


def task_records(database, task: Task, target) -> tuple[int, float | None]:
    """(records stored for this task's workload, its best measured latency in seconds)."""
    if not database.has_workload(task.workload):
        return 0, None
    wl = database.commit_workload(task.workload)
    recs = database.get_top_k(wl, 1 << 30)
    best = None
    for r in recs:
        s = _mean_secs(r.run_secs)
        if s is not None and (best is None or s < best):
            best = s
    return len(recs), best


def workload_hash(database, task: Task) -> str:
    """The structural hash the JSON database files a task's workload under."""
    return str(database.commit_workload(task.workload).as_json()[0])


def _mean_secs(run_secs) -> float | None:
    if not run_secs:
        return None
    vals = [float(v) for v in run_secs]
    m = sum(vals) / len(vals)
    return None if m >= 1e9 else m  # MetaSchedule stores 1e10 for a failed candidate


# ---------------------------------------------------------------------------------------------
# Tuning


@dataclass
class TaskProgress:
    name: str
    weight: int
    flop: float
    trials: int = 0  # measured this run
    valid: int = 0  # of which built and ran
    best_s: float | None = None  # best latency so far (records included)


ProgressFn = Callable[[list[TaskProgress], int], None]
BatchFn = Callable[[list[Any], list[Any]], None]


def _measure_callback(on_measured: Callable[[int, list[Any], list[Any]], None]):
    """A MetaSchedule measure callback calling ``on_measured(task_id, builder_results,
    runner_results)`` for every measured batch."""
    ms = ms_module()
    from tvm.ir.utils import derived_object

    @derived_object
    class _Callback(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            on_measured(int(task_id), list(builder_results), list(runner_results))

    return _Callback()


def _progress_callback(states: list[TaskProgress], indices: list[int], on_update: ProgressFn):
    """Reports into ``states`` (every task of the run); MetaSchedule's task ``i`` is ours
    ``indices[i]``, since each budget group is its own scheduler."""
    def record(task_id, builder_results, runner_results) -> None:
        i = indices[task_id]
        st = states[i]
        for b, r in zip(builder_results, runner_results, strict=True):
            st.trials += 1
            if b.error_msg is None and r.error_msg is None:
                s = _mean_secs(r.run_secs)
                if s is not None:
                    st.valid += 1
                    st.best_s = s if st.best_s is None else min(st.best_s, s)
        on_update(states, i)

    return _measure_callback(record)


def tune_tasks(tasks: list[Task], trials_per_task: list[int], database, target, builder, runner,
               states: list[TaskProgress], on_update: ProgressFn, work_dir: Path,
               trials_per_iter: int = 64, seed: int | None = None, cost_model: str = "xgb",
               search: str = "evolutionary", on_batch: BatchFn | None = None) -> None:
    """Tune each task for its own number of trials (tasks with 0 are skipped), appending every
    measured candidate to ``database`` as it goes. ``on_batch(builder_results,
    runner_results)`` sees each measured batch before it is recorded, and may stop the run by
    raising (that batch is then not recorded)."""
    ms = ms_module()
    # Tasks with the same remaining budget are tuned together (one scheduler, shared builder pool).
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(trials_per_task):
        if n > 0:
            groups.setdefault(n, []).append(i)
    for n, idx in sorted(groups.items(), reverse=True):
        # Building the contexts and tuning each run MetaSchedule's logging dictConfig, which
        # leaves its logger at DEBUG with a console handler on stdout: from the second group
        # on, its tables went to stdout (breaking `tune --format json`). Quiet it before every
        # group, and bind that handler to stderr.
        quiet_logging()
        with contextlib.redirect_stdout(sys.stderr):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [tasks[i].context for i in idx], work_dir=str(work_dir), seed=seed,
                num_threads=os.cpu_count() or 1, strategy=_strategy(search),
            )
            # on_batch first: MetaSchedule's own callbacks record the batch.
            first = [_measure_callback(lambda _i, b, r: _stop_or_go(on_batch, b, r))] if on_batch else []
            callbacks = first + \
                ms.measure_callback.MeasureCallback.create("default") + [
                _progress_callback(states, idx, on_update)]
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                max_trials_global=n * len(idx), max_trials_per_task=n,
                num_trials_per_iter=min(trials_per_iter, n), builder=builder, runner=runner,
                database=database, measure_callbacks=callbacks, task_scheduler="round-robin",
                cost_model=cost_model,
            )


def tune_rule_choices(tasks: list[Task], done: list[int], per_task: int, database, target,
                      build_target, builder, runner, states: list[TaskProgress],
                      on_update: ProgressFn, rounds: int = 3) -> None:
    """`tune --search rules`: each task scheduled by our rules under the other choices their
    cost models ranked (cpu_schedules/knobs.py: tiles, K chunks, how cores split the work),
    built and timed by the same builder and runner as MetaSchedule's candidates, and committed
    as tuning records (the rule's trace); the default itself is not a record (head_to_head
    times it). The variants come in a fixed order: a task that has ``done[i]`` trials has had
    its first ones timed (compaction may have dropped their records since), and gets the next
    ones up to ``per_task``."""
    ms = ms_module()
    from edgecompile.backend.cpu_schedules import schedule_variants

    for i, task in enumerate(tasks):
        if done[i] >= per_task:
            continue
        func = _main_func(task.workload)
        wl = database.commit_workload(task.workload)
        stored = {_trace_key(r.trace) for r in database.get_top_k(wl, 1 << 30)}
        variants = [sch for _, sch in schedule_variants(func, build_target, per_task + 1)[1:]]
        variants = [v for v in variants[done[i]:per_task] if _trace_key(v.trace) not in stored]
        if not variants:
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        st = states[i]
        # Variants a few % apart, on a machine whose load moves one kernel's time by 1.3x between
        # two measurements a minute apart: the fastest of `rounds` passes over all of them.
        fastest = _measure([v.mod for v in variants], build_target, builder, runner, rounds)
        for sch, secs in zip(variants, fastest, strict=True):
            st.trials += 1
            if secs is None:
                continue
            st.valid += 1
            st.best_s = secs if st.best_s is None else min(st.best_s, secs)
            database.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [secs], target, args))
        on_update(states, i)


def _trace_key(trace) -> str:
    """A trace's instructions and decisions as text: the same schedule gives the same key."""
    return str(trace.as_json(remove_postproc=True))


def _stop_or_go(on_batch: BatchFn, builder_results, runner_results) -> None:
    """``on_batch``; where it stops the run, the batch's build directories are removed here,
    as MetaSchedule's RemoveBuildArtifact, which then never runs, would have."""
    try:
        on_batch(builder_results, runner_results)
    except Exception:
        for b in builder_results:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        raise


def _strategy(search: str):
    """"evolutionary": MetaSchedule's search with a smaller population than its default (the
    search itself costs tens of seconds per batch on 2 cores); "replay-trace": random schedules,
    no search (tiny runs, tests)."""
    ms = ms_module()
    if search == "replay-trace":
        return "replay-trace"
    return ms.search_strategy.EvolutionarySearch(population_size=256, genetic_num_iters=3)


def quiet_logging() -> None:
    """MetaSchedule logs every iteration's task table at INFO; we print our own progress.

    Its logging set-up re-lists its logger's existing handlers by name in a dictConfig, which
    replaces them all, and crashes ("'NoneType' object has no attribute 'format'") on one that
    has no name and no config entry -- such as the capture handler pytest 9.2 attaches to
    non-propagating loggers. Such a handler would be dropped by that dictConfig anyway, so it
    is detached here first.
    """
    import logging

    for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in [h for h in logger.handlers if h.get_name() is None]:
            logger.removeHandler(handler)


# ---------------------------------------------------------------------------------------------
# The default schedule: what a record has to beat


def measure_defaults(tasks: list[Task], target, builder, runner) -> list[float | None]:
    """Each task as our rules schedule it, built and timed by the same builder and runner
    (and so on the same device, with the same threads) as the tuning candidates: seconds per
    call, None where it failed to build or run."""
    return _measure([default_schedule(_main_func(t.workload), target) for t in tasks], target,
                    builder, runner)


def default_schedule_id(task: Task, target) -> str:
    """A fingerprint of the default schedule the rules give this task now. defaults.json keeps
    the one a record was timed against: when the rules change (a better tile, say), that
    head-to-head no longer says anything, and a record that beat the old default may lose to
    the new one (MobileNet v1's 512->512 @14x14 went from 303 to 485 GFLOP/s)."""
    load_tvm()
    import tvm_ffi

    mod = default_schedule(_main_func(task.workload), target)
    return f"{tvm_ffi.structural_hash(mod) & (2**64 - 1):016x}"


def head_to_head(tasks: list[Task], database, target, builder, runner,
                 rounds: int = 3) -> list[tuple[float | None, float | None]]:
    """(default, best record) seconds per task, timed back to back, alternating, ``rounds``
    times each: the comparison that decides whether a record is used, made under the same
    machine conditions for both -- a default timed once at the start of a long tuning run can
    be off by the load of that moment. The fastest of the rounds is kept, not the mean: load
    only ever adds time, and one burst on a shared machine moved a mean of two rounds by 1.5-2x
    (a Zen 4 VM: a first recheck kept 17 records, a second 5). (None, None) for a task with no
    record."""
    pairs, where = [], []
    for i, t in enumerate(tasks):
        if not database.has_workload(t.workload):
            continue
        sch = database.query_schedule(t.workload, target, t.name)
        if sch is not None:
            pairs.append((default_schedule(_main_func(t.workload), target), sch.mod))
            where.append(i)
    # Round after round: default, record, default, record, ... for every task.
    secs = _measure([m for pair in pairs for m in pair], target, builder, runner, rounds)
    out: list[tuple[float | None, float | None]] = [(None, None)] * len(tasks)
    for k, i in enumerate(where):
        out[i] = (secs[2 * k], secs[2 * k + 1])
    return out


def _measure(mods: list[Any], target, builder, runner, rounds: int = 1) -> list[float | None]:
    """Seconds per call of each scheduled module ({"main": func}), built once and timed in
    ``rounds`` passes over all of them, the fastest pass kept (load only adds time); None where
    it failed to build or run."""
    ms = ms_module()
    built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    device = "cpu" if target.kind.name == "llvm" else target.kind.name  # a device, not a target
    inputs = [ms.runner.RunnerInput(built[i].artifact_path, device,
                                    ms.arg_info.ArgInfo.from_prim_func(_main_func(mods[i])))
              for i in ok]
    timed: list[list[float]] = [[] for _ in mods]
    try:
        for _ in range(rounds):
            for i, future in zip(ok, runner.run(inputs), strict=True):
                r = future.result()
                secs = _mean_secs(r.run_secs) if r.error_msg is None else None
                if secs is not None:
                    timed[i].append(secs)
    finally:
        for i in ok:  # each candidate's own temporary directory (MetaSchedule's remove_build_dir)
            shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    return [min(t) if t else None for t in timed]


def _main_func(workload):
    (func,) = [f for f in workload.functions.values()]
    return func


# ---------------------------------------------------------------------------------------------
# Applying records at build time


@dataclass
class Applied:
    mod: Any  # the prepared module, the chosen tasks scheduled from their records
    applied: list[str]  # tasks whose record was used
    with_records: int  # tasks that have a record at all
    total: int


def apply_records(prepared: Prepared, target, directory: Path,
                  use: Callable[[str, Task], bool]) -> Applied:
    """Schedule a task from its best record where ``use(workload_hash, task)`` says so (the
    record measured faster than the default schedule); every other kernel is left for the rules.
    Only the chosen records go into the database the module is scheduled from."""
    ms = ms_module()
    tvm = load_tvm()
    from tvm import relax

    database = open_database(directory)
    tasks = extract_tasks(prepared, target)
    chosen = ms.database.MemoryDatabase()
    applied, with_records = [], 0
    for t in tasks:
        if not database.has_workload(t.workload):
            continue
        wl = database.commit_workload(t.workload)
        best = database.get_top_k(wl, 1)
        secs = _mean_secs(best[0].run_secs) if best else None
        if secs is None:
            continue
        with_records += 1
        if use(str(wl.as_json()[0]), t):
            r = best[0]
            chosen.commit_tuning_record(ms.database.TuningRecord(
                r.trace, chosen.commit_workload(t.workload), r.run_secs, r.target, r.args_info))
            applied.append(t.name)
    with tvm.target.Target(target), chosen:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(prepared.mod)
    return Applied(mod, applied, with_records, len(tasks))
