"""TVM vs ONNX Runtime vs PyTorch, in one process, interleaved, with the same thread count.

Interleaving (a round of each engine in turn, repeated) spreads any slowdown of the machine
over all engines alike, so the ratios stay meaningful on a busy machine; each round starts after
a pause (SETTLE_S), so that no engine is timed beside the last one's spinning threads. Every
engine is timed the same way (wall clock around one call from Python), and their outputs must
agree before anything is timed: a fast wrong answer is not a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgecompile.backend import runtime
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.listing import as_table
from edgecompile.pipeline import numerics, ort
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.spec import ModelSpec

ENGINES = ("tvm", "onnxruntime", "torch")
ROUNDS = 15
RUNS_PER_ROUND = 10
# An engine's worker threads keep spinning for a while after its last call before they sleep:
# ONNX Runtime's for tens of milliseconds, libgomp's (PyTorch) for some. Where the machine has no
# more cores than the threads asked for, the next engine's calls share the cores with them: on a
# 2-core VM, squeezenet1_1 at 2 threads, TVM right after ONNX Runtime took 20 ms for its first
# call and 9.1 ms for the next five, 6.9 and 6.0 ms after a 100 ms pause (TVM and ONNX Runtime
# after PyTorch alike). So each engine's round starts after a pause and one untimed call,
# whichever engine came before.
SETTLE_S = 0.15


def _tvm_engine(a: Artifact, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    model = runtime.load_local(a.library, "cpu", a.manifest["input"]["name"])
    model.configure_threads(threads, "default")
    dev_x = model.put(x)

    return lambda: model.run_uploaded(dev_x)


def _ort_engine(a: Artifact, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    sess = ort.session(str(a.onnx), threads=threads)
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})[0]


def _torch_engine(a: Artifact, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    import torch

    torch.set_num_threads(threads)
    model = ModelSpec(**a.manifest["spec"]).create().eval()
    tx = torch.from_numpy(x)

    def run() -> np.ndarray:
        with torch.inference_mode():
            return model(tx).numpy()

    return run


def timed_round(run: Callable[[], Any], runs: int) -> list[float]:
    """Seconds of ``runs`` calls of ``run``, after the pause (SETTLE_S) and one untimed call that
    let the engine timed before it stop spinning on the cores."""
    time.sleep(SETTLE_S)
    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times


_FACTORIES = {"tvm": _tvm_engine, "onnxruntime": _ort_engine, "torch": _torch_engine}


def compare_engines(a: Artifact, others: list[str], threads: int, rounds: int = ROUNDS,
                    runs_per_round: int = RUNS_PER_ROUND) -> dict[str, Any]:
    from edgecompile.measure.load import runs_on_this_host

    unknown = [e for e in others if e not in ENGINES]
    if unknown:
        raise UsageError(f"--compare: unknown engine {unknown[0]!r} (known: {', '.join(ENGINES[1:])})")
    if not runs_on_this_host(a) or a.manifest["target"]["device"] != "cpu":
        raise UsageError("--compare runs the engines side by side here: it needs an artifact for this CPU")
    engines = ["tvm"] + [e for e in others if e != "tvm"]
    x = numerics.parity_inputs(1, tuple(a.manifest["input"]["shape"])[1:])
    runners = {e: _FACTORIES[e](a, x, threads) for e in engines}

    reference = runners["tvm"]()
    agreement = {}
    for e in engines[1:]:
        cmp = numerics.compare(runners[e](), reference)
        if not cmp.ok:
            raise EdgeCompileError(f"{e} and TVM disagree, nothing timed: {cmp}")
        agreement[e] = cmp.max_abs_diff

    samples: dict[str, list[float]] = {e: [] for e in engines}
    for e in engines:  # warm-up, then interleaved rounds
        for _ in range(3):
            runners[e]()
    for _ in range(rounds):
        for e in engines:
            samples[e].extend(timed_round(runners[e], runs_per_round))

    macs = a.manifest["model"]["macs_counted"]
    medians = {e: float(np.median(samples[e])) * 1e3 for e in engines}
    # The quietest round: each engine's median within a round, the smallest over rounds. On a
    # shared machine a busy stretch slows TVM's statically split parallel loops more than ONNX
    # Runtime's dynamically scheduled ones (seen: TVM 2.6 -> 4.9 ms while ORT stayed at 1.6);
    # the best round is what the code does when it has the cores to itself, the median what
    # this machine gave it. Both are reported, ratios for each.
    per_round = {e: np.median(np.reshape(samples[e], (rounds, runs_per_round)), axis=1) * 1e3
                 for e in engines}
    best = {e: float(per_round[e].min()) for e in engines}
    return {
        "threads": threads,
        "runs_each": rounds * runs_per_round,
        "engines": {
            e: {"median_ms": medians[e], "p90_ms": float(np.percentile(samples[e], 90)) * 1e3,
                "best_round_ms": best[e],
                "gflops": 2 * macs / (medians[e] * 1e-3) / 1e9,
                "tvm_ratio": medians["tvm"] / medians[e],
                "tvm_ratio_best_round": best["tvm"] / best[e],
                "max_abs_diff_vs_tvm": agreement.get(e, 0.0)}
            for e in engines
        },
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [{"engine": e, "median_ms": round(v["median_ms"], 3), "p90_ms": round(v["p90_ms"], 3),
             "best_round_ms": round(v["best_round_ms"], 3), "GFLOP/s": round(v["gflops"], 2),
             "TVM/engine": round(v["tvm_ratio"], 3),
             "TVM/engine best round": round(v["tvm_ratio_best_round"], 3)}
            for e, v in result["engines"].items()]
    return (f"side by side, {result['threads']} threads, {result['runs_each']} runs each, "
            f"interleaved:\n" + as_table(rows))
