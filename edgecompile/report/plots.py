"""The report's plots (matplotlib, PNG and SVG), each with what it drew kept as data.

Per device and target: latency against MACs with the correlation stated (FasterNet's argument
that FLOPs do not predict latency, measured); achieved GFLOP/s against the device's roofline;
GFLOP/s and time share per operator class (does PConv beat depthwise and grouped convolution
here?); accuracy against latency with its Pareto front. Across devices: the same models side by
side. Emulated devices are labelled "not a latency" in every title.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from edgecompile.report.rows import NOT_A_LATENCY

CLASS_COLORS = {"conv": "#4c72b0", "pointwise": "#55a868", "depthwise": "#c44e52",
                "grouped": "#8172b2", "pconv": "#ccb974", "dense": "#64b5cd", "pooling": "#937860",
                "winograd": "#e5ae38", "data_movement": "#da8bc3", "elementwise": "#8c8c8c"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx and sy else None


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """(latency, accuracy, name) points no other point beats on both (lower, higher)."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def _group_label(device: str, target: str, emulated: bool) -> str:
    return f"{target} on {device}" + (f" ({NOT_A_LATENCY})" if emulated else "")


def _slug(text: str) -> str:
    """A file name part: addresses dropped (a tracker's port changes every run; its key does
    not), the rest alphanumeric."""
    import re

    text = re.sub(r"[\w.-]+:\d+", "", text)
    return re.sub(r"-+", "-", "".join(c if c.isalnum() else "-" for c in text)).strip("-").lower()[:80]


def make_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Draw every plot the rows allow into ``out_dir``; returns, per plot, its name, title,
    files and the points drawn ({"model", "x", "y"})."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["median_ms"] is not None:
            groups[(r["device"], r["target"])].append(r)
    plots, used = [], set()
    for (device, target), members in sorted(groups.items()):
        label = _group_label(device, target, any(m["emulated"] for m in members))
        slug = base = _slug(f"{target}-{device}")
        n = 1
        while slug in used:  # two servers whose names differ only by address
            n += 1
            slug = f"{base}-{n}"
        used.add(slug)
        plots.append(_latency_vs_macs(members, label, out_dir / f"latency-vs-macs-{slug}"))
        roof = _roofline(members, label, out_dir / f"roofline-{slug}")
        if roof:
            plots.append(roof)
        classes = _op_classes(members, label, out_dir / f"op-classes-{slug}")
        if classes:
            plots.append(classes)
        acc = _accuracy_vs_latency(members, label, out_dir / f"accuracy-vs-latency-{slug}")
        if acc:
            plots.append(acc)
    if len(groups) > 1:
        plots.append(_across_devices(groups, out_dir / "across-devices"))
    return plots


def _save(fig, stem: Path) -> list[str]:
    files = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        files.append(path.name)
    _plt().close(fig)
    return files


def _scatter(ax, xs, ys, names, gid: str) -> None:
    points = ax.scatter(xs, ys, s=36, zorder=3)
    points.set_gid(gid)  # the SVG group holding exactly one marker per architecture
    for x, y, n in zip(xs, ys, names, strict=True):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _latency_vs_macs(members, label: str, stem: Path) -> dict[str, Any]:
    plt = _plt()
    xs = [m["macs_m"] for m in members]
    ys = [m["median_ms"] for m in members]
    names = [m["model"] for m in members]
    r = pearson(xs, ys)
    title = f"Latency vs MACs: {label}\n" + (f"Pearson r = {r:.2f} over {len(xs)} architectures"
                                              if r is not None else "too few architectures for r")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, xs, ys, names, "points")
    ax.set_xlabel("multiply-adds per inference (millions)")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return {"name": stem.name, "title": title, "kind": "latency_vs_macs", "pearson_r": r,
            "points": [{"model": n, "x": x, "y": y} for n, x, y in zip(names, xs, ys, strict=True)],
            "files": _save(fig, stem)}


