"""`edgecompile report` from a real matrix run (bench with kernel profile, eval, peak), checked
figure by figure against the JSON lines it came from, and plot by plot against the rows.

The run: three families at 32 px on this host (matrix without a tracker), 3-class random
images (accuracy is not the point: that every figure is carried over exactly is)."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgecompile.errors import EdgeCompileError
from edgecompile.measure.matrix import MatrixOptions, run_matrix
from edgecompile.report.rows import COLUMNS, NOT_A_LATENCY
from edgecompile.report.write import make_report

pytestmark = pytest.mark.tvm
MODELS = ("fasternet_t0", "mobilenet_v2_035", "shufflenet_v2_x0_5")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (images / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / c / f"{i}.png")
    path = root / "results.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGECOMPILE_CACHE", str(root / "cache"))
    try:
        run_matrix(MatrixOptions(models=MODELS, targets=("x86",), data=images, results=path,
                                 output_dir=root / "build", input_size=32, bench_min_time_s=0.1,
                                 bench_min_runs=5, profile_runs=1, peak=True), say=lambda _: None)
    finally:
        mp.undo()
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected(path):
    """What each row must say, computed here from the JSON lines themselves."""
    lines = _lines(path)
    (peak,) = [r for r in lines if r["kind"] == "peak"]
    out = {}
    for r in lines:
        if r["kind"] != "matrix":
            continue
        b, e = r["bench"], r["eval"]
        out[b["model"]] = {
            "median_ms": b["latency_ms"]["median"], "p90_ms": b["latency_ms"]["p90"],
            "p99_ms": b["latency_ms"]["p99"], "macs_m": b["macs"] / 1e6,
            "params_m": b["params"] / 1e6, "gflops": b["gflops"],
            "cold_start_ms": b["cold_start_ms"]["total"], "artifact_mb": b["artifact_bytes"] / 1e6,
            "peak_pct": 100 * b["gflops"] / peak["compute_gflops"], "top1": e["top1"],
            "top5": e["top5"], "agreement": e["top1_agreement"], "input_size": 32,
        }
    return out


def test_every_figure_in_the_html_and_csv_is_the_json_lines(results, tmp_path):
    rep = make_report([results], tmp_path / "out")
    expected = _expected(results)
    assert sorted(expected) == sorted(MODELS) and not rep.problems
    html = (tmp_path / "out" / "index.html").read_text()
    body_rows = re.findall(r"<tr>(<td.*?)</tr>", html)
    assert len(body_rows) == len(MODELS)
    for row in body_rows:
        cells = dict(re.findall(r"data-key='(\w+)' data-value='([^']*)'", row))
        want = expected[cells["model"]]
        for key, value in want.items():
            assert float(cells[key]) == pytest.approx(value, rel=1e-12), (cells["model"], key)
    with open(tmp_path / "out" / "summary.csv") as f:
        table = list(csv.DictReader(f))
    headers = dict(COLUMNS)
    assert len(table) == len(MODELS)
    for line in table:
        want = expected[line["model"]]
        for key, value in want.items():
            assert float(line[headers[key]]) == pytest.approx(value, rel=1e-12), (line["model"], key)
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| {m} |" in md for m in MODELS)


def test_each_plot_holds_one_point_per_architecture(results, tmp_path):
    rep = make_report([results], tmp_path / "out")
    kinds = {p["kind"]: p for p in rep.plots}
    assert {"latency_vs_macs", "roofline", "op_classes", "accuracy_vs_latency"} <= set(kinds)
    for kind in ("latency_vs_macs", "roofline", "accuracy_vs_latency"):
        p = kinds[kind]
        assert sorted(pt["model"] for pt in p["points"]) == sorted(MODELS), kind
        svg = (tmp_path / "out" / "plots" / p["files"][1]).read_text()
        group = re.search(r'<g id="points">(.*?)</g>', svg, re.S).group(1)
        assert group.count("<use ") == len(MODELS), kind  # one marker per architecture, drawn
        assert (tmp_path / "out" / "plots" / p["files"][0]).stat().st_size > 1000
    assert "Pearson r =" in kinds["latency_vs_macs"]["title"]
    assert sorted(kinds["op_classes"]["models"]) == sorted(MODELS)
    pconv = [pt for pt in kinds["op_classes"]["points"] if pt["op_class"] == "pconv"]
    assert [pt["model"] for pt in pconv] == ["fasternet_t0"]


def test_bad_lines_are_named_and_the_rest_still_reported(results, tmp_path):
    lines = results.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    old = json.loads(lines[0])["bench"] | {"kind": "bench"}
    del old["macs"]
    no_latency = json.loads(lines[1])["bench"] | {"kind": "bench", "latency_ms": {}}
    bad.write_text("\n".join([lines[0], '{"kind": "bench", "model": "x', json.dumps(old),
                              json.dumps(no_latency), "[1, 2]"]) + "\n")
    rep = make_report([bad, tmp_path / "missing.jsonl"], tmp_path / "out")
    problems = "\n".join(rep.problems)
    assert f"{bad}:2: not a JSON line" in problems
    assert f"{bad}:3: a bench result without MACs" in problems
    assert f"{bad}:4: a bench result without a latency" in problems
    assert f"{bad}:5: not a result of" in problems
    assert "missing.jsonl: cannot read" in problems
    assert len(rep.rows) == 1 and (tmp_path / "out" / "index.html").is_file()
    assert "Skipped" in (tmp_path / "out" / "index.html").read_text()
    # Nothing usable: an error (the CLI exits non-zero), not an empty report.
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text('{"kind": "bench"\n')
    with pytest.raises(EdgeCompileError, match="no usable results"):
        make_report([only_bad], tmp_path / "none")
    r = subprocess.run([sys.executable, "-m", "edgecompile", "report", str(only_bad), "-o",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no usable results" in r.stderr


def test_emulated_results_are_labelled_not_a_latency(results, tmp_path):
    lines = _lines(results)
    emulated = [r["bench"] | {"kind": "bench", "device": "RPC server 127.0.0.1:1",
                              "target": "rpi4", "emulated": "qemu-aarch64 -cpu cortex-a72"}
                for r in lines if r["kind"] == "matrix"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(results.read_text() + "".join(json.dumps(r) + "\n" for r in emulated))
    rep = make_report([mixed], tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    assert f"rpi4 on RPC server 127.0.0.1:1 <span class='emulated'>({NOT_A_LATENCY})</span>" in html
    titles = [p["title"] for p in rep.plots if "rpi4" in p["title"]]
    assert titles and all(NOT_A_LATENCY in t for t in titles)
    assert any(p["kind"] == "across_devices" for p in rep.plots)


def test_report_cli_prints_the_main_table(results, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgecompile", "report", str(results), "-o",
                        str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert all(m in r.stdout for m in MODELS) and "median ms" in r.stdout
    assert (tmp_path / "cli" / "index.html").is_file()


def test_the_html_in_a_real_headless_chromium(results, tmp_path):
    """Debian's Chromium, headless, through Selenium and chromium-driver (installed by the setup
    script): every image decodes, the console has no errors, a header click sorts the table,
    and the page's screenshot is not blank."""
    import io

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    make_report([results], tmp_path / "out")
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get((tmp_path / "out" / "index.html").as_uri())
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 4
        for img in images:  # decoded, with a size: a broken data URI has naturalWidth 0
            width = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            assert width > 100
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        def column(key):
            return [float(c.get_attribute("data-value")) for c in
                    driver.find_elements(By.CSS_SELECTOR, f"table.sortable td[data-key='{key}']")]

        header = driver.find_elements(By.CSS_SELECTOR, "table.sortable th")[
            [k for k, _ in COLUMNS].index("median_ms")]
        header.click()
        assert column("median_ms") == sorted(column("median_ms"))
        header.click()
        assert column("median_ms") == sorted(column("median_ms"), reverse=True)

        from PIL import Image as PILImage

        shot = PILImage.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        lo, hi = shot.getextrema()
        assert hi - lo > 100 and len(shot.getcolors(256)) > 20  # text and plots, not a blank page
    finally:
        driver.quit()


