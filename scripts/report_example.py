"""The README's report example: one farm run (this host as `x86`, the emulated Pi 4 as `rpi4`,
behind a tracker), one model per family with its digits checkpoint, then `edgecompile report`.

    python scripts/make_digits.py                        # the digits test images, once
    python scripts/report_example.py [--limit 120] [-o docs/report-example]

It starts a tracker, a native RPC server (key x86) and the emulated rpi4 (key rpi4), runs the
equivalent of

    edgecompile matrix --models LIST --targets x86,rpi4 --tracker HOST:PORT --data DIGITS \\
        --weights-dir checkpoints/digits --profile --peak --results RESULTS
    edgecompile report RESULTS -o DIR

and stops the devices. The rpi4 figures are emulation: the report labels them "not a latency".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edgecompile.devices.emulated.server import start as start_emulated
from edgecompile.devices.services import start_native_server, start_tracker
from edgecompile.measure.matrix import MatrixOptions, run_matrix
from edgecompile.paths import cache_dir
from edgecompile.report.write import make_report
from edgecompile.targets import get_target

REPO = Path(__file__).resolve().parents[1]
MODELS = ("squeezenet1_1", "mobilenet_v1_025", "mobilenet_v2_050", "shufflenet_v1_g3_050",
          "shufflenet_v2_x0_5", "fasternet_t0", "mobilenext_050")  # the digits checkpoints


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=cache_dir() / "digits" / "test")
    p.add_argument("--limit", type=int, default=120, help="eval images per model (default 120)")
    p.add_argument("--results", type=Path, default=REPO / "results" / "report-example.jsonl")
    p.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "report-example")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no digits images; run python scripts/make_digits.py first")
    logs = Path(tempfile.mkdtemp(prefix="ec-report-example-"))
    with start_tracker(logs) as tracker, \
            start_native_server(logs, tracker=tracker.address, key="x86"), \
            start_emulated(get_target("rpi4").device_core, tracker=tracker.address, key="rpi4"):
        run_matrix(MatrixOptions(
            models=MODELS, targets=("x86", "rpi4"), tracker=tracker.address, data=args.data,
            limit=args.limit, results=args.results, output_dir=REPO / "build" / "report-example",
            weights_dir=REPO / "checkpoints" / "digits", profile_runs=3, peak=True))
    report = make_report([args.results], args.output)
    print(f"{report.directory / 'index.html'}: {len(report.rows)} rows, {len(report.plots)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
