"""Every convolution of a built model, alone: TVM (our rules) vs ONNX Runtime, in one process.

    python scripts/bench_layers.py ARTIFACT_DIR [--threads 1] [--rounds 7] [--json]

Each Conv of the artifact's ONNX graph is cut out with its activation (Relu / Clip after it),
built with the default schedules for this CPU (no records) and timed against ONNX Runtime on the
same input, interleaved: the quietest of --rounds rounds for each. Layers that repeat (same
shapes) are timed once and counted by their calls. Prints the layers by the time TVM loses on
them (calls x difference), then the totals.

Read with care: ONNX Runtime's layer alone pays its NCHW <-> NCHWc reorders, which inside a
whole model it pays once, so these ratios flatter TVM, by up to 2x on large-map depthwise layers;
bench_in_context.py compares each engine's kernels inside whole inferences, and the model's own
ratio is bench_vs_ort.py's. Each engine's round starts after a pause and an untimed call, as in
bench_vs_ort.py (compare.timed_round): whichever engine ran just before holds the cores while its
workers spin, and without the pause SqueezeNet's 111 -> 55 max pool timed 2.8-3.9 ms at two
threads beside ONNX Runtime against 0.12 ms at one. A single layer at two threads is still
mostly fork-join and cache effects; one thread says more about the kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgecompile.backend import runtime
from edgecompile.measure.compare import timed_round
from edgecompile.pipeline import ort
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.stages.compile import compile_onnx
from edgecompile.targets import get_target

ACTIVATIONS = ("Relu", "Clip")


def _layers(model: onnx.ModelProto):
    """Per Conv (its activation included): (key of its shapes and attributes, input name,
    output name, input shape, weight dims, conv output shape)."""
    model = shape_inference.infer_shapes(model)
    typed = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def shape(name: str) -> tuple[int, ...]:
        return tuple(d.dim_value for d in typed[name].type.tensor_type.shape.dim)

    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        out = node.output[0]
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type in ACTIVATIONS:
            out = after[0].output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = tuple(inits[node.input[1]].dims)
        key = (shape(node.input[0]), w, attrs.get("group", 1), tuple(attrs.get("strides", [1, 1])),
               out != node.output[0])
        yield key, node.input[0], out, shape(node.input[0]), w, shape(node.output[0])


def _time_layer(sub: onnx.ModelProto, x_name: str, x_shape: tuple[int, ...], preset, lib_path: Path,
                threads: int, rounds: int) -> dict[str, float]:
    lib = compile_onnx(sub, x_name, x_shape, preset, lib_path, records="none")
    tvm_model = runtime.load_local(lib.path, "cpu", x_name)
    tvm_model.configure_threads(threads, "default")
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    dev_x = tvm_model.put(x)
    sess = ort.session(sub, threads=threads)
    return _time({"tvm": lambda: tvm_model.run_uploaded(dev_x),
                  "ort": lambda: sess.run(None, {x_name: x})}, rounds)


def _time(fns: dict, rounds: int, runs: int = 15) -> dict[str, float]:
    for f in fns.values():
        for _ in range(3):
            f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for k, f in fns.items():
            best[k] = min(best[k], float(np.median(timed_round(f, runs))))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--threads", type=int, default=1,
                   help="default 1: a layer alone at two threads is mostly fork-join and cache effects")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true", help="one JSON line per layer instead of a table")
    args = p.parse_args(argv)
    a = Artifact.load(args.artifact)
    preset = get_target(a.manifest["target"]["preset"])
    model = onnx.load(a.onnx)
    work = Path(tempfile.mkdtemp(prefix="ec-layers-"))
    rows: dict[tuple, dict] = {}
    for key, x_name, y_name, x_shape, w, y_shape in _layers(model):
        if key in rows:
            rows[key]["calls"] += 1
            continue
        sub = onnx.utils.Extractor(model).extract_model([x_name], [y_name])
        i = len(rows)
        t = _time_layer(sub, x_name, x_shape, preset, work / f"{i}.so", args.threads, args.rounds)
        flops = 2 * int(np.prod(y_shape)) * int(np.prod(w[1:]))
        rows[key] = {"input": list(x_shape), "weight": list(w), "groups": key[2], "stride": key[3][0],
                     "calls": 1, "tvm_us": t["tvm"] * 1e6, "ort_us": t["ort"] * 1e6,
                     "tvm_gflops": flops / t["tvm"] / 1e9, "ort_gflops": flops / t["ort"] / 1e9}
        print(f"  {i + 1} layers timed", end="\r", file=sys.stderr, flush=True)
    ordered = sorted(rows.values(), key=lambda r: -(r["tvm_us"] - r["ort_us"]) * r["calls"])
    for r in ordered:
        if args.json:
            print(json.dumps(r))
            continue
        print(f"in {tuple(r['input'][1:])} w {tuple(r['weight'])} g{r['groups']} s{r['stride']} "
              f"x{r['calls']}: TVM {r['tvm_us']:.1f} us, ORT {r['ort_us']:.1f} us "
              f"({r['tvm_us'] / r['ort_us']:.2f}x; {r['tvm_gflops']:.0f} vs {r['ort_gflops']:.0f} GFLOP/s)")
    tvm_total = sum(r["tvm_us"] * r["calls"] for r in rows.values()) / 1e3
    ort_total = sum(r["ort_us"] * r["calls"] for r in rows.values()) / 1e3
    print(f"{len(rows)} distinct convolutions, {args.threads} thread(s): TVM {tvm_total:.3f} ms, "
          f"ONNX Runtime {ort_total:.3f} ms ({tvm_total / ort_total:.2f}x)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
