"""`edgecompile tune`: MetaSchedule tuning records per target, applied by `edgecompile build`.

Records live in the repository, one MetaSchedule JSON database per target preset *and* CPU:
``tuning/<preset>-<mcpu>/`` (e.g. ``tuning/x86-znver3/``), next to a ``key.json`` naming the
resolved target the records were measured on. The ``x86`` preset resolves ``mcpu = "native"``
to this host's CPU, so records tuned on a Zen 3 land in ``x86-znver3`` and a Skylake-AVX512 host
building with ``x86`` looks in ``x86-skylake-avx512`` -- and even a directory of the right name
is only used when its key matches the target exactly.

One database holds every model tuned for that target: tasks are keyed by their structure, so a
layer shape shared by two models is tuned once. Every measured candidate is appended as it is
measured; an interrupted run, started again, counts what each task already has and gives it
only the rest of its budget.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgecompile import tvm_backend
from edgecompile.device import DEFAULT_TIMEOUT_S
from edgecompile.errors import UsageError
from edgecompile.targets import TargetPreset

KEY_FILE = "key.json"
TRIALS_FILE = "trials.json"  # workload hash -> trials measured, kept when records are compacted
# Graph fingerprint -> the model tuned into this database. A build looks its graph up here
# first: a dictionary lookup instead of a task extraction (5-10 s) for the many models that
# were never tuned, which is what lets `build` apply records by default.
MODELS_FILE = "models.json"
KEEP_PER_TASK = 8  # best records kept per task when compacting (the rest only cost repo space)
KEY_VERSION = 1
# How modules are prepared for tuning (must be the same at build time). Pre-packing lets
# MetaSchedule choose each kernel's weight layout; the weights are transformed once at build.
DEFAULT_LAYOUT = "NCHW"
DEFAULT_PREPACK = True


def shipped_root() -> Path:
    """The records shipped with the package: the repo's tuning/, installed as edgecompile.records."""
    from edgecompile import records

    return Path(records.__file__).resolve().parent


def tuning_root() -> Path:
    """Where the per-target databases live: $EDGECOMPILE_TUNING_DIR, else the shipped ones."""
    env = os.environ.get("EDGECOMPILE_TUNING_DIR")
    return Path(env) if env else shipped_root()


# ---------------------------------------------------------------------------------------------
# Keys: which CPU the records are for


def target_key(preset: TargetPreset) -> dict[str, Any]:
    """What must match for records to apply: the resolved target's ISA-defining fields."""
    t = tvm_backend.resolve_target(preset.target)
    return {
        "kind": t.get("kind"),
        "mtriple": t.get("mtriple", ""),
        "mcpu": t.get("mcpu", ""),
        "mattr": sorted(t.get("mattr", []) or []),
        "device": preset.device,
    }


def records_dir(preset: TargetPreset, root: Path | None = None) -> Path:
    key = target_key(preset)
    cpu = key["mcpu"] or key["mtriple"] or "generic"
    return Path(root or tuning_root()) / f"{preset.name}-{cpu}"


def read_key(directory: Path) -> dict[str, Any] | None:
    f = directory / KEY_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_key(directory: Path, preset: TargetPreset, layout: str, prepack: bool, threads: int) -> None:
    data = {
        "version": KEY_VERSION, "preset": preset.name, "target": target_key(preset),
        "layout": layout, "prepack": prepack, "tuned_threads": threads,
        "tvm": tvm_backend.version(),
    }
    old = read_key(directory)
    if old is not None and (old.get("target") != data["target"] or old.get("layout") != layout
                            or old.get("prepack") != prepack):
        raise UsageError(f"{directory} holds records for {old.get('target')} "
                         f"(layout {old.get('layout')}, prepack {old.get('prepack')}); not mixing")
    (directory / KEY_FILE).write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class RecordMatch:
    directory: Path | None
    reason: str  # why records are (not) used
    key: dict[str, Any] | None = None
    searched: Path | None = None  # a database for this CPU that does not hold this model


