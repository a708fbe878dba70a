"""MetaSchedule: the second half of our TVM layer.

Everything that touches ``tvm.s_tir`` (MetaSchedule's home in TVM 0.27) lives here, the way
the rest of the backend package holds the rest. The policy (which records apply to which
target, how the budget is split, resuming) lives in ``edgecompile.tune``.

The module a model is tuned and built from is prepared the same way both times (``prepare``),
so the tasks' structural hashes -- the database's keys -- match between ``tune`` and ``build``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend import compiler
from edgecompile.backend.core import load_tvm
from edgecompile.errors import EdgeCompileError

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"

# How a module is prepared for tuning. Stored with the records (key.json): a build must prepare
# the module exactly the same way for the records' workloads to match.
LAYOUTS = ("NCHW", "NHWC")


def _ms():
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
# The module: ONNX -> fused Relax, weights as parameters (so they can be pre-packed)


@dataclass
class Prepared:
    mod: Any  # fused Relax IRModule, main(input, *weights)
    params: list[Any]  # the weights (tvm tensors), in main's parameter order
    layout: str
    prepack: bool


def prepare(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...], target,
            layout: str = "NCHW", prepack: bool = True) -> Prepared:
    """ONNX -> Relax -> legalised and fused, with the weights kept as ``main``'s parameters.

    With ``prepack``, the PrimFuncs are told which of their buffers are weights
    (AttachAttrLayoutFreeBuffers), so MetaSchedule may pick a weight layout for each kernel;
    ``apply_records`` then transforms the weights once, at build time.
    """
    tvm = load_tvm()
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    if layout not in LAYOUTS:
        raise EdgeCompileError(f"layout must be one of {', '.join(LAYOUTS)}")
    try:
        mod = from_onnx(model, shape_dict={input_name: list(shape)}, keep_params_in_input=True)
    except Exception as e:
        raise EdgeCompileError(f"TVM could not import the ONNX graph: {str(e).splitlines()[0]}") from e
    mod, params = detach_params(mod)
    t = relax.transform
    passes = []
    if layout == "NHWC":
        passes += [t.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}), t.Normalize()]
    passes += [
        t.DecomposeOpsForInference(),
        t.CanonicalizeBindings(),
        t.LegalizeOps(),
        t.AnnotateTIROpPattern(),
        t.FoldConstant(),
        t.FuseOps(),
        t.FuseTIR(),
    ]
    if prepack:
        passes.append(t.AttachAttrLayoutFreeBuffers())
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(passes)(mod)
    return Prepared(mod, list(params.get("main", [])), layout, prepack)


@dataclass(frozen=True)
class Task:
    name: str
    weight: int  # how many times the model calls it
    flop: float
    context: Any = field(compare=False, repr=False)  # TuneContext
    workload: Any = field(compare=False, repr=False)  # the PrimFunc module (database key)


def extract_tasks(prepared: Prepared, target) -> list[Task]:
    ms = _ms()
    tvm = load_tvm()
    extracted = ms.relax_integration.extract_tasks(prepared.mod, target)
    at_runtime = _runtime_functions(prepared.mod)
    tasks = []
    for t in extracted:
        if t.mod.attrs is not None and t.mod.attrs.get("tirx.is_scheduled", False):
            continue
        if t.task_name not in at_runtime:
            continue  # computes on weights only: lifted out of main, run once at build time
        wl = t.dispatched[0]
        try:
            flop = float(tvm.s_tir.analysis.estimate_tir_flops(wl))
        except Exception:  # noqa: BLE001 -- an estimate only
            flop = 0.0
        tasks.append(Task(t.task_name, int(t.weight), flop, t, wl))
    return tasks


def _runtime_functions(mod) -> set[str]:
    """Names of the PrimFuncs main still calls once weight-only computation is lifted out."""
    tvm = load_tvm()
    from tvm import relax

    lifted = relax.transform.LiftTransformParams()(mod)
    names: set[str] = set()

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar):
            names.add(e.name_hint)

    relax.analysis.post_order_visit(lifted["main"], visit)
    return names


# ---------------------------------------------------------------------------------------------
# The database


def open_database(directory: Path):
    ms = _ms()
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
# Builder and runners


def _build_candidate(mod, target, _params):
    """MetaSchedule's default_build without ``import tvm.s_tir.tensor_intrin``.

    That import (tensor intrinsics for every GPU/accelerator) takes 25-60 s in each fresh builder
    worker; with the default 30 s timeout every candidate failed to build and tuning measured
    nothing. fp32 CPU schedules use no tensor intrinsics.
    """
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target)


def _export_candidate(mod, cross_compiler: str | None = None) -> str:
    """A built candidate -> a file the runner loads: a tar of objects here, a shared library
    linked with the target's cross compiler for a remote device."""
    if hasattr(mod, "mod") and not hasattr(mod, "export_library"):
        mod = mod.mod
    path = Path(tempfile.mkdtemp(prefix="ec-ms-")) / ("cand.tar" if cross_compiler is None else "cand.so")
    compiler.export_library(mod, path, cross_compiler)
    return str(path)


