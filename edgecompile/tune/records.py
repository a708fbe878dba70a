"""The tuning records store: MetaSchedule databases per target preset and CPU, and which apply to a build.

Records live in the repository, one MetaSchedule JSON database per target preset *and* CPU:
``tuning/<preset>-<mcpu>/`` (e.g. ``tuning/x86-znver3/``), next to a ``key.json`` naming the
resolved target the records were measured on. The ``x86`` preset resolves ``mcpu = "native"``
to this host's CPU, so records tuned on a Zen 3 land in ``x86-znver3`` and a Skylake-AVX512 host
building with ``x86`` looks in ``x86-skylake-avx512`` -- and even a directory of the right name
is only used when its key matches the target exactly.

One database holds every model tuned for that target: tasks are keyed by their structure, so a
layer shape shared by two models is tuned once. Every measured candidate is appended as it is
measured; an interrupted run, started again, counts what each task already has and gives it
only the rest of its budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend import compiler, core
from edgecompile.errors import UsageError
from edgecompile.targets import TargetPreset

KEY_FILE = "key.json"
TRIALS_FILE = "trials.json"  # workload hash -> trials measured, kept when records are compacted
# Graph fingerprint -> the model tuned into this database. A build looks its graph up here
# first: a dictionary lookup instead of a task extraction (5-10 s) for the many models that
# were never tuned, which is what lets `build` apply records by default.
MODELS_FILE = "models.json"
KEEP_PER_TASK = 8  # best records kept per task when compacting (the rest only cost repo space)
# 2: tuned since the default CPU schedules (backend/cpu_schedules). Version-1 records were
# tuned against TVM's untouched, naive code; builds with them ran at 1.9-2.4x ONNX Runtime on
# the Zen 3 they were tuned on (2.3-3.9x on a Zen 5), the default schedules alone at 0.8-1.5x
# (Zen 5), so a build no longer applies them.
KEY_VERSION = 2
# How modules are prepared for tuning (must be the same at build time). Pre-packing lets
# MetaSchedule choose each kernel's weight layout; the weights are transformed once at build.
DEFAULT_LAYOUT = "NCHW"
DEFAULT_PREPACK = True


def shipped_root() -> Path:
    """The records shipped with the package: the repo's tuning/, installed as edgecompile.records."""
    from edgecompile import records

    return Path(records.__file__).resolve().parent


def tuning_root() -> Path:
    """Where the per-target databases live: $EDGECOMPILE_TUNING_DIR, else the shipped ones."""
    env = os.environ.get("EDGECOMPILE_TUNING_DIR")
    return Path(env) if env else shipped_root()


# ---------------------------------------------------------------------------------------------
# Keys: which CPU the records are for


def target_key(preset: TargetPreset) -> dict[str, Any]:
    """What must match for records to apply: the resolved target's ISA-defining fields."""
    t = compiler.resolve_target(preset.target)
    return {
        "kind": t.get("kind"),
        "mtriple": t.get("mtriple", ""),
        "mcpu": t.get("mcpu", ""),
        "mattr": sorted(t.get("mattr", []) or []),
        "device": preset.device,
    }


def records_dir(preset: TargetPreset, root: Path | None = None) -> Path:
    key = target_key(preset)
    cpu = key["mcpu"] or key["mtriple"] or "generic"
    return Path(root or tuning_root()) / f"{preset.name}-{cpu}"


def read_key(directory: Path) -> dict[str, Any] | None:
    f = directory / KEY_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_key(directory: Path, preset: TargetPreset, layout: str, prepack: bool, threads: int) -> None:
    data = {
        "version": KEY_VERSION, "preset": preset.name, "target": target_key(preset),
        "layout": layout, "prepack": prepack, "tuned_threads": threads,
        "tvm": core.version(),
    }
    old = read_key(directory)
    if old is not None and (old.get("target") != data["target"] or old.get("layout") != layout
                            or old.get("prepack") != prepack or old.get("version") != KEY_VERSION):
        raise UsageError(f"{directory} holds version-{old.get('version')} records for {old.get('target')} "
                         f"(layout {old.get('layout')}, prepack {old.get('prepack')}); not mixing "
                         "(--records-dir elsewhere, or remove them)")
    (directory / KEY_FILE).write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class RecordMatch:
    directory: Path | None
    reason: str  # why records are (not) used
    key: dict[str, Any] | None = None
    searched: Path | None = None  # a database for this CPU that does not hold this model


def find_records(preset: TargetPreset, root: Path | None = None) -> RecordMatch:
    """The database for this preset on this CPU, if there is one whose key matches."""
    d = records_dir(preset, root)
    key = read_key(d)
    if key is None or not (d / "database_tuning_record.json").is_file():
        return RecordMatch(None, f"no records at {d}")
    if key.get("version") != KEY_VERSION:
        return RecordMatch(None, f"records at {d} are version {key.get('version')}, tuned before the "
                                 "default schedules and slower than them; re-tune to use records here")
    if key.get("target") != target_key(preset):
        return RecordMatch(None, f"records at {d} are for {key.get('target')}, not {target_key(preset)}")
    return RecordMatch(d, "key matches", key)


