"""tune's in-context check: records timed against the default schedules where they run, inside
whole inferences of the model (TVM 0.27's VM instrumented call by call, on this host only)."""

from __future__ import annotations

from pathlib import Path

from edgecompile.tune.environ import environ
from edgecompile.tune.records import read_defaults, write_defaults

# Instrumented inferences per build in the in-context check, the two builds alternating
# inference by inference.
CONTEXT_RUNS = 40


def check_in_context(model, shape, preset, directory: Path, tasks, check, hashes: dict[str, str],
                     threads: int, stream) -> dict[str, dict]:
    """The best records of the tasks in ``check``, timed again where they run: the model built
    with those records and without, each kernel timed inside whole inferences (the VM's calls,
    as scripts/bench_in_context.py), the median of CONTEXT_RUNS per build, alternating.
    Each one's entry in defaults.json gets both figures, and entry_wins decides by them. (Alone
    and hot, a record measures against a default whose inputs and weights are in cache; inside
    an inference they are not, and our defaults are built for that.)"""
    import tempfile

    from edgecompile.pipeline.stages.compile import compile_onnx
    from edgecompile.pipeline.stages.export import INPUT_NAME

    stored = read_defaults(directory)
    stream.write(f"timing {len(check)} records against the defaults inside whole inferences\n")
    # The records build reads this tuning run's database (a --records-dir root, or the shipped
    # one), whatever EDGECOMPILE_TUNING_DIR says.
    with tempfile.TemporaryDirectory(prefix="edgecompile-context-") as tmp, \
            environ(EDGECOMPILE_TUNING_DIR=str(directory.parent)):
        names = {t.name for t in check}
        built = {kind: compile_onnx(model, INPUT_NAME, shape, preset, Path(tmp) / f"{kind}.so",
                                    records=mode, record_tasks=names if mode == "exact" else None)
                 for kind, mode in (("default", "none"), ("record", "exact"))}
        applied = built["record"].tuning.get("tasks_tuned", 0)
        stream.write(f"the records build uses {applied} records\n")
        times = kernel_times_in_context({kind: lib.path for kind, lib in built.items()}, shape,
                                        threads)
    for t in check:
        entry = stored[hashes[t.name]]
        for kind, kernels in times.items():
            secs = kernels.get(t.name)
            entry[f"context_{kind}_ms"] = None if secs is None else round(secs * 1e3, 5)
        if entry["context_default_ms"] is None or entry["context_record_ms"] is None:
            stream.write(f"{t.name}: not among the built model's kernels, its record not used\n")
    write_defaults(directory, stored)
    return {t.name: stored.get(hashes[t.name], {}) for t in tasks}


def kernel_times_in_context(libs: dict[str, Path], shape, threads: int) -> dict[str, dict[str, float]]:
    """Seconds each kernel of each build takes inside an inference (all its calls): the median
    of CONTEXT_RUNS instrumented inferences, the builds taking turns inference by inference
    (each one warmed by an inference of its own first), so that a slow minute of a shared
    machine falls on both. (Blocks of 20 inferences per build, the fastest of three kept, put
    SqueezeNet's classifier at 1.26 ms by default and 1.07 with its record in one check, and
    at 0.68 / 0.68 in a 40-round interleaved run of the same two builds.)"""
    import numpy as np

    from edgecompile.backend import runtime
    from edgecompile.pipeline import numerics
    from edgecompile.pipeline.stages.export import INPUT_NAME

    loaded = {}
    for kind, lib in libs.items():
        model = runtime.load_local(lib, "cpu", INPUT_NAME)
        model.configure_threads(threads, "default")
        x = model.put(numerics.parity_inputs(shape[0], tuple(shape[1:])))
        for _ in range(3):
            model.run_uploaded(x)
        loaded[kind] = (model, x)
    per_run: dict[str, list[dict[str, float]]] = {kind: [] for kind in libs}
    kinds = list(libs)
    for r in range(CONTEXT_RUNS):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            model, x = loaded[kind]
            model.run_uploaded(x)
            kernels: dict[str, float] = {}
            for name, secs in model.call_times(x):
                kernels[name] = kernels.get(name, 0.0) + secs
            per_run[kind].append(kernels)
    return {kind: {name: float(np.median([run[name] for run in runs])) for name in runs[0]}
            for kind, runs in per_run.items()}
