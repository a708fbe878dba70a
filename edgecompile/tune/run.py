"""`edgecompile tune`: MetaSchedule over a model's tasks, measured here or on a device over RPC,
appended to the records store (records.py) as it goes, so an interrupted run resumes."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.backend import compiler, core, rpc_client
from edgecompile.devices import tracker
from edgecompile.devices.spec import DEFAULT_TIMEOUT_S, DeviceSpec
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.tune.environ import environ
from edgecompile.tune.in_context import check_in_context
from edgecompile.tune.records import (
    compact_records,
    entry_wins,
    finish_compaction,
    graph_fingerprint,
    is_gpu,
    read_defaults,
    record_wins,
    records_dir,
    register_model,
    target_key,
    trials_done,
    tuning_target,
    write_defaults,
    write_key,
)

# `--search rules`: a kernel's rule schedules timed at most besides its default (PointwiseFVec
# offers up to 2 core splits x 4 tiles x 2 K walks).
RULE_VARIANTS = 16


@dataclass
class TuneOptions:
    model: str
    target: str
    trials: int = 2000  # total, over all tasks (each gets an equal share, at least one batch)
    trials_per_task: int | None = None  # overrides the share
    input_size: int | None = None
    rpc: str | None = None  # one rpc_server HOST:PORT
    tracker: str | None = None  # or a tracker, with key
    key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # --timeout: to reach the device (connect, or lease one under key)
    threads: int | None = None  # cores the device runs with (default: this host's / preset's)
    trials_per_iter: int = 64
    builder_workers: int | None = None
    root: Path | None = None  # records root (default: tuning_root())
    seed: int | None = None
    cost_model: str = "xgb"  # "random": no model training (tiny runs, tests)
    max_tasks: int | None = None  # tune only the N tasks costing the model the most time
    only: tuple[str, ...] | None = None  # tune only the tasks of these names
    compact: bool = True  # keep only the best records per task at the end (repo size)
    # or "replay-trace" (random schedules; tiny runs, tests), or "rules": our rules' own ranked
    # alternatives (tiles, K chunks, core split), RULE_VARIANTS per task at most; CPUs only
    search: str = "evolutionary"
    builder: str = "inprocess"  # or "pool" (MetaSchedule's LocalBuilder with our build function)
    # No search: time the default schedules and the records already stored against each other
    # again (after an upgrade changed the default schedules, builds skip the records until then).
    recheck: bool = False
    # GPU presets: candidates' host side built for this machine, not the board (a GPU here,
    # e.g. pocl: how the tests tune the mali and adreno kernels).
    native_host: bool = False


@dataclass
class TuneResult:
    directory: Path
    model: str
    tasks: list[dict[str, Any]]
    trials_run: int
    valid: int
    seconds: float
    estimate_ms: float | None  # sum over tasks of weight x latency (the record where it wins)
    default_ms: float | None = None  # the same sum with the default schedules alone
    untuned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "model": self.model, "tasks": self.tasks,
                "trials_run": self.trials_run, "valid": self.valid, "seconds": round(self.seconds, 1),
                "estimate_ms": self.estimate_ms, "default_ms": self.default_ms,
                "untuned": self.untuned}


class _Printer:
    def __init__(self, stream, n_total: int, every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.last = 0.0
        self.every_s = every_s
        self.n_total = n_total

    def __call__(self, states, task_id, done_before: dict[str, float | None]) -> None:
        now = time.monotonic()
        st = states[task_id]
        done = sum(s.trials for s in states)
        est = _estimate_ms(states, done_before)
        best = f"{st.best_s * 1e3:.4f} ms" if st.best_s is not None else "none valid"
        self.stream.write(
            f"[{now - self.t0:6.0f}s] {done}/{self.n_total} trials | {st.name}: {st.trials} trials, "
            f"{st.valid} valid, best {best} x{st.weight} | estimate {est:.2f} ms\n"
            if est is not None else
            f"[{now - self.t0:6.0f}s] {done}/{self.n_total} trials | {st.name}: {st.trials} trials, "
            f"{st.valid} valid, best {best}\n")
        self.stream.flush()


def _log_dir(directory: Path) -> Path:
    """MetaSchedule's per-task logs: outside the repository (only the database is committed)."""
    import hashlib
    import tempfile

    tag = hashlib.sha1(str(Path(directory).resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "edgecompile-tuning-logs" / f"{directory.name}-{tag}"


def _estimate_ms(states, previous: dict[str, float | None]) -> float | None:
    total = 0.0
    for s in states:
        cands = [v for v in (s.best_s, previous.get(s.name)) if v is not None]
        if not cands:
            return None
        total += min(cands) * s.weight
    return total * 1e3


def _costliest(tasks, database, target, defaults: dict[str, float | None], n: int):
    """The ``n`` tasks that cost the model the most time as it would be built today (the
    default schedule, or the record where it wins, x calls): where more trials can buy the most."""
    from edgecompile.backend import metaschedule as tt

    def cost(t):
        _, best_s = tt.task_records(database, t, target)
        now = defaults.get(t.name)  # ms
        best = None if best_s is None else best_s * 1e3
        if best is not None and (now is None or record_wins(now, best)):
            now = best
        return (now or 0.0) * t.weight

    return sorted(tasks, key=cost, reverse=True)[:n]


def tune(opts: TuneOptions, stream=None) -> TuneResult:
    from edgecompile.backend import metaschedule as tt
    from edgecompile.pipeline.build import final_graph
    from edgecompile.pipeline.spec import BuildOptions, effective_preset
    from edgecompile.pipeline.stages.export import INPUT_NAME

    stream = stream or sys.stderr
    build_opts = BuildOptions(opts.model, opts.target, input_size=opts.input_size,
                              native_host=opts.native_host)
    preset = effective_preset(build_opts)  # --native-host: the host side for this machine
    gpu = is_gpu(preset)
    remote = bool(opts.rpc or opts.tracker)
    if opts.tracker and not opts.key:
        raise UsageError("--tracker needs --key")
    if gpu and not remote:
        raise UsageError(f"'{preset.name}' kernels are timed on the GPU: give the device, --rpc "
                         "HOST:PORT of an RPC server started with the OpenCL plug-in, or --tracker "
                         "HOST:PORT --key KEY")
    if not remote and not compiler.can_run_here(preset.target):
        raise UsageError(f"'{preset.name}' code does not run on this host: tune it on a device "
                         "(--rpc HOST:PORT, or --tracker HOST:PORT --key KEY)")
    if gpu and opts.search == "rules":
        raise UsageError(f"'{preset.name}' kernels are scheduled by dlight's GPU rules: "
                         "--search rules is for CPU targets")
    device = _reach_device(opts, gpu) if remote else None
    threads = None if gpu else opts.threads or preset.threads or (os.cpu_count() or 1)
    t0 = time.monotonic()

    g = final_graph(build_opts)
    model, shape, name = g.folded, g.spec.input_shape, g.info.name
    target = tuning_target(preset, threads, device)
    prepared = tt.prepare(model, INPUT_NAME, shape, target)
    tasks = tt.extract_tasks(prepared, target)

    where = opts.rpc or f"key '{opts.key}' at {opts.tracker}"
    if gpu:
        # One database per GPU and driver class: a schedule's speed is the device's.
        directory = records_dir(preset, opts.root, f"{device['name']} {device['driver'].split()[0]}")
        measured_on = f"{device['name']} (driver {device['driver']}), RPC device {where}"
    else:
        directory = records_dir(preset, opts.root)
        mcpu = target_key(preset)["mcpu"]
        measured_on = (f"{core.host_cpu_model()} ({mcpu})" if not remote
                       else f"RPC device {opts.key or opts.rpc} ({mcpu})")
    finish_compaction(directory)  # a previous run interrupted mid-compaction
    database = tt.open_database(directory)
    write_key(directory, preset, tt.layout_of(target), threads, measured_on, device,
              caches=None if gpu or remote else core.host_caches())
    register_model(directory, graph_fingerprint(model, shape), name, shape, len(tasks))
    if opts.only:
        tasks = [t for t in tasks if t.name in opts.only]

    builder, runner = _measurers(opts, preset, remote)
    # Defaults (and records against them) are timed as a build compiles them: for the preset's
    # own target, not the tuning one; each task's entry in defaults.json is its workload hash.
    build_target = compiler.make_target(preset.target, preset.host)
    hashes = {t.name: tt.workload_hash(database, t) for t in tasks}
    # Which default schedule each task has now: what its timings in defaults.json are against.
    ids = {t.name: tt.default_schedule_id(t, build_target) for t in tasks}
    # Local candidates run in worker processes whose TVM pool is sized from this variable
    # (TVM's own x86 default is half the CPUs): measure with the threads the records are for,
    # key.json's tuned_threads -- and leave the caller's environment as it was.
    with environ(TVM_NUM_THREADS=None if remote else str(threads)):
        defaults = _default_latencies(tasks, hashes, ids, directory, build_target, builder, runner,
                                      stream)
        if opts.recheck:
            tasks = [t for t in tasks if tt.task_records(database, t, target)[0] > 0]
        elif opts.max_tasks:
            tasks = _costliest(tasks, database, target, defaults, opts.max_tasks)

        per_task = opts.trials_per_task or (
            RULE_VARIANTS if opts.search == "rules" else max(1, math.ceil(opts.trials / max(1, len(tasks)))))
        before = [tt.task_records(database, t, target) for t in tasks]
        done = [trials_done(directory, hashes[t.name], n) for t, (n, _) in
                zip(tasks, before, strict=True)]
        remaining = [0 if opts.recheck else max(0, per_task - n) for n in done]
        done_before = {t.name: best for t, (_, best) in zip(tasks, before, strict=True)}
        states = [tt.TaskProgress(t.name, t.weight, t.flop) for t in tasks]
        reused = sum(1 for n, _ in before if n > 0)
        # A rules search times what the rules offer, often fewer variants than its budget.
        count = f"up to {per_task} variants" if opts.search == "rules" else f"{per_task} trials"
        stream.write(f"{name} -> {preset.name} ({device['name'] if gpu else target_key(preset)['mcpu']}): "
                     f"{len(tasks)} tasks, "
                     f"{count} each; {reused} tasks already have records in {directory}; "
                     f"{'at most ' if opts.search == 'rules' else ''}{sum(remaining)} trials to run\n")
        printer = _Printer(stream, sum(remaining))
        if sum(remaining):
            guard = _DeviceGuard(opts, where, directory) if remote else None
            try:
                if opts.search == "rules":
                    tt.tune_rule_choices(tasks, done, per_task, database, target, build_target,
                                         builder, runner, states,
                                         lambda s, i: printer(s, i, done_before))
                else:
                    tt.tune_tasks(tasks, remaining, database, target, builder, runner, states,
                                  lambda s, i: printer(s, i, done_before), _log_dir(directory),
                                  trials_per_iter=opts.trials_per_iter, seed=opts.seed,
                                  cost_model=opts.cost_model, search=opts.search,
                                  on_batch=guard)
            except Exception:
                if guard is not None and guard.lost:
                    raise EdgeCompileError(guard.lost) from None
                raise
        database = tt.open_database(directory)  # re-read: everything appended this run
        decided = _decide(tasks, hashes, ids, database, directory, build_target, builder, runner,
                          stream)
        # Every record is checked inside whole inferences, which decides (entry_wins), not only
        # the head-to-head's winners: the rules' own variants are built for an inference's cold
        # caches and can lose alone and hot while winning there. One build pair either way.
        check = [t for t in tasks if decided[t.name].get("record_ms") is not None]
        if not remote and check:
            try:
                decided = check_in_context(model, shape, preset, directory, tasks, check, hashes,
                                           threads, stream)
            except EdgeCompileError as e:  # more threads than this process's TVM pool has
                stream.write(f"records not timed inside whole inferences ({e}): the head-to-head "
                             "decides\n")

    rows = [_task_row(t, st, database, directory, target, hashes[t.name], decided[t.name])
            for t, st in zip(tasks, states, strict=True)]
    if opts.compact:
        compact_records(directory)
    untuned = [r["task"] for r in rows if r["best_ms"] is None]
    est = round(sum(r["total_ms"] for r in rows if r["total_ms"] is not None), 3)
    base = round(sum(r["default_total_ms"] for r in rows if r["default_total_ms"] is not None), 3)
    return TuneResult(directory, name, rows, sum(s.trials for s in states),
                      sum(s.valid for s in states), time.monotonic() - t0, est, default_ms=base,
                      untuned=untuned)


def _measurers(opts: TuneOptions, preset, remote: bool):
    """MetaSchedule's builder and runner: candidates built here, timed here or on the device."""
    from edgecompile.backend import ms_measure

    make = ms_measure.make_inprocess_builder if opts.builder == "inprocess" else ms_measure.make_builder
    builder = make(opts.builder_workers or (os.cpu_count() or 1),
                   cross_compiler=preset.cross_compiler if remote else None)
    if not remote:
        return builder, ms_measure.make_local_runner()
    workers = 1
    if opts.tracker:
        workers = max(1, tracker.key_counts(opts.tracker).get(opts.key, 0))
    return builder, ms_measure.make_rpc_runner(opts.tracker, opts.key, opts.rpc, workers)


def _default_latencies(tasks, hashes: dict[str, str], ids: dict[str, str], directory: Path,
                       build_target, builder, runner, stream) -> dict[str, float | None]:
    """Task name -> the default schedule's latency (ms) on the tuning device: what ranks the
    tasks for --focus. Measured once per workload, kept in defaults.json."""
    from edgecompile.backend import metaschedule as tt

    stored = read_defaults(directory)
    # Timed again where the rules now give the task another schedule than the one timed then.
    missing = [t for t in tasks
               if stored.get(hashes[t.name], {}).get("default_schedule") != ids[t.name]]
    if missing:
        stream.write(f"timing the default schedules of {len(missing)} tasks\n")
        for t, secs in zip(missing, tt.measure_defaults(missing, build_target, builder, runner),
                           strict=True):
            if secs is not None:
                stored[hashes[t.name]] = {"task": t.name, "default_ms": round(secs * 1e3, 5),
                                          "default_schedule": ids[t.name]}
        write_defaults(directory, stored)
    return {t.name: stored.get(hashes[t.name], {}).get("default_ms") for t in tasks}


def _decide(tasks, hashes: dict[str, str], ids: dict[str, str], database, directory: Path,
            build_target, builder, runner, stream) -> dict[str, dict]:
    """Each task's default schedule and best record timed head to head (backend.metaschedule.
    head_to_head), kept in defaults.json: what a build reads to use a record or not."""
    from edgecompile.backend import metaschedule as tt

    stored = read_defaults(directory)
    stream.write(f"timing {len(tasks)} tasks' default schedules against their best records\n")
    for t, (d, r) in zip(tasks, tt.head_to_head(tasks, database, build_target, builder, runner),
                         strict=True):
        if d is not None and r is not None:
            stored[hashes[t.name]] = {"task": t.name, "default_ms": round(d * 1e3, 5),
                                      "record_ms": round(r * 1e3, 5),
                                      "default_schedule": ids[t.name]}
    write_defaults(directory, stored)
    return {t.name: stored.get(hashes[t.name], {}) for t in tasks}


def _task_row(t, st, database, directory: Path, target, shash: str,
              decided: dict[str, Any]) -> dict[str, Any]:
    from edgecompile.backend import metaschedule as tt

    n, best = tt.task_records(database, t, target)
    n = trials_done(directory, shash, n)
    best_ms = None if best is None else round(best * 1e3, 4)
    default_ms, record_ms = decided.get("default_ms"), decided.get("record_ms")
    wins = entry_wins(decided)
    used_ms = record_ms if wins else default_ms
    # All calls of the kernel: inside whole inferences where tune timed it there (what decided),
    # else calls x the head-to-head's figure.
    in_default, in_record = decided.get("context_default_ms"), decided.get("context_record_ms")
    if in_default is not None and in_record is not None:
        default_total, total = in_default, in_record if wins else in_default
    else:
        default_total = None if default_ms is None else default_ms * t.weight
        total = None if used_ms is None else used_ms * t.weight
    return {
        "task": t.name, "weight": t.weight, "mflop": round(t.flop / 1e6, 2), "trials": n,
        "trials_this_run": st.trials, "valid_this_run": st.valid, "best_ms": best_ms,
        "default_ms": default_ms, "record_ms": record_ms,
        "speedup": None if not (record_ms and default_ms) else round(default_ms / record_ms, 2),
        "in_inference_default_ms": in_default, "in_inference_record_ms": in_record,
        "record_used": wins,
        "default_total_ms": None if default_total is None else round(default_total, 4),
        "total_ms": None if total is None else round(total, 4),
        "gflops": None if not total else round(t.flop * t.weight / total / 1e6, 2),
    }


def _reach_device(opts: TuneOptions, gpu: bool = False, timeout_s: float | None = None):
    """Reach the device once, within ``opts.timeout_s``, before the long work (as verify and
    bench do): nothing listening, a wrong key or a server that does not answer is one line now,
    not every candidate failing later. MetaSchedule's runner then opens its own sessions.
    For a GPU preset: the device's OpenCL GPU (name, driver, limits), or one line saying why
    there is none (a server started without the OpenCL plug-in, a board without a driver)."""
    spec = DeviceSpec(rpc=opts.rpc, tracker=opts.tracker, key=opts.key,
                      timeout_s=timeout_s or opts.timeout_s)
    session, server = rpc_client.open_session(spec)
    try:
        if gpu:
            from edgecompile.backend.opencl import remote_device

            return remote_device(session, server)
        return None
    finally:
        del session  # hands the device back (a tracker's lease ends with its session)


class _DeviceGuard:
    """Called with every measured batch before it is recorded: a batch in which no candidate
    ran is checked against the device, and a device that no longer answers stops the run
    with one line. That batch is not recorded (the failures were the device's, not the
    candidates'), so a rerun measures it again; everything measured before is kept."""

    PROBE_TIMEOUT_S = 10.0

    def __init__(self, opts: TuneOptions, where: str, directory: Path):
        self.opts, self.where, self.directory = opts, where, directory
        self.lost: str | None = None

    def __call__(self, builder_results, runner_results) -> None:
        ran = [r for b, r in zip(builder_results, runner_results, strict=True)
               if b.error_msg is None]
        if not ran or any(r.error_msg is None for r in ran):
            return
        try:
            _reach_device(self.opts, timeout_s=self.PROBE_TIMEOUT_S)
        except EdgeCompileError as e:
            self.lost = (f"the device ({self.where}) stopped answering during tuning ({e}); what "
                         f"was measured before is kept in {self.directory}: run the same command "
                         "again to resume")
            raise


def format_tasks(result: TuneResult) -> str:
    from edgecompile.listing import as_table

    rows = sorted(result.tasks, key=lambda r: -(r["total_ms"] or 0))
    total = sum(r["total_ms"] or 0 for r in rows)
    for r in rows:
        r["share"] = f"{100 * (r['total_ms'] or 0) / total:.1f}%" if total else "-"
    used = sum(1 for r in rows if r["record_used"])
    return (as_table(rows) + f"\n{result.trials_run} trials this run ({result.valid} valid) in "
            f"{result.seconds:.0f}s; {used} of {len(rows)} tasks use their record (faster than "
            f"the default schedule); these kernels' time, all calls (inside whole inferences where "
            f"timed there): {result.default_ms} ms with the default schedules, "
            f"{result.estimate_ms} ms with the records; records: {result.directory}")


