"""`edgecompile eval`: accuracy of a compiled artifact on its device, and its fidelity to PyTorch.

Each image is preprocessed once (the artifact's own resize / crop / mean / std), then run
through the compiled library on the device and through the PyTorch model the artifact was
built from, on this host. Reported: top-1 / top-5 of both, top-1 agreement, and the max abs
logit difference. An image that cannot be decoded is counted and listed, not fatal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompile.backend import rpc_client
from edgecompile.devices.spec import DeviceSpec
from edgecompile.measure.dataset import scan
from edgecompile.measure.load import load_artifact_model
from edgecompile.measure.results import append_jsonl, record_header
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.build import build_or_reuse
from edgecompile.pipeline.preprocess import Preprocess
from edgecompile.pipeline.spec import ModelSpec
from edgecompile.progress import Ticker


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None  # first N images (in a fixed, class-interleaved order)
    class_index: Path | None = None


def _interleave(samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    # Round-robin over classes, so --limit N still covers every class.
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    lists = list(by_class.values())
    out = []
    for i in range(max(len(v) for v in lists)):
        out += [v[i] for v in lists if i < len(v)]
    return out


def _topk_hits(logits: np.ndarray, label: int, k: int) -> bool:
    return label in np.argsort(-logits)[:k]


def run_eval(model_or_dir: str, target: str | None, data: Path, device: DeviceSpec,
             opts: EvalOptions, *, output_dir: Path = Path("build"), input_size: int | None = None,
             results: Path | None = None) -> dict[str, Any]:
    """`edgecompile eval`: the artifact (built first, or reused, when given a model name)
    evaluated on its device with progress on stderr; ``results`` appends the record."""
    rpc_client.check_device(device)  # before the build, not after it
    artifact = build_or_reuse(model_or_dir, target, output_dir, input_size)
    ticker = Ticker(f"eval {artifact.manifest['model']['name']} on {device.describe()}")
    record = evaluate(artifact, data, device, opts, progress=lambda i, n, top1, s: ticker.update(
        f"{i}/{n} images, top-1 {top1:.2f}%, ETA {s / i * (n - i):.0f}s"))
    ticker.done()
    if results:
        append_jsonl(results, record)
    return record


def evaluate(a: Artifact, data: Path, device: DeviceSpec | None = None,
             opts: EvalOptions | None = None, progress=None, model=None) -> dict[str, Any]:
    """Accuracy of ``a`` on ``data``; ``model`` reuses an already loaded artifact."""
    device, opts = device or DeviceSpec(), opts or EvalOptions()
    num_classes = a.manifest["output"]["shape"][-1]
    images = scan(data, a.manifest["output"].get("classes"), num_classes, opts.class_index)
    samples = _interleave(images.samples)[: opts.limit]
    prep = Preprocess.from_manifest(a.manifest)
    model = model or load_artifact_model(a, device)
    reference = ModelSpec(**a.manifest["spec"]).create().eval()

    hits = {"tvm_top1": 0, "tvm_top5": 0, "torch_top1": 0, "torch_top5": 0, "agree": 0}
    bad: list[str] = []
    max_diff, done, start = 0.0, 0, time.perf_counter()
    for i, (path, label) in enumerate(samples):
        try:
            x = prep(path)[None]
        except Exception as e:  # PIL raises many types for a broken file
            bad.append(f"{path}: {type(e).__name__}: {e}")
            continue
        out = model.run(x)[0]
        with torch.no_grad():
            ref = reference(torch.from_numpy(x)).numpy()[0]
        k5 = min(5, num_classes)
        hits["tvm_top1"] += int(out.argmax() == label)
        hits["tvm_top5"] += int(_topk_hits(out, label, k5))
        hits["torch_top1"] += int(ref.argmax() == label)
        hits["torch_top5"] += int(_topk_hits(ref, label, k5))
        hits["agree"] += int(out.argmax() == ref.argmax())
        max_diff = max(max_diff, float(np.abs(out - ref).max()))
        done += 1
        if progress:
            progress(i + 1, len(samples), 100.0 * hits["tvm_top1"] / done,
                     time.perf_counter() - start)

    pct = {k: (100.0 * v / done if done else 0.0) for k, v in hits.items()}
    return record_header("eval", a, device.describe(), model.server) | {
        "input_size": a.manifest["input"]["shape"][-1],
        "emulated": model.device_info.get("emulated"),
        "data": str(data),
        "layout": images.layout,
        "images": done,
        "bad_images": len(bad),
        "bad_examples": bad[:10],
        "top1": pct["tvm_top1"], "top5": pct["tvm_top5"],
        "torch_top1": pct["torch_top1"], "torch_top5": pct["torch_top5"],
        "top1_agreement": pct["agree"],
        "max_abs_logit_diff": max_diff,
        "seconds": time.perf_counter() - start,
    }


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("model", f"{r['model']} -> {r['target']} on {r['device']}"),
        ("data", f"{r['data']} ({r['layout']}), {r['images']} images, {r['bad_images']} unreadable"),
        ("top-1", f"{r['top1']:.2f}%  (PyTorch {r['torch_top1']:.2f}%)"),
        ("top-5", f"{r['top5']:.2f}%  (PyTorch {r['torch_top5']:.2f}%)"),
        ("fidelity", f"top-1 agreement {r['top1_agreement']:.2f}%, max abs logit diff "
                     f"{r['max_abs_logit_diff']:.3g}"),
    ]
    lines = [f"{k:<9} {v}" for k, v in rows]
    lines += [f"unreadable {b}" for b in r["bad_examples"]]
    return "\n".join(lines)
