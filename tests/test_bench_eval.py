"""bench and eval, locally and over a real RPC server; statistics checked against raw timings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompile.devices.services import start_native_server
from edgecompile.devices.spec import DeviceSpec
from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.measure.bench import BenchOptions, bench_artifact, latency_stats
from edgecompile.measure.dataset import scan
from edgecompile.measure.evaluate import evaluate
from edgecompile.pipeline.build import build
from edgecompile.pipeline.preprocess import Preprocess
from edgecompile.pipeline.spec import BuildOptions, ModelSpec

QUICK = BenchOptions(warmup=2, min_time_s=0.2, min_runs=15, round_runs=5)


def test_latency_stats_match_a_hand_computation():
    raw = [0.004, 0.001, 0.002, 0.003, 0.010]  # seconds
    s = latency_stats(raw)
    ms = np.array(raw) * 1e3
    assert s["median"] == pytest.approx(3.0) and s["mean"] == pytest.approx(4.0)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(10.0)
    assert s["std"] == pytest.approx(float(np.std(ms, ddof=1)))
    assert s["p90"] == pytest.approx(float(np.percentile(ms, 90)))  # linear interpolation: 7.6
    assert s["p90"] == pytest.approx(7.6) and s["runs"] == 5


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build(BuildOptions("mobilenet_v2_035", "x86", output_dir=tmp_path_factory.mktemp("a"),
                              input_size=64), quiet=True)


@pytest.mark.tvm
def test_bench_locally(artifact):
    r = bench_artifact(artifact, opts=QUICK)
    lat = r["latency_ms"]
    assert lat["runs"] >= QUICK.min_runs
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["cold_start_ms"]["total"] >= r["cold_start_ms"]["first_run"] > 0
    assert r["threads"] >= 1 and r["artifact_bytes"] == artifact.library.stat().st_size
    assert r["gflops"] == pytest.approx(2 * r["macs"] / (lat["median"] / 1e3) / 1e9)


def _check_profile(p, artifact, median_ms):
    import onnx

    kernels = p["kernels"]
    # Every convolution of the graph is one call of a (fused) conv kernel, whatever fusion did.
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(artifact.onnx)).graph.node)
    conv_classes = ("conv", "pointwise", "depthwise", "grouped", "pconv")
    assert convs == 52 and sum(k["calls"] for k in kernels if k["op_class"] in conv_classes) == convs
    assert all(k["ms_per_call"] > 0 and k["ms"] == pytest.approx(k["ms_per_call"] * k["calls"])
               for k in kernels)
    assert sum(k["calls"] for k in kernels) == len(p["sequence"])
    assert p["kernels_ms"] == pytest.approx(sum(k["ms"] for k in kernels))
    assert p["outside_kernels_ms"] == pytest.approx(median_ms - p["kernels_ms"])
    assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
    by_class = {c["op_class"]: c for c in p["classes"]}
    assert {"depthwise", "pointwise"} <= set(by_class)
    for c in p["classes"]:
        members = [k for k in kernels if k["op_class"] == c["op_class"]]
        assert c["ms"] == pytest.approx(sum(k["ms"] for k in members))
        assert c["gflops"] == pytest.approx(sum(k["flops"] for k in members) / (c["ms"] * 1e-3) / 1e9)


@pytest.mark.tvm
def test_profile_times_every_kernel_by_class(artifact):
    r = bench_artifact(artifact, opts=BenchOptions(min_time_s=0, min_runs=5, profile_runs=3))
    p = r["profile"]
    assert p["repeat"] == 3
    _check_profile(p, artifact, r["latency_ms"]["median"])
    # On this host each kernel is also timed inside whole inferences.
    assert all(k["ms_in_context"] > 0 for k in p["kernels"])
    assert p["kernels_in_context_ms"] == pytest.approx(sum(k["ms_in_context"] for k in p["kernels"]))
    for c in p["classes"]:
        members = [k for k in p["kernels"] if k["op_class"] == c["op_class"]]
        assert c["ms_in_context"] == pytest.approx(sum(k["ms_in_context"] for k in members))


@pytest.mark.tvm
def test_bench_thread_option_reaches_the_runtime(artifact):
    assert bench_artifact(artifact, opts=BenchOptions(min_time_s=0, min_runs=5, threads=1))["threads"] == 1


@pytest.mark.tvm
def test_more_threads_than_the_pool_has_is_an_error_not_a_silent_one(artifact):
    """TVM's pool is sized once per process; asking for more must not quietly run on fewer."""
    pool = int(os.environ["TVM_NUM_THREADS"])  # set by edgecompile before TVM starts (or conftest)
    with pytest.raises(EdgeCompileError, match=f"asked for {pool + 1} threads.*has {pool}"):
        bench_artifact(artifact, opts=BenchOptions(min_time_s=0, min_runs=5, threads=pool + 1))