def _roofline(members, label: str, stem: Path) -> dict[str, Any] | None:
    with_peak = [m for m in members if m.get("peak") and m.get("profile") and m.get("gflops")]
    if not with_peak:
        return None
    plt = _plt()
    peak = with_peak[0]["peak"]
    xs, ys, names = [], [], []
    for m in with_peak:
        flops = sum(k["flops"] for k in m["profile"]["kernels"])
        moved = sum(k["bytes"] for k in m["profile"]["kernels"])
        xs.append(flops / moved if moved else 0.0)
        ys.append(m["gflops"])
        names.append(m["model"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo, hi = min(xs + [0.1]) / 2, max(xs + [100.0]) * 2
    grid = [lo * (hi / lo) ** (i / 100) for i in range(101)]
    ax.plot(grid, [min(peak["compute_gflops"], peak["bandwidth_gbps"] * g) for g in grid], "k-",
            label=f"roofline: {peak['compute_gflops']:.0f} GFLOP/s, {peak['bandwidth_gbps']:.0f} GB/s")
    _scatter(ax, xs, ys, names, "points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of kernel arguments)")
    ax.set_ylabel("achieved GFLOP/s (whole model)")
    title = f"Achieved GFLOP/s vs the device's roofline: {label}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return {"name": stem.name, "title": title, "kind": "roofline",
            "points": [{"model": n, "x": x, "y": y} for n, x, y in zip(names, xs, ys, strict=True)],
            "files": _save(fig, stem)}


def _op_classes(members, label: str, stem: Path) -> dict[str, Any] | None:
    profiled = [m for m in members if m.get("profile")]
    if not profiled:
        return None
    plt = _plt()
    classes = [c for c in CLASS_COLORS if any(c == x["op_class"] for m in profiled
                                              for x in m["profile"]["classes"])]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    width = 0.8 / max(1, len(classes))
    names = [m["model"] for m in profiled]
    points = []
    for j, c in enumerate(classes):
        gf, share = [], []
        for m in profiled:
            entry = next((x for x in m["profile"]["classes"] if x["op_class"] == c), None)
            gf.append(entry["gflops"] if entry else 0.0)
            share.append(100 * entry["share"] if entry else 0.0)
            if entry:
                points.append({"model": m["model"], "op_class": c, "x": entry["gflops"],
                               "y": 100 * entry["share"]})
        pos = [i + (j - (len(classes) - 1) / 2) * width for i in range(len(profiled))]
        top.bar(pos, gf, width, color=CLASS_COLORS[c], label=c)
        bottom_acc = [sum(100 * (next((x for x in m["profile"]["classes"] if x["op_class"] == k), {})
                                 .get("share", 0.0)) for k in classes[:j]) for m in profiled]
        bottom.bar(range(len(profiled)), share, 0.6, bottom=bottom_acc, color=CLASS_COLORS[c])
    for ax in (top, bottom):
        ax.set_xticks(range(len(profiled)), names, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    top.set_ylabel("achieved GFLOP/s")
    bottom.set_ylabel("share of latency (%)")
    top.legend(fontsize=7, ncol=5)
    title = f"Operator classes: GFLOP/s and time share, {label}"
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    return {"name": stem.name, "title": title, "kind": "op_classes", "points": points,
            "models": names, "files": _save(fig, stem)}


def _accuracy_vs_latency(members, label: str, stem: Path) -> dict[str, Any] | None:
    pts = [(m["median_ms"], m["top1"], m["model"]) for m in members if m["top1"] is not None]
    if not pts:
        return None
    plt = _plt()
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], "points")
    ax.plot([p[0] for p in front], [p[1] for p in front], "r--", label="Pareto front")
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    title = f"Accuracy vs latency: {label}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return {"name": stem.name, "title": title, "kind": "accuracy_vs_latency",
            "pareto": [p[2] for p in front],
            "points": [{"model": n, "x": x, "y": y} for x, y, n in pts], "files": _save(fig, stem)}


def _across_devices(groups, stem: Path) -> dict[str, Any]:
    plt = _plt()
    labels = [_group_label(d, t, any(m["emulated"] for m in ms)) for (d, t), ms in sorted(groups.items())]
    models = sorted({m["model"] for ms in groups.values() for m in ms})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(labels))
    points = []
    for j, ((_, ms), label) in enumerate(zip(sorted(groups.items()), labels, strict=True)):
        by_model = {m["model"]: m["median_ms"] for m in ms}
        ys = [by_model.get(n, 0.0) for n in models]
        pos = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(models))]
        ax.bar(pos, ys, width, label=label)
        points += [{"model": n, "device": label, "y": by_model[n]} for n in models if n in by_model]
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log scale)")
    title = "The same models across devices"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return {"name": stem.name, "title": title, "kind": "across_devices", "points": points,
            "files": _save(fig, stem)}
