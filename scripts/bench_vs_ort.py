"""TVM vs ONNX Runtime vs PyTorch, per model, in one process, interleaved.

    python scripts/bench_vs_ort.py [MODEL ...] [--all] [--target x86] [--threads 2] [--input-size N]

Builds each model (default schedules, plus this CPU's tuning records where they match;
--no-records for the default schedules alone), runs edgecompile.measure.compare.compare_engines
(interleaved rounds, same thread count for every engine), prints a table and one JSON line per
model (also appended to --results) naming the CPU and the schedules. Default: the seven
flagships; --all: every registered variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecompile.listing import as_table
from edgecompile.measure import compare
from edgecompile.models import FLAGSHIPS, list_models
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help=f"default: the flagships ({', '.join(FLAGSHIPS)})")
    p.add_argument("--all", action="store_true", help="every registered variant")
    p.add_argument("--target", default="x86")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input-size", type=int)
    p.add_argument("--rounds", type=int, default=compare.ROUNDS)
    p.add_argument("--runs-per-round", type=int, default=compare.RUNS_PER_ROUND)
    p.add_argument("--records", choices=["exact", "isa", "none"], default="isa",
                   help="tuning records for the builds (default isa; none: default schedules only)")
    p.add_argument("--no-records", action="store_true", help="the same as --records none")
    p.add_argument("--engines", default="onnxruntime,torch", help="compared with TVM (default: both)")
    p.add_argument("-o", "--output", type=Path, default=Path("build/bench_vs_ort"))
    p.add_argument("--results", type=Path, help="append the JSON lines here too")
    p.add_argument("--profile", action="store_true",
                   help="also time every TVM kernel (bench --profile): GFLOP/s per operator class")
    args = p.parse_args(argv)

    rows, records = [], []
    names = list_models() if args.all else (args.models or FLAGSHIPS)
    for name in names:
        a = build(BuildOptions(name, args.target, output_dir=args.output, input_size=args.input_size,
                               records="none" if args.no_records else args.records), quiet=True)
        tuning = a.manifest.get("tuning") or {}
        r = compare.compare_engines(a, args.engines.split(","), threads=args.threads,
                                    rounds=args.rounds, runs_per_round=args.runs_per_round)
        e = r["engines"]
        nan = dict.fromkeys(("median_ms", "best_round_ms", "tvm_ratio", "tvm_ratio_best_round",
                             "gflops"), float("nan"))
        e.setdefault("onnxruntime", nan)
        e.setdefault("torch", nan)
        rec = {
            "model": name, "target": args.target, "input_size": a.manifest["input"]["shape"][-1],
            "cpu": a.manifest["target"]["tvm_target"].get("mcpu", ""),
            "schedules": a.manifest["pipeline"].get("schedules", "tvm-default"),
            "threads": r["threads"], "runs_each": r["runs_each"],
            "tuning_records": tuning.get("records"), "records_match": tuning.get("match"),
            "records_measured_on": (tuning.get("measured_on") or {}).get("cpu"),
            "tasks_tuned": f"{tuning.get('tasks_tuned', 0)}/{tuning.get('tasks_total', '-')}",
            "tvm_ms": e["tvm"]["median_ms"], "ort_ms": e["onnxruntime"]["median_ms"],
            "torch_ms": e["torch"]["median_ms"],
            "tvm_over_ort": e["onnxruntime"]["tvm_ratio"], "tvm_over_torch": e["torch"]["tvm_ratio"],
            "tvm_gflops": e["tvm"]["gflops"], "ort_gflops": e["onnxruntime"]["gflops"],
            "torch_gflops": e["torch"]["gflops"],
            # The quietest round's medians (see compare.compare_engines), and their ratios.
            "tvm_best_ms": e["tvm"]["best_round_ms"], "ort_best_ms": e["onnxruntime"]["best_round_ms"],
            "torch_best_ms": e["torch"]["best_round_ms"],
            "tvm_over_ort_best": e["onnxruntime"]["tvm_ratio_best_round"],
            "tvm_over_torch_best": e["torch"]["tvm_ratio_best_round"],
        }
        if args.profile:
            rec["classes"] = _classes(a, args.threads, e["tvm"]["median_ms"])
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        rows.append({
            "model": name, "tuned": rec["tasks_tuned"], "TVM ms": round(rec["tvm_ms"], 2),
            "ORT ms": round(rec["ort_ms"], 2), "torch ms": round(rec["torch_ms"], 2),
            "TVM/ORT": round(rec["tvm_over_ort"], 2), "TVM/torch": round(rec["tvm_over_torch"], 2),
            "TVM/ORT best": round(rec["tvm_over_ort_best"], 2),
            "TVM GFLOP/s": round(rec["tvm_gflops"], 1), "ORT GFLOP/s": round(rec["ort_gflops"], 1),
        })
    cpu = records[0]["cpu"] if records else "?"
    print(f"\n{args.target} ({cpu}), {args.threads} threads, median of interleaved runs "
          "(best: the quietest round's medians):")
    print(as_table(rows))
    return 0


def _classes(a, threads: int, median_ms: float) -> dict:
    """Per operator class: ms per inference, share of the compared median, GFLOP/s."""
    from edgecompile.backend.runtime import load_local
    from edgecompile.measure.profile import profile_kernels
    from edgecompile.pipeline import numerics

    model = load_local(a.library, "cpu", a.manifest["input"]["name"])
    model.configure_threads(threads, "default")
    x = model.put(numerics.parity_inputs(1, tuple(a.manifest["input"]["shape"])[1:]))
    p = profile_kernels(a, model, median_ms, device_input=x)
    out = {c["op_class"]: {"ms": round(c["ms"], 4), "ms_in_context": round(c["ms_in_context"], 4),
                           "share": round(c["share_in_context"], 4), "gflops": round(c["gflops"], 2)}
           for c in p["classes"]}
    return out | {"kernels_ms": round(p["kernels_ms"], 4),
                  "kernels_in_context_ms": round(p["kernels_in_context_ms"], 4)}


if __name__ == "__main__":
    sys.exit(main())
