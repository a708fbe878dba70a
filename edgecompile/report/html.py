"""index.html: one self-contained page (no external scripts, styles, fonts or files: the plots
are embedded), a sortable table per device and target, the plots, and what was skipped."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from edgecompile.paths import write_atomic
from edgecompile.report.rows import COLUMNS, NOT_A_LATENCY, cell

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #eee; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.text { text-align: left; }
.emulated { color: #a33; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.problems { color: #a33; font-size: 12px; }
"""

# Sorts a table on a header click (numbers numerically, empty cells last), toggling direction.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === "") return 1; if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def write_html(path: Path, rows: list[dict[str, Any]], plots: list[dict[str, Any]],
               plot_dir: Path, problems: list[str], sources: list[str]) -> None:
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgecompile report</title>",
             f"<style>{_STYLE}</style></head><body>",
             "<h1>edgecompile: every architecture, side by side, per device</h1>",
             f"<p>From {e(', '.join(sources))}. Latency: median of on-device runs; GFLOP/s: 2 x MACs"
             " / median latency; % of peak: of the device's measured compute ceiling "
             "(<code>edgecompile peak</code>). Click a column to sort.</p>"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["target"]), []).append(r)
    for (device, target), members in sorted(groups.items()):
        emulated = any(m["emulated"] for m in members)
        parts.append(f"<h2>{e(target)} on {e(device)}"
                     + (f" <span class='emulated'>({NOT_A_LATENCY})</span>" if emulated else "")
                     + "</h2>")
        parts.append(_table(members))
    parts.append("<h2>Plots</h2>")
    for p in plots:
        png = (plot_dir / p["files"][0]).read_bytes()
        parts.append(f"<h3>{e(p['title'])}</h3><img alt='{e(p['title'])}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    if problems:
        parts.append("<h2>Skipped</h2><ul class='problems'>"
                     + "".join(f"<li>{e(x)}</li>" for x in problems) + "</ul>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    write_atomic(path, "\n".join(parts))


def _table(members: list[dict[str, Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h in COLUMNS)
    body = []
    for r in members:
        cells = []
        for key, _ in COLUMNS:
            text = cell(r, key)
            raw = r.get(key)
            value = "" if raw is None else (repr(raw) if isinstance(raw, float) else str(raw))
            cls = "text" if not isinstance(raw, (int, float)) else ""
            if key == "emulated" and raw:
                cls += " emulated"
            cells.append(f"<td class='{cls.strip()}' data-key='{key}' data-value='{e(value)}'>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
