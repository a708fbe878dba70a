"""rpi4 artifacts of every family run on the emulated Raspberry Pi 4 over RPC and match PyTorch.
(Emulation is ~20x slower than a real Pi: functional checks only, never latency.)"""

import subprocess
import sys

import pytest

from edgecompile.devices.spec import DeviceSpec
from edgecompile.measure.verify import verify
from edgecompile.models import list_families, list_models
from edgecompile.pipeline.build import build
from edgecompile.pipeline.spec import BuildOptions

pytestmark = [pytest.mark.tvm, pytest.mark.rpc]
ONE_PER_FAMILY = [list_models(f)[0] for f in list_families()]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_on_the_emulated_rpi4(name, tmp_path, emulated_rpi4):
    a = build(BuildOptions(name, "rpi4", output_dir=tmp_path, input_size=64), quiet=True)
    r = verify(a.path, samples=2, device=DeviceSpec(rpc=emulated_rpi4.address))
    assert r.ok and r.tvm.top1_agreement == 1.0, (r.onnx, r.tvm)


def test_fasternet_t0_rpi4_at_224_through_the_cli(tmp_path, emulated_rpi4):
    cli = [sys.executable, "-m", "edgecompile"]
    r = subprocess.run(cli + ["build", "fasternet_t0", "--target", "rpi4", "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    artifact = r.stdout.strip()
    r = subprocess.run(cli + ["verify", artifact, "--samples", "1", "--rpc", emulated_rpi4.address],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    assert f"RPC server {emulated_rpi4.address}" in r.stdout


def test_kernel_profile_on_the_emulated_pi_says_it_is_emulated(tmp_path, emulated_rpi4):
    """bench --profile over RPC on the (NEON) emulated Pi: every kernel timed there, classified
    (FasterNet's PConv as such), and the record marked as emulation, never a latency."""
    from edgecompile.measure.bench import BenchOptions, bench_artifact

    a = build(BuildOptions("fasternet_t0", "rpi4", output_dir=tmp_path, input_size=64), quiet=True)
    r = bench_artifact(a, DeviceSpec(rpc=emulated_rpi4.address),
                       BenchOptions(warmup=1, min_time_s=0, min_runs=2, round_runs=2, profile_runs=1))
    assert r["emulated"] == "qemu-aarch64 -cpu cortex-a72"
    classes = {c["op_class"]: c for c in r["profile"]["classes"]}
    assert {"pconv", "pointwise", "conv", "data_movement"} <= set(classes)
    assert classes["pconv"]["calls"] == 1 + 2 + 8 + 2
    assert all(k["ms_per_call"] > 0 for k in r["profile"]["kernels"])
