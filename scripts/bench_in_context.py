"""Every kernel of a built model timed inside whole inferences: TVM vs ONNX Runtime, layer by layer.

    python scripts/bench_in_context.py ARTIFACT_DIR [--threads 1] [--runs 40] [--json] [--all]

TVM: each call of the Relax VM timed in context (LoadedModel.call_times), the median over --runs
inferences. ONNX Runtime: its own profiler's node times over as many runs of the artifact's
model.onnx, its graph optimisations on (NCHWc convolutions, fused activations and residual adds),
so each layer is ONNX Runtime's real kernel, without the NCHW <-> NCHWc reorders that a layer cut
out alone pays (bench_layers.py's ratios flatter TVM for that reason: the 96 @112 s2 depthwise of
MobileNet v2 is 1.0x alone and 1.8x in context on a Zen 4).

Layers are paired by (input shape, output shape, a convolution's window) and, where several share
those, by order of execution. Prints the paired layers by the time TVM loses on them, then what is
left unpaired on each side (shapes that differ: SqueezeNet's convolutions on a concat's parts,
channels ONNX Runtime pads to its block, 24 -> 32; ONNX Runtime's reorders), the totals per TVM
operator class, and the sums. Both sums are kernel time only: the TVM VM's own work (argument
checks, allocations) is counted apart, and ONNX Runtime's executor is not in its node times.
ONNX Runtime's profiler adds its own cost to every node: on a Zen 4, one thread, SqueezeNet 1.1's
node sum was 7.79 ms against 7.36-7.44 ms for its uninstrumented whole run (bench_vs_ort.py), so
the sums flatter TVM by ~5%; the model's real ratio is bench_vs_ort.py's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

from edgecompile.backend import runtime
from edgecompile.pipeline import numerics
from edgecompile.pipeline.artifact import Artifact


def tvm_layers(a: Artifact, x: np.ndarray, threads: int, runs: int) -> list[dict]:
    """One row per VM call, in call order: kernel name, op class, shapes, median ms in context."""
    model = runtime.load_local(a.library, "cpu", a.manifest["input"]["name"])
    model.configure_threads(threads, "default")
    dev_x = model.put(x)
    for _ in range(5):
        model.run_uploaded(dev_x)
    calls = [model.call_times(dev_x) for _ in range(runs)]
    ms = np.median(np.array([[t for _, t in c] for c in calls]), axis=0) * 1e3
    table = {k["name"]: k for k in (a.kernel_table() or {"kernels": []})["kernels"]}
    rows = []
    for (name, _), t in zip(calls[0], ms, strict=True):
        k = table.get(name)
        conv = k is not None and len(k["args"]) > 2 and len(k["args"][1]["shape"]) >= 4
        rows.append({"name": name, "class": k["op_class"] if k else "vm", "ms": float(t),
                     "input": k["args"][0]["shape"] if k else None,
                     "output": k["args"][-1]["shape"] if k else None,
                     # weights [O, I/g, kh, kw] or re-blocked [O/b, I/g, kh, kw, b]
                     "window": tuple(k["args"][1]["shape"][2:4]) if conv else ()})
    return rows


def ort_layers(a: Artifact, x: np.ndarray, threads: int, runs: int) -> list[dict]:
    """One row per ONNX Runtime node, in execution order, with the median of its profiled times."""
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ec-ort-profile-")) / "ort")
    sess = onnxruntime.InferenceSession(str(a.onnx), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(5 + runs):
        sess.run(None, {name: x})
    path = sess.end_profiling()
    try:
        events = json.load(open(path))
    finally:
        os.remove(path)
    times: dict[str, list[float]] = collections.defaultdict(list)
    args: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"]].append(e["dur"] / 1e3)
            args[e["name"]] = e.get("args", {})

    def shape(entries, i: int = 0) -> list[int] | None:
        return list(next(iter(entries[i].values()))) if entries and len(entries) > i else None

    rows = []
    for n, t in times.items():
        ins = args[n].get("input_type_shape")
        w = shape(ins, 1) if "Conv" in args[n].get("op_name", "") else None
        rows.append({"name": n.removesuffix("_kernel_time"), "op": args[n].get("op_name", "?"),
                     "ms": float(np.median(t[-runs:])), "input": shape(ins),
                     "output": shape(args[n].get("output_type_shape")),
                     "window": tuple(w[2:4]) if w and len(w) >= 4 else ()})
    return rows


def pair(tvm_rows: list[dict], ort_rows: list[dict]):
    """Pair kernels and nodes by (input shape, output shape, a convolution's window), the n-th
    of a key with the n-th (a fire module's 1x1 and 3x3 expands share their shapes)."""
    def key(r: dict):
        return (tuple(r["input"] or ()), tuple(r["output"] or ()), r["window"])

    queues: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
    for r in ort_rows:
        queues[key(r)].append(r)
    paired, tvm_only = [], []
    for r in tvm_rows:
        if r["class"] == "vm":
            continue
        q = queues.get(key(r))
        if q:
            paired.append((r, q.popleft()))
        else:
            tvm_only.append(r)
    ort_only = [r for q in queues.values() for r in q]
    return paired, tvm_only, ort_only


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=40, help="inferences per engine (median per layer)")
    p.add_argument("--json", action="store_true", help="one JSON line per paired layer, then the sums")
    p.add_argument("--all", action="store_true", help="every paired layer (default: the 25 costliest)")
    args = p.parse_args(argv)
    a = Artifact.load(args.artifact)
    x = numerics.parity_inputs(1, tuple(a.manifest["input"]["shape"])[1:])
    tvm_rows = tvm_layers(a, x, args.threads, args.runs)
    ort_rows = ort_layers(a, x, args.threads, args.runs)
    paired, tvm_only, ort_only = pair(tvm_rows, ort_rows)
    paired.sort(key=lambda tr: -(tr[0]["ms"] - tr[1]["ms"]))
    sums = {"tvm_kernels_ms": sum(r["ms"] for r in tvm_rows if r["class"] != "vm"),
            "tvm_vm_ms": sum(r["ms"] for r in tvm_rows if r["class"] == "vm"),
            "ort_nodes_ms": sum(r["ms"] for r in ort_rows),
            "paired_tvm_ms": sum(t["ms"] for t, _ in paired),
            "paired_ort_ms": sum(o["ms"] for _, o in paired)}
    by_class: dict[str, float] = collections.defaultdict(float)
    for r in tvm_rows:
        by_class[r["class"]] += r["ms"]
    if args.json:
        for t, o in paired:
            print(json.dumps({"tvm": t["name"], "class": t["class"], "ort": o["name"], "input": t["input"],
                              "output": t["output"], "tvm_ms": t["ms"], "ort_ms": o["ms"]}))
        print(json.dumps({"threads": args.threads, **sums, "tvm_classes_ms": dict(by_class)}))
        return 0
    print(f"{a.manifest['model']['name']}, {args.threads} thread(s), median of {args.runs} inferences, "
          "each engine's kernels inside whole inferences:")
    for t, o in paired if args.all else paired[:25]:
        print(f"  {t['class']:10s} {str(t['input']):22s} -> {str(t['output']):22s} TVM {t['ms']:.3f} ms  "
              f"ORT {o['ms']:.3f} ms  {t['ms'] / max(o['ms'], 1e-6):.2f}x  ({t['ms'] - o['ms']:+.3f})")
    for side, rows in (("TVM only", tvm_only), ("ONNX Runtime only", ort_only)):
        if rows:
            listed = ", ".join(f"{r['name']} {r['ms']:.3f}" for r in rows[:8])
            print(f"{side}: {sum(r['ms'] for r in rows):.3f} ms in {len(rows)} kernels: {listed}"
                  + (" ..." if len(rows) > 8 else ""))
    classes = sorted(by_class.items(), key=lambda kv: -kv[1])
    print("TVM per class: " + ", ".join(f"{c} {v:.3f}" for c, v in classes))
    print(f"paired: TVM {sums['paired_tvm_ms']:.3f} ms, ORT {sums['paired_ort_ms']:.3f} ms "
          f"({sums['paired_tvm_ms'] / max(sums['paired_ort_ms'], 1e-9):.2f}x); all kernels: TVM "
          f"{sums['tvm_kernels_ms']:.3f} ms (+{sums['tvm_vm_ms']:.3f} VM), ORT {sums['ort_nodes_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