def make_builder(workers: int, timeout_s: float = 120.0, cross_compiler: str | None = None):
    ms = _ms()
    return ms.builder.LocalBuilder(
        max_workers=workers, timeout_sec=timeout_s, f_build=_build_candidate,
        f_export=functools.partial(_export_candidate, cross_compiler=cross_compiler),
    )


def make_inprocess_builder(workers: int, cross_compiler: str | None = None):
    """Builds candidates in this process, ``workers`` threads at a time: no worker pool to
    start (and no TVM import in it) for each batch, which dominates small batches."""
    ms = _ms()
    from concurrent.futures import ThreadPoolExecutor

    from tvm.ir.utils import derived_object

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            super().__init__()

        def build(self, build_inputs):
            def one(bi):
                try:
                    rt = _build_candidate(bi.mod, bi.target, None)
                    return ms.builder.BuilderResult(_export_candidate(rt, cross_compiler), None)
                except Exception as e:  # noqa: BLE001 -- a candidate that fails to build
                    return ms.builder.BuilderResult(None, f"build failed: {e}")

            with ThreadPoolExecutor(max(1, workers)) as ex:
                return list(ex.map(one, build_inputs))

    return _InProcessBuilder()


def _evaluator(number: int, repeat: int, min_repeat_ms: int):
    ms = _ms()
    return ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                     enable_cpu_cache_flush=False)


def make_local_runner(number: int = 3, repeat: int = 1, min_repeat_ms: int = 50, timeout_s: float = 60):
    ms = _ms()
    return ms.runner.LocalRunner(timeout_sec=timeout_s,
                                 evaluator_config=_evaluator(number, repeat, min_repeat_ms))


def _connect_direct(_rpc_config, host: str, port: int):
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=0)


def _alloc_arguments(session, device, args_info, alloc_repeat):
    """Candidates' inputs for a remote device: filled there by TVM's random fill when the
    device has it, else filled here and uploaded. A runtime-only TVM install (a board's
    ``pip install apache-tvm`` without the compiler library) does not load the random fill,
    and MetaSchedule's default then fails every measurement."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except AttributeError:
        rng = np.random.default_rng(0)

        def fill(arr):  # values do not matter for timing; integers stay small (indices)
            data = (rng.uniform(-1, 1, arr.shape) if "float" in str(arr.dtype)
                    else rng.integers(0, 2, arr.shape))
            arr.copyfrom(data.astype(str(arr.dtype)))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def make_rpc_runner(tracker: str | None, key: str | None, rpc: str | None, workers: int,
                    number: int = 3, repeat: int = 1, min_repeat_ms: int = 50, timeout_s: float = 120):
    """Candidates measured on remote devices: every device under ``key`` at ``tracker`` in
    parallel (``workers`` of them), or one server reached directly with ``rpc``."""
    ms = _ms()
    from edgecompile.devices.net import parse_hostport

    if tracker:
        host, port = parse_hostport(tracker, "--tracker")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                     session_timeout_sec=int(timeout_s))
        f_session = None
    else:
        host, port = parse_hostport(rpc, "--rpc")
        # No tracker: f_create_session connects directly. RPCConfig still insists on tracker
        # fields (an unset one is looked up in the environment and raises), so it gets the
        # server's own address, which nothing reads.
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                     session_timeout_sec=int(timeout_s))
        f_session = functools.partial(_connect_direct, host=host, port=port)
        workers = 1
    return ms.runner.RPCRunner(rpc_config=config,
                               evaluator_config=_evaluator(number, repeat, min_repeat_ms),
                               f_create_session=f_session, f_alloc_argument=_alloc_arguments,
                               max_workers=max(1, workers))


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


def _progress_callback(states: list[TaskProgress], indices: list[int], on_update: ProgressFn):
    """Reports into ``states`` (every task of the run); MetaSchedule's task ``i`` is ours
    ``indices[i]``, since each budget group is its own scheduler."""
    ms = _ms()
    from tvm.ir.utils import derived_object

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
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

    return _Progress()


def tune_tasks(tasks: list[Task], trials_per_task: list[int], database, target, builder, runner,
               states: list[TaskProgress], on_update: ProgressFn, work_dir: Path,
               trials_per_iter: int = 64, seed: int | None = None, cost_model: str = "xgb",
               search: str = "evolutionary") -> None:
    """Tune each task for its own number of trials (tasks with 0 are skipped), appending every
    measured candidate to ``database`` as it goes."""
    ms = _ms()
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
            callbacks = ms.measure_callback.MeasureCallback.create("default") + [
                _progress_callback(states, idx, on_update)]
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                max_trials_global=n * len(idx), max_trials_per_task=n,
                num_trials_per_iter=min(trials_per_iter, n), builder=builder, runner=runner,
                database=database, measure_callbacks=callbacks, task_scheduler="round-robin",
                cost_model=cost_model,
            )


def _strategy(search: str):
    """"evolutionary": MetaSchedule's search with a smaller population than its default (the
    search itself costs tens of seconds per batch on 2 cores); "replay-trace": random schedules,
    no search (tiny runs, tests)."""
    ms = _ms()
    if search == "replay-trace":
        return "replay-trace"
    return ms.search_strategy.EvolutionarySearch(population_size=256, genetic_num_iters=3)


def quiet_logging() -> None:
    """MetaSchedule logs every iteration's task table at INFO; we print our own progress."""
    import logging

    for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Applying records at build time


