"""One device job of `edgecompile matrix`, run as its own process.

    python -m edgecompile.measure.farm_job ARTIFACT --tracker H:P --key K [--data DIR] ...

Prints JSON events on stdout, one per line: {"event": "leased", "server": ...} once the
tracker's device has the library loaded, then {"event": "result", ...} or {"event": "error"}.
Running as a process lets the farm kill a job whose device hangs: a thread blocked in an RPC
call could never be reclaimed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecompile.errors import EdgeCompileError


def emit(event: str, **data) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgecompile.measure.farm_job")
    p.add_argument("artifact", type=Path)
    p.add_argument("--rpc")
    p.add_argument("--tracker")
    p.add_argument("--key")
    p.add_argument("--data", type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-runs", type=int, default=0, help="> 0: also time every kernel")
    p.add_argument("--lease-timeout", type=float, default=3600.0, help="wait for a free device, s")
    args = p.parse_args(argv)
    try:
        from edgecompile.backend import rpc_client
        from edgecompile.devices.spec import DeviceSpec
        from edgecompile.measure.bench import BenchOptions, bench_artifact, load_timed
        from edgecompile.measure.evaluate import EvalOptions, evaluate
        from edgecompile.pipeline.artifact import Artifact

        a = Artifact.load(args.artifact)
        # The farm decides how long a busy device may be waited for.
        device = DeviceSpec(rpc=args.rpc, tracker=args.tracker, key=args.key,
                            timeout_s=args.lease_timeout)
        if device.is_local:
            session = None
            emit("leased", server="local")
        else:
            session = rpc_client.open_session(device, on_lease=lambda s: emit("leased", server=s))
        model, cold = load_timed(a, device, session)
        bench = bench_artifact(a, device, BenchOptions(warmup=args.warmup, min_time_s=args.min_time,
                                                       min_runs=args.min_runs,
                                                       profile_runs=args.profile_runs),
                             loaded=(model, cold))
        result = None
        if args.data:
            result = evaluate(a, args.data, device, EvalOptions(limit=args.limit), model=model)
        emit("result", server=model.server, bench=bench, eval=result)
        return 0
    except EdgeCompileError as e:
        emit("error", message=str(e))
        return 1
    except Exception as e:  # a device that died mid-call surfaces as TVM/socket errors
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        emit("error", message=f"{type(e).__name__}: {last}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
