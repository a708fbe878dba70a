"""The `edgecompile` command: parses, calls the library, turns EdgeCompileError into one line.

No logic lives here; each subcommand maps its flags onto a library call.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecompile.errors import EdgeCompileError


def _cmd_list(args: argparse.Namespace) -> int:
    from edgecompile import listing

    rows = listing.model_rows(args.family, exact=args.format == "json")
    print(listing.as_json(rows) if args.format == "json" else listing.as_table(rows))
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgecompile import listing

    rows = listing.target_rows()
    print(listing.as_json(rows) if args.format == "json" else listing.as_table(rows))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from edgecompile.pipeline.build import build
    from edgecompile.pipeline.spec import BuildOptions

    artifact = build(BuildOptions(
        model=args.model, target=args.target, output_dir=args.output, input_size=args.input_size,
        weights=args.weights, num_classes=args.num_classes, seed=args.seed,
        native_host=args.native_host, library_format=args.library_format,
        records="none" if args.no_records else args.records,
    ))
    print(artifact.path)
    return 0


def _device(args: argparse.Namespace):
    from edgecompile.devices.spec import DeviceSpec

    return DeviceSpec(rpc=args.rpc, tracker=args.tracker, key=args.key, timeout_s=args.timeout)


def _add_device_flags(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("device (default: this host)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="a tvm.exec.rpc_server")
    g.add_argument("--tracker", metavar="HOST:PORT", help="a tvm.exec.rpc_tracker (with --key)")
    g.add_argument("--key", help="device key registered with the tracker")
    g.add_argument("--timeout", type=float, default=30.0, help="connect timeout, s (default 30)")


def _cmd_verify(args: argparse.Namespace) -> int:
    from edgecompile.measure.verify import verify

    result = verify(args.artifact, samples=args.samples, device=_device(args))
    print(json.dumps(result.to_dict()) if args.format == "json" else result.format())
    return 0 if result.ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgecompile.measure import bench, compare

    opts = bench.BenchOptions(warmup=args.warmup, min_time_s=args.min_time, min_runs=args.min_runs,
                              threads=args.threads, affinity=args.affinity,
                              profile_runs=args.profile_runs if args.profile or args.trace else 0)
    record = bench.run_bench(args.model, args.target, _device(args), opts, output_dir=args.output,
                             input_size=args.input_size, results=args.results, trace=args.trace,
                             compare=args.compare.split(",") if args.compare else ())
    if args.format == "json":
        print(json.dumps(record))
        return 0
    print(bench.format_report(record))
    if record["profile"]:
        from edgecompile.measure.profile import format_profile

        print(format_profile(record["profile"]))
    if "compare" in record:
        print(compare.format_table(record["compare"]))
    return 0


def _cmd_peak(args: argparse.Namespace) -> int:
    from edgecompile.measure import peak

    record = peak.run_peak(peak.PeakOptions(args.target, threads=args.threads, runs=args.runs,
                                            refresh=args.refresh), _device(args), results=args.results)
    print(json.dumps(record) if args.format == "json" else peak.format_peak(record))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from edgecompile import listing
    from edgecompile.report.write import make_report, terminal_rows

    report = make_report(args.results, args.output)
    for p in report.problems:
        print(f"skipped: {p}", file=sys.stderr)
    rows = terminal_rows(report.rows)
    print(listing.as_json(rows) if args.format == "json" else listing.as_table(rows))
    print(f"report: {report.directory / 'index.html'} ({len(report.plots)} plots, "
          f"summary.csv, report.md)", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgecompile.measure import evaluate

    record = evaluate.run_eval(
        args.model, args.target, args.data, _device(args),
        evaluate.EvalOptions(limit=args.limit, class_index=args.class_index),
        output_dir=args.output, input_size=args.input_size, results=args.results)
    print(json.dumps(record) if args.format == "json" else evaluate.format_report(record))
    return 0


def _cmd_matrix(args: argparse.Namespace) -> int:
    from edgecompile import listing
    from edgecompile.measure import matrix

    opts = matrix.MatrixOptions(
        models=matrix.expand_models(args.models.split(",")), targets=tuple(args.targets.split(",")),
        tracker=args.tracker, data=args.data, limit=args.limit, results=args.results,
        output_dir=args.output, input_size=args.input_size, attempts=args.attempts,
        job_timeout_s=args.job_timeout, bench_min_time_s=args.bench_time,
        profile_runs=args.profile_runs if args.profile else 0, peak=args.peak,
        weights_dir=args.weights_dir,
    )
    records = matrix.run_matrix(opts)
    rows = matrix.summary_rows(records)
    print(listing.as_json(rows) if args.format == "json" else listing.as_table(rows))
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _cmd_tune(args: argparse.Namespace) -> int:
    from edgecompile.tune import run as tune_run

    result = tune_run.tune(tune_run.TuneOptions(
        model=args.model, target=args.target, trials=args.trials, trials_per_task=args.trials_per_task,
        input_size=args.input_size, rpc=args.rpc, tracker=args.tracker, key=args.key, timeout_s=args.timeout,
        threads=args.threads, root=args.records_dir, seed=args.seed, max_tasks=args.focus,
        recheck=args.recheck, native_host=args.native_host, search=args.search,
    ))
    print(json.dumps(result.to_dict()) if args.format == "json" else tune_run.format_tasks(result))
    return 0


def _cmd_device(args: argparse.Namespace) -> int:
    from edgecompile.devices import emulated as emu

    if args.device_command == "prepare":
        print(emu.prepare(args.root, mirror=args.mirror))
        return 0
    if args.device_command == "cores":
        print("\n".join(emu.qemu_cpus()))
        return 0
    core, key = emu.resolve_core(args.core, args.target, args.tracker, args.key)
    return emu.serve(core, args.port, args.tracker, key, args.root, host=args.host,
                     restart=not args.no_restart)


def _cmd_info(args: argparse.Namespace) -> int:
    from edgecompile import listing
    from edgecompile.pipeline.artifact import Artifact

    a = Artifact.load(args.artifact)
    print(json.dumps(a.manifest, indent=2) if args.format == "json" else listing.describe(a))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgecompile",
        description="Compile lightweight CNNs from PyTorch to TVM artifacts for edge devices.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = {"choices": ["table", "json"], "default": "table"}

    s = sub.add_parser("list", help="every registered model variant")
    s.add_argument("--family", help="only this family")
    s.add_argument("--format", **fmt)
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("targets", help="every target preset")
    s.add_argument("--format", **fmt)
    s.set_defaults(func=_cmd_targets)

    s = sub.add_parser("build", help="PyTorch -> ONNX -> simplify -> fold BN -> TVM artifact")
    s.add_argument("model", help="a model name from `edgecompile list`")
    s.add_argument("--target", required=True, help="a preset from `edgecompile targets`, or a .toml")
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="default: ./build")
    s.add_argument("--input-size", type=int, help="square input resolution (default: the variant's)")
    s.add_argument("--weights", type=Path, help="checkpoint (torchvision / timm / official layouts)")
    s.add_argument("--num-classes", type=int, help="classifier size (default: the variant's)")
    s.add_argument("--seed", type=int, default=0, help="seed of the parity init when no --weights")
    s.add_argument("--library-format", choices=["so", "tar"], default="so",
                   help="so: linked library (default); tar: object files to link on another machine")
    s.add_argument("--native-host", action="store_true",
                   help="GPU presets: host code for this machine, to run the kernels here (e.g. pocl)")
    s.add_argument("--records", choices=["exact", "isa", "none"], default="isa",
                   help="tuning records to apply where they beat the default schedules: exact: "
                        "tuned on this CPU; isa (default): also on another CPU of its ISA class "
                        "(e.g. x86_64-avx512); none: default schedules only (see `edgecompile tune`)")
    s.add_argument("--no-records", action="store_true", help="the same as --records none")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser("verify", help="run an artifact against its PyTorch model")
    s.add_argument("artifact", type=Path)
    s.add_argument("--samples", type=int, default=4, help="random inputs to compare (default 4)")
    s.add_argument("--format", **fmt)
    _add_device_flags(s)
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("bench", help="on-device latency of an artifact (or a model, built first)")
    s.add_argument("model", help="an artifact directory, or a model name (built with --target)")
    s.add_argument("--target", help="target preset when MODEL is a name")
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="where to build")
    s.add_argument("--input-size", type=int, help="square input resolution when building")
    s.add_argument("--threads", type=int, help="device threads (default: the runtime's choice)")
    s.add_argument("--affinity", choices=["default", "big", "little", "all"], default="default",
                   help="big.LITTLE cores to run on (default: the runtime's choice)")
    s.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    s.add_argument("--min-time", type=float, default=2.0, help="time at least this long, s")
    s.add_argument("--min-runs", type=int, default=20, help="and at least this many runs")
    s.add_argument("--compare", metavar="LIST",
                   help="also time onnxruntime,torch here, interleaved, same threads (local only)")
    s.add_argument("--profile", action="store_true",
                   help="also time every kernel on the device: time and GFLOP/s per operator class")
    s.add_argument("--profile-runs", type=int, default=5,
                   help="--profile: repeats per kernel, the median is kept (default 5)")
    s.add_argument("--trace", type=Path, metavar="FILE.json",
                   help="write the kernel profile as a Chrome trace (Perfetto, chrome://tracing)")
    s.add_argument("--results", type=Path, help="append the result to this JSONL file")
    s.add_argument("--format", **fmt)
    _add_device_flags(s)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("peak", help="a device's fp32 compute and memory-bandwidth ceilings")
    s.add_argument("--target", default="x86", help="the device's target preset (default: x86)")
    s.add_argument("--threads", type=int, help="device threads (default: the runtime's choice)")
    s.add_argument("--runs", type=int, default=20, help="timed runs of each kernel (default 20)")
    s.add_argument("--refresh", action="store_true", help="measure even if this device is cached")
    s.add_argument("--results", type=Path, help="append the result to this JSONL file")
    s.add_argument("--format", **fmt)
    _add_device_flags(s)
    s.set_defaults(func=_cmd_peak)

    s = sub.add_parser("report", help="results (bench/eval/matrix/peak JSON lines) -> HTML, CSV, plots")
    s.add_argument("results", type=Path, nargs="+", help="JSON-lines results files")
    s.add_argument("-o", "--output", type=Path, default=Path("report"), help="default: ./report")
    s.add_argument("--format", **fmt)
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("eval", help="accuracy of an artifact on a labelled image folder, vs PyTorch")
    s.add_argument("model", help="an artifact directory, or a model name (built with --target)")
    s.add_argument("--data", type=Path, required=True, help="DIR/<class>/<image> or ImageNet synsets")
    s.add_argument("--class-index", type=Path, help="ImageNet class index JSON (subset of synsets)")
    s.add_argument("--limit", type=int, help="first N images, interleaved over classes")
    s.add_argument("--target", help="target preset when MODEL is a name")
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="where to build")
    s.add_argument("--input-size", type=int, help="square input resolution when building")
    s.add_argument("--results", type=Path, help="append the result to this JSONL file")
    s.add_argument("--format", **fmt)
    _add_device_flags(s)
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("matrix", help="bench + eval of every model x target across a device farm")
    s.add_argument("--models", required=True, help="comma list: model names, family names, or all")
    s.add_argument("--targets", required=True, help="comma list of target presets")
    s.add_argument("--tracker", metavar="HOST:PORT",
                   help="devices under each target's RPC key (default: this host runs every job)")
    s.add_argument("--data", type=Path, help="labelled images for eval (default: bench only)")
    s.add_argument("--limit", type=int, help="eval on the first N images")
    s.add_argument("--results", type=Path, default=Path("results/matrix.jsonl"),
                   help="JSON lines, appended per job; jobs already there are skipped")
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="where to build")
    s.add_argument("--input-size", type=int, help="square input resolution")
    s.add_argument("--attempts", type=int, default=3, help="tries per job across devices (default 3)")
    s.add_argument("--job-timeout", type=float, default=900, help="s per job once it has a device")
    s.add_argument("--bench-time", type=float, default=1.0, help="bench at least this long, s")
    s.add_argument("--profile", action="store_true",
                   help="each bench also times every kernel by operator class (bench --profile)")
    s.add_argument("--profile-runs", type=int, default=5, help="--profile: repeats per kernel")
    s.add_argument("--peak", action="store_true",
                   help="also measure each target's device ceilings (edgecompile peak)")
    s.add_argument("--weights-dir", type=Path, metavar="DIR",
                   help="build each model from DIR/<model>.pth where present (e.g. checkpoints/digits)")
    s.add_argument("--format", **fmt)
    s.set_defaults(func=_cmd_matrix)

    s = sub.add_parser("tune", help="MetaSchedule-tune a model's kernels; `build` applies the records")
    s.add_argument("model", help="a model name from `edgecompile list`")
    s.add_argument("--target", required=True,
                   help="a preset from `edgecompile targets` (CPU, or mali/adreno over RPC), or a .toml")
    s.add_argument("--trials", type=int, default=2000, help="total trials, shared evenly by the tasks")
    s.add_argument("--trials-per-task", type=int, help="trials for each task (overrides the share)")
    s.add_argument("--input-size", type=int, help="square input resolution (default: the variant's)")
    s.add_argument("--focus", type=int, metavar="N",
                   help="tune only the N tasks costing the most time (per the records so far)")
    s.add_argument("--threads", type=int, help="cores the model will run on (default: all here)")
    s.add_argument("--records-dir", type=Path,
                   help="records root (default: $EDGECOMPILE_TUNING_DIR or the repo's tuning/)")
    s.add_argument("--seed", type=int, help="search seed")
    s.add_argument("--search", choices=("evolutionary", "rules"), default="evolutionary",
                   help="evolutionary: MetaSchedule's search (default); rules (CPU targets): the "
                        "default rules' own next-ranked tiles, K chunks and core splits, up to 16 "
                        "a kernel (--trials-per-task caps it)")
    s.add_argument("--recheck", action="store_true",
                   help="no search: time the stored records against today's default schedules "
                        "again (after an upgrade, builds skip records until this has run)")
    s.add_argument("--native-host", action="store_true",
                   help="GPU presets: build the candidates' host side for this machine (its OpenCL "
                        "device, e.g. pocl), as `build --native-host`")
    s.add_argument("--format", **fmt)
    _add_device_flags(s)
    s.set_defaults(func=_cmd_tune)

    s = sub.add_parser("device", help="an emulated arm64 device (qemu) running a TVM RPC server")
    dsub = s.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    root_help = "rootfs directory (default: $EDGECOMPILE_CACHE/arm64-rootfs)"
    d = dsub.add_parser("prepare", help="build the arm64 rootfs with TVM in it (idempotent)")
    d.add_argument("--root", type=Path, help=root_help)
    d.add_argument("--mirror", help="Debian mirror (default: this machine's apt mirror)")
    d = dsub.add_parser("start", help="run an RPC server in the device, in the foreground")
    which = d.add_mutually_exclusive_group(required=True)
    which.add_argument("--core", help="qemu CPU to pin, e.g. cortex-a72 (see `device cores`)")
    which.add_argument("--target", help="a target preset: its device_core, and its rpc_key as --key")
    d.add_argument("--port", type=int, help="server port (default: a free one)")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    d.add_argument("--tracker", help="register with this RPC tracker, HOST:PORT")
    d.add_argument("--key", help="device key under the tracker")
    d.add_argument("--no-restart", action="store_true",
                   help="exit when an RPC session crashes instead of restarting the server")
    d.add_argument("--root", type=Path, help=root_help)
    dsub.add_parser("cores", help="the CPU models qemu can pin")
    s.set_defaults(func=_cmd_device)

    s = sub.add_parser("info", help="show an artifact's manifest")
    s.add_argument("artifact", type=Path)
    s.add_argument("--format", **fmt)
    s.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeCompileError as e:
        print(f"edgecompile: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgecompile: interrupted (nothing partial was written)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
