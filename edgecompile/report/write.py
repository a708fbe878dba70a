"""Write a report directory: index.html, summary.csv, report.md, plots/ (PNG, SVG, plots.json)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgeCompileError
from edgecompile.paths import write_atomic
from edgecompile.report.html import write_html
from edgecompile.report.load import load_results
from edgecompile.report.plots import make_plots
from edgecompile.report.rows import COLUMNS, build_rows, cell

# The columns the terminal shows (the files have them all).
TERMINAL = ["device", "target", "model", "input_size", "macs_m", "median_ms", "gflops", "peak_pct",
            "schedules", "top1", "emulated"]


@dataclass
class Report:
    directory: Path
    rows: list[dict[str, Any]]
    plots: list[dict[str, Any]]
    problems: list[str]


def make_report(results: list[Path], out_dir: Path) -> Report:
    loaded = load_results(results)
    rows = build_rows(loaded)
    if not rows:
        raise EdgeCompileError("no usable results in " + ", ".join(map(str, results))
                               + "".join(f"\n  {p}" for p in loaded.problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir = out_dir / "plots"
    plots = make_plots(rows, plot_dir)
    write_atomic(plot_dir / "plots.json", json.dumps(plots, indent=1) + "\n")
    write_atomic(out_dir / "summary.csv", _csv(rows))
    write_atomic(out_dir / "report.md", _markdown(rows, plots, loaded.problems, results))
    write_html(out_dir / "index.html", rows, plots, plot_dir, loaded.problems, [str(r) for r in results])
    return Report(out_dir, rows, plots, loaded.problems)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([h for _, h in COLUMNS])
    for r in rows:
        w.writerow(["" if r.get(k) is None else r[k] for k, _ in COLUMNS])  # full precision
    return buf.getvalue()


def _markdown(rows, plots, problems, results) -> str:
    lines = ["# edgecompile report", "", f"From {', '.join(map(str, results))}.", ""]
    lines += markdown_table(rows, [k for k, _ in COLUMNS]).splitlines()
    lines += ["", "## Plots", ""]
    lines += [f"![{p['title'].splitlines()[0]}](plots/{p['files'][0]})" for p in plots]
    if problems:
        lines += ["", "## Skipped", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def markdown_table(rows, keys: list[str]) -> str:
    headers = dict(COLUMNS)
    out = ["| " + " | ".join(headers[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def terminal_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    headers = dict(COLUMNS)
    return [{headers[k]: cell(r, k) for k in TERMINAL} for r in rows]