@pytest.mark.tvm
@pytest.mark.rpc
def test_bench_and_eval_over_rpc(artifact, tmp_path, digits_like):
    with start_native_server(tmp_path) as server:
        device = DeviceSpec(rpc=server.address)
        r = bench_artifact(artifact, device, QUICK)
        e = evaluate(artifact, digits_like, device)
        # The kernel profile works on a remote device too: each kernel timed there.
        p = bench_artifact(artifact, device, BenchOptions(min_time_s=0, min_runs=3, profile_runs=2))
    _check_profile(p["profile"], artifact, p["latency_ms"]["median"])
    assert "kernels_in_context_ms" not in p["profile"]  # the VM cannot be instrumented over RPC
    assert r["device"] == f"RPC server {server.address}" and r["latency_ms"]["runs"] >= 15
    assert e["images"] == 12 and e["top1_agreement"] == 100.0


@pytest.mark.tvm
def test_bench_cli_json_and_compare(artifact, tmp_path):
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "edgecompile", "bench", str(artifact.path), "--min-time", "0.2",
           "--compare", "onnxruntime,torch", "--format", "json", "--results", str(results),
           "--profile", "--profile-runs", "2", "--trace", str(tmp_path / "trace.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    engines = record["compare"]["engines"]
    assert set(engines) == {"tvm", "onnxruntime", "torch"} and engines["tvm"]["tvm_ratio"] == 1.0
    for e in ("onnxruntime", "torch"):
        assert engines[e]["tvm_ratio"] == pytest.approx(engines["tvm"]["median_ms"] / engines[e]["median_ms"])
        assert engines[e]["tvm_ratio_best_round"] == pytest.approx(
            engines["tvm"]["best_round_ms"] / engines[e]["best_round_ms"])
        # The quietest round's median: a real run time, below the slowest tenth of all runs.
        assert 0 < engines[e]["best_round_ms"] <= engines[e]["p90_ms"]
    assert json.loads(results.read_text().splitlines()[-1]) == record
    assert record["profile"]["repeat"] == 2 and record["profile"]["kernels"]
    trace = json.loads((tmp_path / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in spans] == record["profile"]["sequence"]
    for a, b in zip(spans[:-1], spans[1:], strict=True):  # one after the other, no gaps
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=0.01)


@pytest.fixture(scope="module")
def digits_like(tmp_path_factory):
    """An ImageFolder of 3 classes x 4 small images, plus one file that is not an image."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (root / c).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.tvm
def test_eval_counts_and_reports_bad_images(artifact, digits_like):
    e = evaluate(artifact, digits_like)
    assert e["images"] == 12 and e["bad_images"] == 1 and "broken.jpg" in e["bad_examples"][0]
    # Recompute PyTorch's top-1 by hand on the same preprocessed images.
    prep = Preprocess.from_manifest(artifact.manifest)
    model = ModelSpec(**artifact.manifest["spec"]).create()
    hits = 0
    for label, c in enumerate(("cat", "dog", "fox")):
        for i in range(4):
            with torch.no_grad():
                x = torch.from_numpy(prep(digits_like / c / f"{i}.png")[None])
                hits += int(model(x).argmax() == label)
    assert e["torch_top1"] == pytest.approx(100 * hits / 12)
    assert e["top1"] == pytest.approx(e["torch_top1"]) and e["top1_agreement"] == 100.0
    assert e["max_abs_logit_diff"] < 1e-3


def test_preprocess_resizes_crops_and_normalises(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 75:125] = 255  # a white bar in the centre columns
    Image.fromarray(img).save(tmp_path / "a.png")
    x = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=1.0)(tmp_path / "a.png")
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # shorter side 100 -> 32, width 200 -> 64, centre crop keeps columns 16..48 of 64:
    # the bar (columns 24..40 after resize) is white -> (1 - 0.5) / 0.25 = 2
    assert x[:, :, 14:18].max() == pytest.approx(2.0)
    assert x[:, :, 0].max() == pytest.approx(-2.0)


def test_imagenet_synset_subset_needs_a_class_index(tmp_path):
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / wnid / "x.JPEG")
    with pytest.raises(UsageError, match="--class-index"):
        scan(tmp_path)
    index = tmp_path.parent / "index.json"
    index.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"],
                                 "2": ["n01484850", "great_white_shark"]}))
    ds = scan(tmp_path, class_index=index)
    assert ds.layout == "imagenet" and [s[1] for s in ds.samples] == [0, 1]


def test_folders_outside_the_models_classes_are_refused(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "x").mkdir()
    with pytest.raises(UsageError, match="no class for: x"):
        scan(tmp_path, model_classes=[str(i) for i in range(10)])