def find_records(preset: TargetPreset, root: Path | None = None) -> RecordMatch:
    """The database for this preset on this CPU, if there is one whose key matches."""
    d = records_dir(preset, root)
    key = read_key(d)
    if key is None or not (d / "database_tuning_record.json").is_file():
        return RecordMatch(None, f"no records at {d}")
    if key.get("target") != target_key(preset) or key.get("version") != KEY_VERSION:
        return RecordMatch(None, f"records at {d} are for {key.get('target')}, not {target_key(preset)}")
    return RecordMatch(d, "key matches", key)


def graph_fingerprint(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> str:
    """A hash of what the kernels depend on -- operators, attributes, shapes -- and not of the
    weights' values: a seeded init, a checkpoint or retrained weights share their records."""
    import hashlib

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for init in skeleton.graph.initializer:
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(f)
    skeleton.ClearField("producer_version")
    h = hashlib.sha256(skeleton.SerializeToString(deterministic=True))
    h.update(repr(tuple(input_shape)).encode())
    return h.hexdigest()[:16]


def read_models(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((directory / MODELS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _register_model(directory: Path, fingerprint: str, name: str, shape, tasks: int) -> None:
    models = read_models(directory)
    models[fingerprint] = {"model": name, "input_shape": list(shape), "tasks": tasks}
    tmp = directory / (MODELS_FILE + ".tmp")
    tmp.write_text(json.dumps(models, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / MODELS_FILE)


# ---------------------------------------------------------------------------------------------
# The model to tune: the same final ONNX graph `build` compiles


def final_onnx(model: str, input_size: int | None, seed: int = 0,
               weights: Path | None = None) -> tuple[onnx.ModelProto, tuple[int, ...], str]:
    """(final ONNX graph, input shape, model name): build's stages up to BN folding."""
    from edgecompile.build import BuildOptions, ModelSpec
    from edgecompile.models import get_model_info
    from edgecompile.stages.export import export_onnx
    from edgecompile.stages.fold_bn import fold_batchnorm
    from edgecompile.stages.simplify import simplify_onnx
    from edgecompile.weights import checkpoint_meta

    info = get_model_info(model)
    meta = checkpoint_meta(Path(weights)) if weights else {}
    opts = BuildOptions(model, "x86", input_size=input_size, weights=weights, seed=seed)
    spec = ModelSpec.from_options(opts, info, meta)
    folded, _ = fold_batchnorm(simplify_onnx(export_onnx(spec.create(), spec.input_shape)))
    return folded, spec.input_shape, info.name


def tuning_target(preset: TargetPreset, threads: int):
    """The TVM target MetaSchedule tunes for: the preset's, with the core count it runs on."""
    t = dict(preset.target)
    if t.get("kind") == "llvm":
        t.setdefault("num-cores", threads)
    return tvm_backend.make_target(t, preset.host)


# ---------------------------------------------------------------------------------------------
# Tuning


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
    layout: str = DEFAULT_LAYOUT
    prepack: bool = DEFAULT_PREPACK
    seed: int | None = None
    cost_model: str = "xgb"  # "random": no model training (tiny runs, tests)
    max_tasks: int | None = None  # tune only the N costliest tasks (untuned first, then by latency)
    only: tuple[str, ...] | None = None  # tune only the tasks of these names
    compact: bool = True  # keep only the best records per task at the end (repo size)
    search: str = "evolutionary"  # or "replay-trace" (random schedules; tiny runs, tests)
    builder: str = "inprocess"  # or "pool" (MetaSchedule's LocalBuilder with our build function)


@dataclass
class TuneResult:
    directory: Path
    model: str
    tasks: list[dict[str, Any]]
    trials_run: int
    valid: int
    seconds: float
    estimate_ms: float | None  # sum over tasks of weight x best latency
    untuned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "model": self.model, "tasks": self.tasks,
                "trials_run": self.trials_run, "valid": self.valid, "seconds": round(self.seconds, 1),
                "estimate_ms": self.estimate_ms, "untuned": self.untuned}


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


def _costliest(tasks, database, target, n: int):
    """The ``n`` tasks that cost the model the most time: untuned ones first (by FLOPs x calls),
    then tuned ones by best latency x calls -- where more trials can buy the most."""
    from edgecompile import tvm_tuning as tt

    def cost(t):
        _, best = tt.task_records(database, t, target)
        return (1, t.flop * t.weight) if best is None else (0, best * t.weight)

    return sorted(tasks, key=cost, reverse=True)[:n]


def _read_trials(directory: Path) -> dict[str, dict[str, int]]:
    try:
        return json.loads((directory / TRIALS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def trials_done(directory: Path, shash: str, records_now: int) -> int:
    """Trials ever measured for a workload: compaction drops records, not the count."""
    t = _read_trials(directory).get(shash)
    return records_now if t is None else t["trials"] - t["kept"] + records_now


def compact_records(directory: Path, keep: int = KEEP_PER_TASK) -> tuple[int, int]:
    """Keep the ``keep`` fastest records of each workload (MetaSchedule applies the best one);
    remember how many trials each workload had, so a later run still resumes correctly.
    Returns (records before, after). Plain JSON: no TVM needed."""
    from edgecompile.tvm_tuning import RECORD_FILE, WORKLOAD_FILE

    wl_file, rec_file = directory / WORKLOAD_FILE, directory / RECORD_FILE
    if not rec_file.is_file():
        return 0, 0
    shashes = [json.loads(line)[0] for line in wl_file.read_text().splitlines() if line.strip()]
    lines = [line for line in rec_file.read_text().splitlines() if line.strip()]
    by_wl: dict[int, list[tuple[float, str]]] = {}
    for line in lines:
        r = json.loads(line)
        secs = [float(v) for v in (r[1][1] or [])]
        mean = sum(secs) / len(secs) if secs else float("inf")
        by_wl.setdefault(r[0], []).append((mean, line))
    trials = _read_trials(directory)
    kept: list[str] = []
    for idx, recs in sorted(by_wl.items()):
        best = sorted(recs, key=lambda x: x[0])[:keep]
        kept += [line for _, line in best]
        trials[shashes[idx]] = {"trials": trials_done(directory, shashes[idx], len(recs)), "kept": len(best)}
    tmp = rec_file.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(rec_file)
    (directory / TRIALS_FILE).write_text(json.dumps(trials, indent=0, sort_keys=True) + "\n")
    return len(lines), len(kept)


@contextlib.contextmanager
def _environ(**values: str | None):
    """Set the given variables (None: leave as is) for the block, then restore them."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tune(opts: TuneOptions, stream=None) -> TuneResult:
    from edgecompile import tvm_tuning as tt
    from edgecompile.stages.export import INPUT_NAME
    from edgecompile.targets import get_target

    stream = stream or sys.stderr
    preset = get_target(opts.target)
    if preset.device != "cpu":
        raise UsageError("tuning is implemented for CPU presets (llvm targets) only")
    remote = bool(opts.rpc or opts.tracker)
    if opts.tracker and not opts.key:
        raise UsageError("--tracker needs --key")
    if not remote and not tvm_backend.can_run_here(preset.target):
        raise UsageError(f"'{preset.name}' code does not run on this host: tune it on a device "
                         "(--rpc HOST:PORT, or --tracker HOST:PORT --key KEY)")
    if remote:
        _reach_device(opts)
    threads = opts.threads or preset.threads or (os.cpu_count() or 1)
    t0 = time.monotonic()

    model, shape, name = final_onnx(opts.model, opts.input_size)
    target = tuning_target(preset, threads)
    prepared = tt.prepare(model, INPUT_NAME, shape, target, layout=opts.layout, prepack=opts.prepack)
    tasks = tt.extract_tasks(prepared, target)

    directory = records_dir(preset, opts.root)
    database = tt.open_database(directory)
    _write_key(directory, preset, opts.layout, opts.prepack, threads)
    _register_model(directory, graph_fingerprint(model, shape), name, shape, len(tasks))
    if opts.only:
        tasks = [t for t in tasks if t.name in opts.only]
    if opts.max_tasks:
        tasks = _costliest(tasks, database, target, opts.max_tasks)

    per_task = opts.trials_per_task or max(1, math.ceil(opts.trials / max(1, len(tasks))))
    before = [tt.task_records(database, t, target) for t in tasks]
    done = [trials_done(directory, tt.workload_hash(database, t), n) for t, (n, _) in
            zip(tasks, before, strict=True)]
    remaining = [max(0, per_task - n) for n in done]
    done_before = {t.name: best for t, (_, best) in zip(tasks, before, strict=True)}
    states = [tt.TaskProgress(t.name, t.weight, t.flop) for t in tasks]
    reused = sum(1 for n, _ in before if n > 0)
    stream.write(f"{name} -> {preset.name} ({target_key(preset)['mcpu']}): {len(tasks)} tasks, "
                 f"{per_task} trials each; {reused} tasks already have records in {directory}; "
                 f"{sum(remaining)} trials to run\n")

    printer = _Printer(stream, sum(remaining))
    if sum(remaining):
        make = tt.make_inprocess_builder if opts.builder == "inprocess" else tt.make_builder
        builder = make(opts.builder_workers or (os.cpu_count() or 1),
                       cross_compiler=preset.cross_compiler if remote else None)
        if remote:
            workers = 1
            if opts.tracker:
                workers = max(1, tvm_backend.tracker_key_counts(opts.tracker).get(opts.key, 0))
            runner = tt.make_rpc_runner(opts.tracker, opts.key, opts.rpc, workers)
        else:
            runner = tt.make_local_runner()
        # Local candidates run in worker processes whose TVM pool is sized from this variable
        # (TVM's own x86 default is half the CPUs): measure with the threads the records are
        # for, key.json's tuned_threads -- and leave the caller's environment as it was.
        with _environ(TVM_NUM_THREADS=None if remote else str(threads)):
            tt.tune_tasks(tasks, remaining, database, target, builder, runner, states,
                          lambda s, i: printer(s, i, done_before), _log_dir(directory),
                          trials_per_iter=opts.trials_per_iter, seed=opts.seed,
                          cost_model=opts.cost_model, search=opts.search)

    database = tt.open_database(directory)  # re-read: everything appended this run
    rows = []
    for t, st in zip(tasks, states, strict=True):
        n, best = tt.task_records(database, t, target)
        n = trials_done(directory, tt.workload_hash(database, t), n)
        rows.append({
            "task": t.name, "weight": t.weight, "mflop": round(t.flop / 1e6, 2), "trials": n,
            "trials_this_run": st.trials, "valid_this_run": st.valid,
            "best_ms": None if best is None else round(best * 1e3, 4),
            "total_ms": None if best is None else round(best * 1e3 * t.weight, 4),
            "gflops": None if not best else round(t.flop / best / 1e9, 2),
        })
    if opts.compact:
        compact_records(directory)
    untuned = [r["task"] for r in rows if r["best_ms"] is None]
    est = None if untuned else round(sum(r["total_ms"] for r in rows), 3)
    return TuneResult(directory, name, rows, sum(s.trials for s in states),
                      sum(s.valid for s in states), time.monotonic() - t0, est, untuned)


def _reach_device(opts: TuneOptions) -> None:
    """Reach the device once, within ``opts.timeout_s``, before the long work (as verify and
    bench do): nothing listening, a wrong key or a server that does not answer is one line now,
    not every candidate failing later. MetaSchedule's runner then opens its own sessions."""
    from edgecompile.device import DeviceSpec

    spec = DeviceSpec(rpc=opts.rpc, tracker=opts.tracker, key=opts.key, timeout_s=opts.timeout_s)
    session, _ = tvm_backend.open_session(spec)
    del session  # hands the device back (a tracker's lease ends with its session)


def format_tasks(result: TuneResult) -> str:
    from edgecompile.listing import as_table

    rows = sorted(result.tasks, key=lambda r: -(r["total_ms"] or 0))
    total = sum(r["total_ms"] or 0 for r in rows)
    for r in rows:
        r["share"] = f"{100 * (r['total_ms'] or 0) / total:.1f}%" if total else "-"
    return (as_table(rows) + f"\n{result.trials_run} trials this run ({result.valid} valid) in "
            f"{result.seconds:.0f}s; tasks' best latencies x weights sum to "
            f"{result.estimate_ms if result.estimate_ms is not None else 'n/a (untuned tasks)'} ms; "
            f"records: {result.directory}")


# ---------------------------------------------------------------------------------------------
# Build integration


def records_for_model(model: onnx.ModelProto, input_shape: tuple[int, ...], preset: TargetPreset,
                      root: Path | None = None) -> RecordMatch:
    """The records a build of this graph uses: this preset + CPU's database, when the graph was
    tuned into it. No TVM: a fingerprint looked up in models.json."""
    if preset.device != "cpu" or preset.target.get("kind") != "llvm":
        return RecordMatch(None, "tuning applies to CPU presets only")
    match = find_records(preset, root)
    if match.directory is None:
        return match
    if graph_fingerprint(model, input_shape) not in read_models(match.directory):
        return RecordMatch(None, "this model graph (at this input size) was not tuned for this CPU",
                           searched=match.directory)
    return match


def compile_with_records(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...],
                         preset: TargetPreset, target, root: Path | None = None):
    """(Relax module to compile, manifest "tuning" section), or (None, section) when no records
    apply and the build should take its ordinary path."""
    match = records_for_model(model, input_shape, preset, root)
    if match.directory is None:
        section = {"records": None, "reason": match.reason}
        if match.searched is not None:
            section["searched"] = _display_path(match.searched)
        return None, section
    from edgecompile import tvm_tuning as tt

    key = match.key or {}
    ttarget = tuning_target(preset, int(key.get("tuned_threads") or os.cpu_count() or 1))
    prepared = tt.prepare(model, input_name, input_shape, ttarget,
                          layout=key.get("layout", DEFAULT_LAYOUT), prepack=bool(key.get("prepack")))
    applied = tt.apply_records(prepared, ttarget, match.directory)
    section = {
        "records": _display_path(match.directory),
        "database_sha256": database_digest(match.directory),
        "key": key.get("target"), "layout": prepared.layout, "prepack": prepared.prepack,
        "tasks_matched": applied.matched, "tasks_total": applied.total,
    }
    if applied.matched == 0:
        section["reason"] = "no task of this model has records"
        return None, section | {"records": None, "searched": _display_path(match.directory)}
    return applied.mod, section


def database_digest(directory: Path) -> str:
    from edgecompile.tvm_tuning import RECORD_FILE
    from edgecompile.weights import file_sha256

    return file_sha256(directory / RECORD_FILE)


def records_unchanged(tuning_section: dict[str, Any], model: onnx.ModelProto,
                      input_shape: tuple[int, ...], preset: TargetPreset) -> bool:
    """Would a build today use the same records an artifact was built with? (No TVM: the
    artifact's final graph is fingerprinted and looked up, the database hashed.)"""
    match = records_for_model(model, input_shape, preset)
    if match.directory is None:
        return tuning_section.get("records") is None
    return (tuning_section.get("records") == _display_path(match.directory)
            and tuning_section.get("database_sha256") == database_digest(match.directory))


def _display_path(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(shipped_root().parent))
    except ValueError:
        return str(p)
