"""Rows for `list`, `targets` and `info`, rendered as an aligned table or JSON."""

from __future__ import annotations

import json
from typing import Any

from edgecompile.pipeline.artifact import Artifact


def model_rows(family: str | None = None, exact: bool = False) -> list[dict[str, Any]]:
    """One row per variant, counts rounded to millions for people; ``exact`` adds the registry's
    integer ``params`` and ``macs`` as well (JSON is read by machines, which must not get rounding)."""
    from edgecompile.models import get_model_info, list_models

    rows = []
    for name in list_models(family):
        i = get_model_info(name)
        row = {
            "model": i.name, "family": i.family, "params_M": round(i.params / 1e6, 2),
            "MACs_M": round(i.macs / 1e6, 1), "input": i.input_size, "top1": i.top1,
        }
        if exact:
            row.update(params=i.params, macs=i.macs)
        rows.append(row)
    return rows


def target_rows() -> list[dict[str, Any]]:
    from edgecompile.targets import get_target, list_targets

    rows = []
    for name in list_targets():
        p = get_target(name)
        rows.append({
            "target": p.name, "device": p.device, "tvm": p.target.get("mcpu") or p.target["kind"],
            "rpc_key": p.rpc_key, "description": p.description,
        })
    return rows


def as_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def as_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(_is_number(r[c]) for r in rows) for c in cols]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def describe(a: Artifact) -> str:
    m = a.manifest
    mi, tg, pl = m["model"], m["target"], m["pipeline"]
    lines = [
        f"artifact   {a.path}",
        f"model      {mi['name']} ({mi['family']}), {mi['params_counted']:,} params, "
        f"{mi['macs_counted'] / 1e6:.1f}M MACs at {m['spec']['input_size']}",
        f"input      {m['input']['name']} {m['input']['shape']} {m['input']['dtype']} "
        f"{m['input']['layout']}, mean {m['input']['mean']}, std {m['input']['std']}",
        f"output     {m['output']['name']} {m['output']['shape']} {m['output']['dtype']}",
        f"weights    {m['spec']['weights']}",
        f"target     {tg['preset']} ({tg['device']}): {json.dumps(tg['tvm_target'])}",
        f"pipeline   opset {pl['opset']}, {pl['nodes_exported']} -> {pl['nodes_final']} nodes, "
        f"{pl['bn_folded']} BN folded, {pl['bn_as_affine']} BN as Mul+Add",
        f"tuning     {m['tuning']['records'] or 'none (default schedules)'}",
        "versions   " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "files",
        *(f"  {n:<12} {f['bytes']:>12,} bytes  sha256 {f['sha256']}" for n, f in m["files"].items()),
    ]
    return "\n".join(lines)