def test_the_committed_farm_run_reports_figure_for_figure(tmp_path):
    """results/report-example.jsonl: the real x86 + emulated rpi4 farm run behind the README's
    example (scripts/report_example.py). Every row's figures are its JSON lines', the rpi4 rows
    are labelled emulation, and each per-device plot has one point per architecture."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "results" / "report-example.jsonl"
    lines = _lines(path)
    jobs = [r for r in lines if r["kind"] == "matrix" and r["status"] == "ok"]
    peaks = {p["target"]: p for p in lines if p["kind"] == "peak"}
    rep = make_report([path], tmp_path / "out")
    assert len(rep.rows) == len(jobs) == 14 and not rep.problems
    rows = {(r["target"], r["model"]): r for r in rep.rows}
    for job in jobs:
        b, e = job["bench"], job["eval"]
        row = rows[(b["target"], b["model"])]
        assert row["median_ms"] == b["latency_ms"]["median"] and row["top1"] == e["top1"]
        assert row["peak_pct"] == pytest.approx(100 * b["gflops"] / peaks[b["target"]]["compute_gflops"])
        assert bool(row["emulated"]) == (b["target"] == "rpi4")
    for p in rep.plots:
        if p["kind"] in ("latency_vs_macs", "roofline", "accuracy_vs_latency"):
            assert len(p["points"]) == 7, p["name"]
            assert ("rpi4" in p["title"]) == (NOT_A_LATENCY in p["title"])
