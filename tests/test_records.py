"""The shipped tuning records: installed with the package, looked up by graph fingerprint, and
applied by a default `build` of a model tuned for this CPU.

The fingerprint is what makes records-by-default cheap (a hash instead of a task extraction),
so it must ignore what kernels do not depend on (weight values) and see what they do (shapes).
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgecompile.pipeline.build import build, final_graph
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.targets import get_target
from edgecompile.tune import records as tuning
from edgecompile.tune.likeness import likeness, this_cpu, vendor

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def _fp(name, size, seed=0):
    g = final_graph(BuildOptions(name, "x86", input_size=size, seed=seed))
    return tuning.graph_fingerprint(g.folded, g.spec.input_shape)


def test_fingerprint_ignores_weights_and_sees_shapes():
    a = _fp("shufflenet_v2_x0_5", SIZE)
    assert a == _fp("shufflenet_v2_x0_5", SIZE, seed=1)
    assert a != _fp("shufflenet_v2_x0_5", SIZE + 32)
    assert a != _fp("shufflenet_v2_x1_0", SIZE)


def test_shipped_records_are_keyed_by_preset_and_cpu():
    shipped = [d for d in tuning.shipped_root().iterdir() if (d / tuning.KEY_FILE).is_file()]
    assert shipped, f"no records under {tuning.shipped_root()}"
    for d in shipped:
        key = json.loads((d / tuning.KEY_FILE).read_text())
        assert d.name == f"{key['preset']}-{key['target']['mcpu'] or key['target']['mtriple']}"
        assert (d / "database_tuning_record.json").stat().st_size > 0


def test_the_wheel_carries_the_records_inside_the_package(tmp_path):
    """edgecompile/records/<preset>-<cpu>/*.json in the wheel, and no top-level package of
    ours but edgecompile. Built from a copy, so setuptools' build/ stays out of the repo."""
    src = tmp_path / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "edgecompile", "models", "targets", "tuning"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("edgecompile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (REPO / "tuning").glob("*/*.json"):
        assert f"edgecompile/records/{f.parent.name}/{f.name}" in names
    assert "edgecompile/models/fasternet.py" in names and "edgecompile/targets/rpi4.toml" in names
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"edgecompile"}


@pytest.mark.parametrize("directory", sorted(p.name for p in tuning.shipped_root().glob("*/")
                                             if (p / tuning.MODELS_FILE).is_file()))
def test_every_shipped_model_still_fingerprints_the_same(directory):
    """An export change (torch, onnxsim, our stages) would silently orphan the records."""
    models = tuning.read_models(tuning.shipped_root() / directory)
    assert models
    for fp, entry in models.items():
        size = entry["input_shape"][-1]
        assert _fp(entry["model"], size) == fp, f"{entry['model']} at {size} no longer matches"


def _counted(fn, calls):
    def call(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)

    return call


def test_a_model_never_tuned_skips_the_records_at_no_cost(tmp_path, monkeypatch):
    # A database for this CPU that holds another model: the build must not extract tasks.
    from edgecompile.backend import metaschedule as tvm_tuning

    # The real functions, called through and counted: "no cost" is that the records lookup
    # neither converts the graph for tuning nor extracts its tasks (seconds per model).
    costly = []
    for name in ("prepare", "extract_tasks"):
        monkeypatch.setattr(tvm_tuning, name, _counted(getattr(tvm_tuning, name), costly))
    d = tuning.records_dir(get_target("x86"), tmp_path)
    d.mkdir(parents=True)
    (d / "database_tuning_record.json").write_text("")
    key = {"version": tuning.KEY_VERSION, "preset": "x86", "target": tuning.target_key(get_target("x86")),
           "isa": tuning.isa_of(get_target("x86")), "tuned_threads": 2}
    (d / tuning.KEY_FILE).write_text(json.dumps(key))
    (d / tuning.MODELS_FILE).write_text(json.dumps({"0" * 16: {"model": "x", "input_shape": [1]}}))
    monkeypatch.setenv("EDGECOMPILE_TUNING_DIR", str(tmp_path))
    a = build(BuildOptions("squeezenet1_1", "x86", output_dir=tmp_path / "out", input_size=SIZE),
              quiet=True)
    t = a.manifest["tuning"]
    assert t["records"] is None and "not tuned" in t["reason"] and t["searched"] == [str(d)]
    assert costly == []


def test_records_from_before_the_default_schedules_are_not_applied(tmp_path):
    """Version-1 records (tuned against TVM's naive code) are slower than the default
    schedules, and their workloads no longer exist: a build skips them and says why."""
    preset = get_target("x86")
    d = tuning.records_dir(preset, tmp_path)
    d.mkdir(parents=True)
    (d / "database_tuning_record.json").write_text("")
    key = {"version": 1, "preset": "x86", "target": tuning.target_key(preset)}
    (d / tuning.KEY_FILE).write_text(json.dumps(key))
    match = tuning.find_records(preset, tmp_path)
    assert match.directory is None and "version 1" in match.reason and "re-tune" in match.reason
    (d / tuning.KEY_FILE).write_text(json.dumps(key | {"version": tuning.KEY_VERSION,
                                                       "isa": tuning.isa_of(preset)}))
    assert tuning.find_records(preset, tmp_path).directory == d


