"""What fp32 GEMM reaches on this machine: the ceiling the achieved-GFLOP/s figures compare to.

    python scripts/gemm_peak.py [--threads 2] [--n 2048]

Times one large square matmul in numpy (OpenBLAS) and in ONNX Runtime (MLAS), with the given
threads, and prints best and median GFLOP/s of each (2 n^3 FLOPs per product) as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _rates(run, flops: float, reps: int) -> dict[str, float]:
    run()  # warm-up: thread pools, page faults
    secs = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        secs.append(time.perf_counter() - t)
    secs.sort()
    return {"best_gflops": flops / secs[0] / 1e9, "median_gflops": flops / secs[len(secs) // 2] / 1e9}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np  # after the thread variables: OpenBLAS reads them when it loads
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, flops = args.n, 2.0 * args.n ** 3
    a, b = (np.random.default_rng(i).random((n, n), dtype=np.float32) for i in (0, 1))
    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for engine, run in (("numpy", lambda: a @ b), ("onnxruntime", lambda: sess.run(None, {"A": a, "B": b}))):
        print(json.dumps({"engine": engine, "n": n, "threads": args.threads} | _rates(run, flops, args.reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
