"""The whole pipeline with the real TVM: every variant compiled for x86 and checked against
PyTorch; one variant per family compiled for arm64 with Debian's cross compiler.

Inputs are 64x64 for the all-variant sweep (every family downsamples by 32, so every layer
still runs; compile time barely depends on resolution) and 224x224 for the flagship checks.
"""

import re
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from edgecompile.errors import EdgeCompileError
from edgecompile.measure.verify import verify
from edgecompile.models import create_model, list_families, list_models
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions

pytestmark = pytest.mark.tvm
SWEEP_SIZE = 64
ONE_PER_FAMILY = [list_models(f)[0] for f in list_families()]
AARCH64 = 183  # ELF e_machine


def _bn_modules(name: str) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in create_model(name).modules())


def _check_artifact(a: Artifact, name: str) -> None:
    assert a.hash_mismatches() == []
    graph = onnx.load(a.onnx)
    assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)
    pl = a.manifest["pipeline"]
    assert pl["bn_folded"] + pl["bn_as_affine"] == _bn_modules(name)
    assert a.manifest["model"]["name"] == name


@pytest.mark.parametrize("name", list_models())
def test_every_variant_on_x86_matches_pytorch(name, tmp_path):
    a = build(BuildOptions(name, "x86", output_dir=tmp_path, input_size=SWEEP_SIZE), quiet=True)
    _check_artifact(a, name)
    r = verify(a.path)
    assert r.onnx.ok, r.onnx
    assert r.tvm.ok, r.tvm
    assert r.tvm.top1_agreement == 1.0


@pytest.mark.parametrize("name", ["mobilenet_v2_100", "fasternet_t0"])
def test_flagship_at_224_on_x86_matches_pytorch(name, tmp_path):
    a = build(BuildOptions(name, "x86", output_dir=tmp_path), quiet=True)
    assert a.manifest["input"]["shape"] == [1, 3, 224, 224]
    r = verify(a.path, samples=2)
    assert r.ok, (r.onnx, r.tvm)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_builds_for_arm64(name, tmp_path):
    a = build(BuildOptions(name, "arm64", output_dir=tmp_path, input_size=SWEEP_SIZE), quiet=True)
    _check_artifact(a, name)
    head = a.library.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == AARCH64
    assert a.manifest["target"]["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(EdgeCompileError, match="cannot run"):
        verify(a.path)  # an aarch64 library does not load here; running it is the RPC runner's job


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgecompile", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_build_verify_info(tmp_path):
    r = cli("build", "shufflenet_v2_x0_5", "--target", "x86", "-o", str(tmp_path),
            "--input-size", "96")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "shufflenet_v2_x0_5-x86"
    assert r.stdout.strip() == str(path)  # stdout is the artifact path only
    # Each stage in order, each with its own time: "[i/5] stage   done in 1.2s".
    for i, stage in enumerate(("model", "export", "simplify", "fold-bn", "compile"), 1):
        assert re.search(rf"^\[{i}/5\] {re.escape(stage)} +done in \d+\.\ds$", r.stderr, re.M), r.stderr
    r = cli("verify", str(path))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = cli("info", str(path))
    assert r.returncode == 0 and "shufflenet_v2_x0_5" in r.stdout and "sha256" in r.stdout
    (path / "model.so").write_bytes(b"tampered")
    r = cli("verify", str(path))
    assert r.returncode == 1 and "sha256" in r.stderr and "Traceback" not in r.stderr


def test_weights_from_a_checkpoint_in_a_wrapped_layout(tmp_path):
    torch.manual_seed(3)
    model = create_model("squeezenet1_1")
    for m in model.modules():  # trained-like weights, distinct from the parity init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    ckpt = tmp_path / "ckpt.pth"
    # The usual training-script container with DataParallel's prefix.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               ckpt)
    a = build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path, input_size=SWEEP_SIZE,
                           weights=ckpt), quiet=True)
    assert a.manifest["spec"]["weights"]["source"] == "file"
    assert verify(a.path).ok
    exported = onnx.load(a.onnx)
    w0 = next(t for t in exported.graph.initializer if list(t.dims) == [64, 3, 3, 3])
    assert torch.allclose(torch.from_numpy(onnx.numpy_helper.to_array(w0).copy()),
                          model.features[0].weight.detach())


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    ckpt = tmp_path / "other.pth"
    torch.save(create_model("squeezenet1_0").state_dict(), ckpt)
    with pytest.raises(EdgeCompileError) as e:
        build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path, weights=ckpt), quiet=True)
    msg = str(e.value)
    assert "does not fit squeezenet1_1" in msg and "wrong shape" in msg and "features.0.weight" in msg
    assert not (tmp_path / "squeezenet1_1-x86").exists()


def test_interrupted_build_keeps_the_existing_artifact(tmp_path, monkeypatch):
    good = build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path, input_size=SWEEP_SIZE),
                 quiet=True)
    before = good.manifest["files"]

    def dies_half_way(executable, path, cross_compiler=None):
        path.write_bytes(b"half a library")
        raise KeyboardInterrupt  # Ctrl-C while the library is being written

    monkeypatch.setattr("edgecompile.pipeline.stages.compile.compiler.export_library", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path, input_size=SWEEP_SIZE),
              quiet=True)
    after = Artifact.load(good.path)
    assert after.manifest["files"] == before and after.hash_mismatches() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["squeezenet1_1-x86"]  # no temp left


def test_missing_cross_compiler_fails_before_any_work(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "board.toml").write_text('description = "b"\ncross_compiler = "no-such-g++"\n'
                                        '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n')
    monkeypatch.setenv("EDGECOMPILE_TARGETS", str(presets))
    with pytest.raises(EdgeCompileError, match="no-such-g\\+\\+.*not found"):
        build(BuildOptions("squeezenet1_1", "board", output_dir=tmp_path / "out"), quiet=True)
    assert not (tmp_path / "out").exists()
