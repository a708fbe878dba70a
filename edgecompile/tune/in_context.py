"""tune's in-context check: records timed against the default schedules where they run, inside
whole inferences of the model (TVM 0.27's VM instrumented call by call, on this host only)."""

from __future__ import annotations

from pathlib import Path

from edgecompile.tune.environ import environ
from edgecompile.tune.records import read_defaults, write_defaults

# Whole inferences per build and rounds of the two builds, alternating, in the in-context check.
CONTEXT_RUNS = 20
CONTEXT_ROUNDS = 3


def check_in_context(model, shape, preset, directory: Path, tasks, check, hashes: dict[str, str],
                     threads: int, stream) -> dict[str, dict]:
    """The best records of the tasks in ``check``, timed again where they run: the model built
    with those records and without, each kernel timed inside whole inferences (the VM's calls,
    as scripts/bench_in_context.py), the fastest of CONTEXT_ROUNDS alternating rounds per build.
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
        libs = {kind: lib.path for kind, lib in built.items()}
        rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in libs}
        for _ in range(CONTEXT_ROUNDS):
            for kind, lib in libs.items():
                rounds[kind].append(kernel_times_in_context(lib, shape, threads))
    for t in check:
        entry = stored[hashes[t.name]]
        for kind in libs:
            secs = [r[t.name] for r in rounds[kind] if t.name in r]
            entry[f"context_{kind}_ms"] = round(min(secs) * 1e3, 5) if secs else None
        if entry["context_default_ms"] is None or entry["context_record_ms"] is None:
            stream.write(f"{t.name}: not among the built model's kernels, its record not used\n")
    write_defaults(directory, stored)
    return {t.name: stored.get(hashes[t.name], {}) for t in tasks}


def kernel_times_in_context(lib: Path, shape, threads: int) -> dict[str, float]:
    """Seconds each kernel takes inside an inference (all its calls), the median of CONTEXT_RUNS."""
    import numpy as np

    from edgecompile.backend import runtime
    from edgecompile.pipeline import numerics
    from edgecompile.pipeline.stages.export import INPUT_NAME

    loaded = runtime.load_local(lib, "cpu", INPUT_NAME)
    loaded.configure_threads(threads, "default")
    x = loaded.put(numerics.parity_inputs(shape[0], tuple(shape[1:])))
    for _ in range(3):
        loaded.run_uploaded(x)
    calls = [loaded.call_times(x) for _ in range(CONTEXT_RUNS)]
    out: dict[str, float] = {}
    for i, (name, _) in enumerate(calls[0]):
        out[name] = out.get(name, 0.0) + float(np.median([c[i][1] for c in calls]))
    return out