def graph_fingerprint(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> str:
    """A hash of what the kernels depend on -- operators, attributes, shapes -- and not of the
    weights' values: a seeded init, a checkpoint or retrained weights share their records."""
    import hashlib

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for init in skeleton.graph.initializer:
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(f)
    skeleton.ClearField("producer_version")
    h = hashlib.sha256(skeleton.SerializeToString(deterministic=True))
    h.update(repr(tuple(input_shape)).encode())
    return h.hexdigest()[:16]


def read_models(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((directory / MODELS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def register_model(directory: Path, fingerprint: str, name: str, shape, tasks: int) -> None:
    models = read_models(directory)
    models[fingerprint] = {"model": name, "input_shape": list(shape), "tasks": tasks}
    tmp = directory / (MODELS_FILE + ".tmp")
    tmp.write_text(json.dumps(models, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / MODELS_FILE)


def tuning_target(preset: TargetPreset, threads: int):
    """The TVM target MetaSchedule tunes for: the preset's, with the core count it runs on."""
    t = dict(preset.target)
    if t.get("kind") == "llvm":
        t.setdefault("num-cores", threads)
    return compiler.make_target(t, preset.host)


def _read_trials(directory: Path) -> dict[str, dict[str, int]]:
    try:
        return json.loads((directory / TRIALS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def trials_done(directory: Path, shash: str, records_now: int) -> int:
    """Trials ever measured for a workload: compaction drops records, not the count."""
    t = _read_trials(directory).get(shash)
    return records_now if t is None else t["trials"] - t["kept"] + records_now


def compact_records(directory: Path, keep: int = KEEP_PER_TASK) -> tuple[int, int]:
    """Keep the ``keep`` fastest records of each workload (MetaSchedule applies the best one);
    remember how many trials each workload had, so a later run still resumes correctly.
    Returns (records before, after). Plain JSON: no TVM needed."""
    from edgecompile.backend.metaschedule import RECORD_FILE, WORKLOAD_FILE

    wl_file, rec_file = directory / WORKLOAD_FILE, directory / RECORD_FILE
    if not rec_file.is_file():
        return 0, 0
    shashes = [json.loads(line)[0] for line in wl_file.read_text().splitlines() if line.strip()]
    lines = [line for line in rec_file.read_text().splitlines() if line.strip()]
    by_wl: dict[int, list[tuple[float, str]]] = {}
    for line in lines:
        r = json.loads(line)
        secs = [float(v) for v in (r[1][1] or [])]
        mean = sum(secs) / len(secs) if secs else float("inf")
        by_wl.setdefault(r[0], []).append((mean, line))
    trials = _read_trials(directory)
    kept: list[str] = []
    for idx, recs in sorted(by_wl.items()):
        best = sorted(recs, key=lambda x: x[0])[:keep]
        kept += [line for _, line in best]
        trials[shashes[idx]] = {"trials": trials_done(directory, shashes[idx], len(recs)), "kept": len(best)}
    tmp = rec_file.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(rec_file)
    (directory / TRIALS_FILE).write_text(json.dumps(trials, indent=0, sort_keys=True) + "\n")
    return len(lines), len(kept)


# ---------------------------------------------------------------------------------------------
# Build integration


def records_for_model(model: onnx.ModelProto, input_shape: tuple[int, ...], preset: TargetPreset,
                      root: Path | None = None) -> RecordMatch:
    """The records a build of this graph uses: this preset + CPU's database, when the graph was
    tuned into it. No TVM: a fingerprint looked up in models.json."""
    if preset.device != "cpu" or preset.target.get("kind") != "llvm":
        return RecordMatch(None, "tuning applies to CPU presets only")
    match = find_records(preset, root)
    if match.directory is None:
        return match
    if graph_fingerprint(model, input_shape) not in read_models(match.directory):
        return RecordMatch(None, "this model graph (at this input size) was not tuned for this CPU",
                           searched=match.directory)
    return match


def compile_with_records(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...],
                         preset: TargetPreset, target, root: Path | None = None):
    """(Relax module to compile, manifest "tuning" section), or (None, section) when no records
    apply and the build should take its ordinary path."""
    match = records_for_model(model, input_shape, preset, root)
    if match.directory is None:
        section = {"records": None, "reason": match.reason}
        if match.searched is not None:
            section["searched"] = _display_path(match.searched)
        return None, section
    from edgecompile.backend import metaschedule as tt

    key = match.key or {}
    ttarget = tuning_target(preset, int(key.get("tuned_threads") or os.cpu_count() or 1))
    prepared = tt.prepare(model, input_name, input_shape, ttarget,
                          layout=key.get("layout", DEFAULT_LAYOUT), prepack=bool(key.get("prepack")))
    applied = tt.apply_records(prepared, ttarget, match.directory)
    section = {
        "records": _display_path(match.directory),
        "database_sha256": database_digest(match.directory),
        "key": key.get("target"), "layout": prepared.layout, "prepack": prepared.prepack,
        "tasks_matched": applied.matched, "tasks_total": applied.total,
    }
    if applied.matched == 0:
        section["reason"] = "no task of this model has records"
        return None, section | {"records": None, "searched": _display_path(match.directory)}
    return applied.mod, section


def database_digest(directory: Path) -> str:
    from edgecompile.backend.metaschedule import RECORD_FILE
    from edgecompile.paths import file_sha256

    return file_sha256(directory / RECORD_FILE)


def records_unchanged(tuning_section: dict[str, Any], model: onnx.ModelProto,
                      input_shape: tuple[int, ...], preset: TargetPreset) -> bool:
    """Would a build today use the same records an artifact was built with? (No TVM: the
    artifact's final graph is fingerprinted and looked up, the database hashed.)"""
    match = records_for_model(model, input_shape, preset)
    if match.directory is None:
        return tuning_section.get("records") is None
    return (tuning_section.get("records") == _display_path(match.directory)
            and tuning_section.get("database_sha256") == database_digest(match.directory))


def _display_path(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(shipped_root().parent))
    except ValueError:
        return str(p)