def _fake_db(root, name, preset, **key):
    d = root / name
    d.mkdir(parents=True)
    (d / "database_tuning_record.json").write_text("")
    k = {"version": tuning.KEY_VERSION, "preset": preset.name, "target": tuning.target_key(preset),
         "isa": tuning.isa_of(preset)} | key
    (d / tuning.KEY_FILE).write_text(json.dumps(k))
    return d


def test_records_are_found_by_cpu_then_by_isa_class(tmp_path):
    """This CPU's database first; else one of the same ISA class (the kernels are the same on
    every CPU of a class); never one of another class; --records exact/none narrow it."""
    preset = get_target("x86")
    here = tuning.target_key(preset)
    other_cpu = _fake_db(tmp_path, "x86-othercpu", preset, target=here | {"mcpu": "othercpu"})
    _fake_db(tmp_path, "x86-elsewhere", preset, target=here | {"mcpu": "elsewhere"}, isa="riscv-v")
    m = tuning.find_records(preset, tmp_path)
    assert (m.directory, m.match) == (other_cpu, "isa")
    assert tuning.find_records(preset, tmp_path, mode="exact").directory is None
    assert tuning.find_records(preset, tmp_path, mode="none").directory is None
    exact = _fake_db(tmp_path, tuning.records_dir(preset, tmp_path).name, preset)
    m = tuning.find_records(preset, tmp_path, mode="exact")
    assert (m.directory, m.match) == (exact, "exact")
    assert [d for d, _, _ in tuning.candidate_records(preset, tmp_path)[0]] == [exact, other_cpu]
    with pytest.raises(Exception, match="--records must be one of"):
        tuning.find_records(preset, tmp_path, mode="sometimes")


def test_the_isa_class_is_ordered_by_likeness_to_this_cpu(tmp_path, monkeypatch):
    """Other CPUs' databases of the class: the same vendor and cache sizes first (where the
    build is for this machine's CPU), else by name; never instead of this CPU's own."""
    preset = get_target("x86")
    here = tuning.target_key(preset)
    amd = _fake_db(tmp_path, "x86-a", preset, target=here | {"mcpu": "a"}, cpu="AMD EPYC (a)",
                   caches={"l1d_kb": 32, "l2_kb": 1024})
    intel = _fake_db(tmp_path, "x86-b", preset, target=here | {"mcpu": "b"},
                     cpu="Intel(R) Xeon(R) Processor (b)")
    intel_caches = _fake_db(tmp_path, "x86-c", preset, target=here | {"mcpu": "c"},
                            cpu="Intel(R) Core(TM) (c)", caches={"l1d_kb": 48, "l2_kb": 2048})

    def order():
        return [d for d, _, _ in tuning.candidate_records(preset, tmp_path)[0]]

    xeon = {"vendor": "Intel", "caches": {"l1d_kb": 48, "l2_kb": 2048}}
    monkeypatch.setattr(tuning, "this_cpu", lambda _mcpu: xeon)
    assert order() == [intel_caches, intel, amd]
    epyc = {"vendor": "AMD", "caches": {"l1d_kb": 32, "l2_kb": 1024}}
    monkeypatch.setattr(tuning, "this_cpu", lambda _mcpu: epyc)
    assert order() == [amd, intel, intel_caches]
    monkeypatch.setattr(tuning, "this_cpu", lambda _mcpu: None)  # a cross build
    assert order() == [amd, intel, intel_caches]
    exact = _fake_db(tmp_path, tuning.records_dir(preset, tmp_path).name, preset, cpu="AMD")
    monkeypatch.setattr(tuning, "this_cpu", lambda _mcpu: epyc)
    assert order()[0] == exact


def test_likeness_reads_the_vendor_from_the_cpu_description():
    assert vendor("AMD EPYC 9B45") == "AMD" and vendor("Intel(R) Xeon(R)") == "Intel"
    assert vendor("Raspberry Pi 4 Model B Rev 1.4") is None
    assert likeness({"cpu": "Cortex-A72"}, {"vendor": None, "caches": {}}) == 0
    assert likeness({"cpu": "AMD EPYC"}, None) == 0
    assert this_cpu(None) is None and this_cpu("not-this-cpu") is None  # a GPU, a cross build


def test_a_record_is_used_only_where_it_beat_the_default():
    assert tuning.record_wins(default_ms=1.0, record_ms=0.5)
    assert not tuning.record_wins(default_ms=1.0, record_ms=0.97)  # a tie within noise
    assert not tuning.record_wins(default_ms=None, record_ms=0.1)  # never measured against it
    assert not tuning.record_wins(default_ms=1.0, record_ms=None)


def test_inside_the_inference_decides_where_it_was_timed():
    head_to_head = {"default_ms": 1.0, "record_ms": 0.5}
    assert tuning.entry_wins(head_to_head)  # no in-context check made (a remote device)
    assert not tuning.entry_wins({"default_ms": 1.0, "record_ms": 0.97})
    assert tuning.entry_wins(head_to_head | {"context_default_ms": 1.0, "context_record_ms": 0.8})
    assert not tuning.entry_wins(head_to_head | {"context_default_ms": 1.0, "context_record_ms": 1.2})
    # The check could not find the kernel: not used.
    assert not tuning.entry_wins(head_to_head | {"context_default_ms": None, "context_record_ms": None})
    # Slower alone and hot, faster where it runs (a rule's variant built for cold caches): used.
    assert tuning.entry_wins({"default_ms": 1.0, "record_ms": 1.2,
                              "context_default_ms": 1.0, "context_record_ms": 0.5})