@dataclass
class Applied:
    mod: Any  # Relax module ready for tvm.compile (weights bound as constants, pre-packed)
    matched: int
    total: int


def apply_records(prepared: Prepared, target, directory: Path) -> Applied:
    """Schedule every task that has a record; the others keep the default (untuned) code.
    With pre-packing, the weights' layout transforms are split out of the kernels, run once
    here, and the transformed weights bound into ``main`` as constants: the artifact keeps its
    one-input interface."""
    _ms()
    tvm = load_tvm()
    from tvm import relax

    database = open_database(directory)
    tasks = extract_tasks(prepared, target)
    matched = [t.name for t in tasks if database.has_workload(t.workload)
               and database.query_tuning_record(t.workload, target, t.name) is not None]
    t = relax.transform
    with tvm.target.Target(target), database:
        mod = t.MetaScheduleApplyDatabase(enable_warning=False)(prepared.mod)
    if prepared.prepack:
        mod = tvm.transform.Sequential([t.SplitLayoutRewritePreproc(), t.LiftTransformParams()])(mod)
        mod = _bind_transformed_params(mod, prepared.params)
    else:
        mod = _bind_params(mod, prepared.params)
    mod = tvm.transform.Sequential([t.FoldConstant(), t.DeadCodeElimination(["main"])])(mod)
    return Applied(mod, len(matched), len(tasks))


def _bind_params(mod, params):
    from tvm import relax

    main = mod["main"]
    n_in = int(main.attrs["num_input"])
    binding = dict(zip(main.params[n_in:], params, strict=True))
    mod = relax.transform.BindParams("main", binding)(mod)
    return _drop_num_input(mod)


def _drop_num_input(mod):
    main = mod["main"]
    if main.attrs is not None and "num_input" in main.attrs:
        mod["main"] = main.without_attr("num_input")
    return mod


def _bind_transformed_params(mod, params):
    """Run ``main_transform_params`` here (CPU, on this host) and bind its outputs into main."""
    tvm = load_tvm()
    from tvm import relax

    name = "main_transform_params"
    if name not in [gv.name_hint for gv in mod.get_global_vars()]:
        return _bind_params(mod, params)
    tp_mod = relax.transform.DeadCodeElimination([name])(mod)
    tp_mod = tvm.IRModule({gv: f for gv, f in tp_mod.functions.items()})
    exe = tvm.compile(tp_mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    cpu_params = [tvm.runtime.tensor(p.numpy(), tvm.cpu()) for p in params]
    n_args = len(mod[name].params)
    out = vm[name](cpu_params) if n_args == 1 else vm[name](*cpu_params)
    packed = [out[i] for i in range(len(out))]
    main = mod["main"]
    n_in = int(main.attrs["num_input"])
    weights = main.params[n_in:]
    if len(weights) != len(packed):
        raise EdgeCompileError(f"transform_params gave {len(packed)} tensors for {len(weights)} weights")
    binding = {v: tvm.runtime.tensor(p.numpy()) for v, p in zip(weights, packed, strict=True)}
    mod = relax.transform.BindParams("main", binding)(mod)
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return _drop_num_input(mod)

