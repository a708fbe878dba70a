"""The CLI's contract: one-line errors with candidates, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgecompile", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, closest", [
    (["build", "fastrnet_t0", "--target", "x86"], "fasternet_t0"),
    (["build", "mobilenet_v2_100", "--target", "rpi4b"], "rpi4"),
    (["build", "squeezenet1_2", "--target", "x86"], "squeezenet1_1"),
    (["list", "--family", "mobilenetv2"], "mobilenet_v2"),
])
def test_unknown_names_exit_2_with_candidates_and_closest(args, closest):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecompile: error: unknown")
    assert f"Did you mean '{closest}'?" in lines[0]
    assert r.stdout == ""


def test_list_json_covers_every_family():
    r = run("list", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    families = {row["family"] for row in rows}
    assert families == {"squeezenet", "mobilenet_v1", "mobilenet_v2", "shufflenet_v1",
                        "shufflenet_v2", "fasternet", "mobilenext"}
    assert all(row["params_M"] > 0 and row["MACs_M"] > 0 and row["input"] >= 32 for row in rows)


def test_list_json_carries_the_registry_exact_counts():
    from edgecompile.models import get_model_info, list_models

    r = run("list", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert sorted(rows) == sorted(list_models())
    for name, row in rows.items():
        info = get_model_info(name)
        # Exact integers, not the rounded millions (which stay for compatibility).
        assert type(row["params"]) is int and row["params"] == info.params, name
        assert type(row["macs"]) is int and row["macs"] == info.macs, name
        assert row["params_M"] == round(info.params / 1e6, 2) and row["MACs_M"] == round(info.macs / 1e6, 1)


def test_list_table_and_targets_table():
    r = run("list")
    assert r.returncode == 0 and "fasternet_t0" in r.stdout and "MACs_M" in r.stdout
    r = run("targets")
    assert r.returncode == 0 and "rpi4" in r.stdout and "cortex-a72" in r.stdout


def test_bad_input_size_and_missing_weights_are_clear(tmp_path):
    r = run("build", "squeezenet1_1", "--target", "x86", "--input-size", "16", "-o", str(tmp_path))
    assert r.returncode == 2 and "minimum of 32" in r.stderr and "Traceback" not in r.stderr
    r = run("build", "squeezenet1_1", "--target", "x86", "--weights", str(tmp_path / "no.pth"),
            "-o", str(tmp_path))
    assert r.returncode == 2 and "no such file" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_verify_and_info_on_a_non_artifact(tmp_path):
    for cmd in ("verify", "info"):
        r = run(cmd, str(tmp_path))
        assert r.returncode == 1 and "not an artifact directory" in r.stderr
        assert "Traceback" not in r.stderr
