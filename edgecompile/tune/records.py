"""The tuning records store: MetaSchedule databases per target preset and CPU, and which apply to a build.

Records live in the repository, one MetaSchedule JSON database per target preset *and* CPU:
``tuning/<preset>-<mcpu>/`` (e.g. ``tuning/x86-znver5/``), next to a ``key.json`` naming the
resolved target they were measured on, its ISA class and the CPU itself. A GPU preset's are per
GPU and driver class, as the device reported them over RPC: ``tuning/mali-<gpu>-<driver>/``,
class ``opencl-mali`` (every database of the preset is its "exact" kind: a build cannot know
which board it is for). A build looks for them by workload (``build --records``):

- ``exact``: this preset on this very CPU (the key's target equals the build's);
- ``isa`` (default): else any database of the same ISA class (x86_64-avx512, ...), the likest
  CPU's first (likeness.py): every CPU of a class has the very same kernels;
- ``none``: the default schedules only.

A record replaces the default schedule of its kernel only where it measured faster than that
default, on the same device with the same threads (``defaults.json``, written by ``tune``).

One database holds every model tuned for that target (tasks keyed by their structure). Every
candidate is appended as it is measured; an interrupted run, started again, gives each task
only the rest of its budget.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgecompile.backend import compiler, core
from edgecompile.errors import UsageError
from edgecompile.paths import write_atomic
from edgecompile.targets import TargetPreset
from edgecompile.tune.likeness import likeness, this_cpu

KEY_FILE = "key.json"
# Workload hash -> {"task", "default_ms", "record_ms", "default_schedule"}: the default schedule's
# latency and the best record's, timed head to head by tune on the tuning device, and which
# default schedule that was (backend.metaschedule.default_schedule_id); tuned on this host, also
# "context_default_ms" / "context_record_ms": the two timed inside whole inferences of the model
# (tune.in_context.check_in_context), which then decide (entry_wins).
DEFAULTS_FILE = "defaults.json"
# A record is used where its latency is below this share of the default's: timings of one
# kernel vary by a few percent run to run, and a record that only ties is not worth the risk
# of a schedule that was measured once.
RECORD_MARGIN = 0.95
RECORD_MODES = ("exact", "isa", "none")
COMPACTION_JOURNAL = ".compaction.json"  # while compact_records swaps files: {file: new file}
TRIALS_FILE = "trials.json"  # workload hash -> trials measured, kept when records are compacted
# Graph fingerprint -> the model tuned into this database. A build looks its graph up here
# first: a dictionary lookup instead of a task extraction (5-10 s) for the many models that
# were never tuned, which is what lets `build` apply records by default.
MODELS_FILE = "models.json"
KEEP_PER_TASK = 4  # records kept per task when compacting (the best is applied; the rest cost space)
# 3: tuned on the kernels of our own legalisation (backend.metaschedule.prepare), against the
# default schedules. Version-1 records were tuned against TVM's untouched, naive code in plain
# NCHW; builds with them ran at 1.9-2.4x ONNX Runtime on the Zen 3 they were tuned on, the
# default schedules alone at 0.8-1.9x (Zen 5), and their workloads no longer exist.
KEY_VERSION = 3


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


def is_gpu(preset: TargetPreset) -> bool:
    return preset.target.get("kind") != "llvm"


def target_key(preset: TargetPreset) -> dict[str, Any]:
    """What must match for records to apply: the resolved target's ISA-defining fields (for a
    GPU, also its device class: mali, adreno). The device's own limits are in key.json's
    ``device``, not here: they narrow the search, every record stays valid for the class."""
    t = compiler.resolve_target(preset.target)
    key = {
        "kind": t.get("kind"),
        "mtriple": t.get("mtriple", ""),
        "mcpu": t.get("mcpu", ""),
        "mattr": sorted(t.get("mattr", []) or []),
        "device": preset.device,
    }
    if is_gpu(preset):
        key["gpu"] = t.get("device", "")
    return key


def device_slug(name: str) -> str:
    """A directory-safe name for a GPU and its driver ("Mali-G610 r0p0", "v1.r32p1")."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "unknown"


def records_dir(preset: TargetPreset, root: Path | None = None, device: str | None = None) -> Path:
    """``tuning/<preset>-<cpu>/`` for a CPU preset; ``tuning/<preset>-<device>/`` for a GPU
    preset, ``device`` naming the GPU and driver class the records were measured on (read
    from the device when tuning: a build cannot know which board it is for)."""
    key = target_key(preset)
    if is_gpu(preset):
        return Path(root or tuning_root()) / f"{preset.name}-{device_slug(device or 'generic')}"
    cpu = key["mcpu"] or key["mtriple"] or "generic"
    return Path(root or tuning_root()) / f"{preset.name}-{cpu}"


def isa_of(preset: TargetPreset) -> str:
    """The class of machines that share a preset's kernels: the CPU's ISA class, or for a GPU
    the OpenCL device class its kernels are generated for (opencl-mali, opencl-adreno)."""
    if is_gpu(preset):
        return f"{preset.target.get('kind')}-{preset.target.get('device', 'generic')}"
    return compiler.isa_class(preset.target)


def read_key(directory: Path) -> dict[str, Any] | None:
    f = directory / KEY_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_key(directory: Path, preset: TargetPreset, layout: str, threads: int | None,
              cpu_name: str, device: dict[str, Any] | None = None,
              caches: dict[str, int] | None = None) -> None:
    """key.json: what the records are for (target, ISA class) and where they were measured
    (``cpu``: a description of the machine; ``caches``: its per-core data caches, where it is
    this machine; ``device``: a GPU's name, driver and limits)."""
    data = {
        "version": KEY_VERSION, "preset": preset.name, "target": target_key(preset),
        "isa": isa_of(preset), "cpu": cpu_name, "layout": layout, "tuned_threads": threads,
        "tvm": core.version(),
    }
    data |= {k: v for k, v in (("device", device), ("caches", caches)) if v}
    old = read_key(directory)
    if old is not None and (old.get("target") != data["target"] or old.get("layout") != layout
                            or old.get("version") != KEY_VERSION):
        raise UsageError(f"{directory} holds version-{old.get('version')} records for "
                         f"{old.get('target')} (layout {old.get('layout')}); not mixing "
                         "(--records-dir elsewhere, or remove them)")
    _write_json(directory / KEY_FILE, data)


def _write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@dataclass
class RecordMatch:
    directory: Path | None
    reason: str  # why records are (not) used
    key: dict[str, Any] | None = None
    match: str | None = None  # "exact" (this CPU) or "isa" (another CPU of its ISA class)
    searched: list[Path] = field(default_factory=list)  # databases that do not hold this model


def _usable(d: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        finish_compaction(d)
    except OSError as e:
        return None, f"records at {d}: an interrupted compaction could not be finished ({e})"
    key = read_key(d)
    if key is None or not (d / "database_tuning_record.json").is_file():
        return None, f"no records at {d}"
    if key.get("version") != KEY_VERSION:
        return None, (f"records at {d} are version {key.get('version')}, tuned before the default "
                      "schedules' kernels and slower than them; re-tune to use records here")
    return key, "ok"


def candidate_records(preset: TargetPreset, root: Path | None = None,
                      mode: str = "isa") -> tuple[list[tuple[Path, dict[str, Any], str]], str]:
    """The databases a build may use, best first: this preset on this CPU, then (mode "isa") the
    same preset on other CPUs of its ISA class, the likest first, then other presets of that
    class; and why the first choice is not among them, when it is not."""
    if mode not in RECORD_MODES:
        raise UsageError(f"--records must be one of {', '.join(RECORD_MODES)}, not '{mode}'")
    if mode == "none":
        return [], "not requested (--records none)"
    base = Path(root or tuning_root())
    found, why = _exact_records(preset, base)
    if mode == "exact":
        return found, why
    isa = isa_of(preset)
    others = []
    exact_dirs = {d for d, _, _ in found} | {records_dir(preset, root)}
    here = None if is_gpu(preset) else this_cpu(target_key(preset)["mcpu"])
    for d in sorted(p for p in base.glob("*/") if p not in exact_dirs) if base.is_dir() else []:
        k, _ = _usable(d)
        if k is not None and k.get("isa") == isa and k.get("target", {}).get("device") == preset.device:
            others.append((k.get("preset") != preset.name, -likeness(k, here), d.name, d, k))
    found += [(d, k, "isa") for *_, d, k in sorted(others, key=lambda o: o[:3])]
    return found, f"{why}, nor for any other {isa} CPU" if not found else "ok"


def _exact_records(preset: TargetPreset, base: Path) -> tuple[list[tuple[Path, dict[str, Any], str]], str]:
    """This preset's own databases for its exact target: on a CPU the one for this CPU; on a
    GPU every one of the preset's (one per GPU and driver class it was tuned on)."""
    dirs = (sorted(base.glob(f"{preset.name}-*/")) if is_gpu(preset) and base.is_dir()
            else [records_dir(preset, base)])
    found, why = [], f"no records at {records_dir(preset, base)}"
    if is_gpu(preset):
        why = f"no records for {preset.name} under {base}"
    for d in dirs:
        key, why_not = _usable(d)
        if key is not None and key.get("target") == target_key(preset):
            found.append((d, key, "exact"))
        elif key is not None:
            why = f"records at {d} are for {key.get('target')}, not {target_key(preset)}"
        elif not is_gpu(preset):
            why = why_not
    return found, why


def find_records(preset: TargetPreset, root: Path | None = None, mode: str = "isa") -> RecordMatch:
    """The first database for this preset's CPU (or, with mode "isa", its ISA class)."""
    found, why = candidate_records(preset, root, mode)
    if not found:
        return RecordMatch(None, why)
    d, key, how = found[0]
    return RecordMatch(d, "key matches", key, how)


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
    _write_json(directory / MODELS_FILE, models)


def read_defaults(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((directory / DEFAULTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_defaults(directory: Path, defaults: dict[str, dict[str, Any]]) -> None:
    _write_json(directory / DEFAULTS_FILE, defaults)


def record_wins(default_ms: float | None, record_ms: float | None) -> bool:
    """Whether a tuned record replaces the default schedule (never without both timings)."""
    return default_ms is not None and record_ms is not None and record_ms < RECORD_MARGIN * default_ms


def entry_wins(entry: dict[str, Any]) -> bool:
    """Whether a task's record is used, from its entry in defaults.json: where tune timed the
    two inside whole inferences (its in-context check: the ``context_*`` keys), a win there --
    a record the check could not find in the model's calls is not used; else a win in the
    head-to-head, alone and hot. Alone and hot, records beat our default schedules by 5-47% and
    then ran slower inside the inference (a Zen 4: mobilenet_v2_100's records build 1.10x the
    default build's latency, mobilenext_100's 1.04x); and the rules' own variants that ran
    inside it faster lost alone (tune checks every one of those in context)."""
    if "context_record_ms" in entry:
        return record_wins(entry.get("context_default_ms"), entry.get("context_record_ms"))
    return record_wins(entry.get("default_ms"), entry.get("record_ms"))


# A GPU's limits MetaSchedule searches within: the target's attribute <- the device's own (TVM
# DeviceAttrKind names, read over RPC). The lower of the preset's and the device's is used.
GPU_LIMITS = {"max_threads_per_block": "max_threads_per_block",
              "max_num_threads": "max_threads_per_block",
              "max_shared_memory_per_block": "max_shared_memory_per_block"}


def tuning_target(preset: TargetPreset, threads: int | None, limits: dict[str, int] | None = None):
    """The TVM target MetaSchedule tunes for: the preset's, with the core count it runs on (a
    CPU), or within the device's own limits where they are lower than the preset's (a GPU)."""
    t = dict(preset.target)
    if t.get("kind") == "llvm":
        t.setdefault("num-cores", threads)
    elif limits:
        defaults = compiler.target_to_dict(compiler.make_target(t))
        for attr, device_attr in GPU_LIMITS.items():
            have, device = defaults.get(attr), limits.get(device_attr)
            if device and (have is None or device < have):
                t[attr] = int(device)
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

    finish_compaction(directory)
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
    # Workloads without a record go too (tune commits every task's workload to time its
    # default; ~70 KB of JSON each): the records are renumbered to the workloads kept.
    wl_lines = [line for line in wl_file.read_text().splitlines() if line.strip()]
    renumber = {old: new for new, old in enumerate(sorted(by_wl))}
    kept: list[str] = []
    for idx, recs in sorted(by_wl.items()):
        best = sorted(recs, key=lambda x: x[0])[:keep]
        for _, line in best:
            r = json.loads(line)
            r[0] = renumber[idx]
            kept.append(json.dumps(r))
        trials[shashes[idx]] = {"trials": trials_done(directory, shashes[idx], len(recs)), "kept": len(best)}
    _write_json(directory / TRIALS_FILE, trials)  # counts only grow: valid before and after
    # Records and workloads change together (the records are renumbered to the workloads kept):
    # both are written aside, then a journal naming them, then both renamed. A run interrupted
    # between the renames leaves the journal, and the next reader finishes the swap.
    new_files = {RECORD_FILE: "".join(line + "\n" for line in kept),
                 WORKLOAD_FILE: "".join(wl_lines[i] + "\n" for i in sorted(by_wl))}
    for name, text in new_files.items():
        (directory / f".{name}.compacted").write_text(text)
    write_atomic(directory / COMPACTION_JOURNAL,
                 json.dumps({name: f".{name}.compacted" for name in new_files}))
    finish_compaction(directory)
    return len(lines), len(kept)


def finish_compaction(directory: Path) -> None:
    """Complete a compaction interrupted between its renames (see compact_records): rename
    each new file the journal names that is still there, then drop the journal."""
    journal = directory / COMPACTION_JOURNAL
    if not journal.is_file():
        return
    for final, pending in json.loads(journal.read_text()).items():
        if (directory / pending).is_file():
            (directory / pending).replace(directory / final)
    journal.unlink()


# ---------------------------------------------------------------------------------------------
# Build integration


def records_for_model(model: onnx.ModelProto, input_shape: tuple[int, ...], preset: TargetPreset,
                      root: Path | None = None, mode: str = "isa") -> RecordMatch:
    """The records a build of this graph uses: the first database (see ``candidate_records``)
    this graph was tuned into. No TVM: a fingerprint looked up in each models.json."""
    found, why = candidate_records(preset, root, mode)
    if not found:
        return RecordMatch(None, why)
    fp = graph_fingerprint(model, input_shape)
    for d, key, how in found:
        if fp in read_models(d):
            return RecordMatch(d, "key matches", key, how)
    return RecordMatch(None, f"this model graph (at this input size) was not tuned for this CPU"
                             f"{' or its ISA class' if mode == 'isa' else ''}",
                       searched=[d for d, _, _ in found])


def compile_with_records(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...],
                         preset: TargetPreset, target, mode: str = "isa", root: Path | None = None,
                         tasks: Collection[str] | None = None):
    """(module to compile, manifest "tuning" section, the same module unscheduled): the
    prepared module with the records that beat the default schedules applied, or (None,
    section, None) when none apply and the build takes its ordinary path. The unscheduled one
    is what the kernel table reads (a tuned kernel's blocks no longer say what it computes).
    ``tasks``: the best record of exactly these tasks instead, won or not (tune's in-context
    check times them)."""
    match = records_for_model(model, input_shape, preset, root, mode)
    section: dict[str, Any] = {"mode": mode}
    if match.directory is None:
        section |= {"records": None, "reason": match.reason}
        if match.searched:
            section["searched"] = [_display_path(d) for d in match.searched]
        return None, section, None
    from edgecompile.backend import metaschedule as tt

    key = match.key or {}
    defaults = read_defaults(match.directory)

    stale: list[str] = []

    def use(workload: str, task) -> bool:
        if tasks is not None:
            return task.name in tasks
        # Decided by tune's head-to-head timing of the two (defaults.json), not by the
        # database's best, which was timed at another moment than the default; and only while
        # the default is still the schedule it was timed against (`tune --recheck` re-times).
        entry = defaults.get(workload, {})
        if not entry_wins(entry):
            return False
        if entry.get("default_schedule") != tt.default_schedule_id(task, target):
            stale.append(task.name)
            return False
        return True

    prepared = tt.prepare(model, input_name, input_shape, target)
    applied = tt.apply_records(prepared, target, match.directory, use)
    section |= {
        "records": _display_path(match.directory), "match": match.match,
        "measured_on": {"cpu": key.get("cpu"), "mcpu": key.get("target", {}).get("mcpu"),
                        "isa": key.get("isa"), "threads": key.get("tuned_threads")}
        | ({"device": key["device"]} if key.get("device") else {}),
        "database_sha256": database_digest(match.directory),
        "tasks_total": applied.total, "tasks_with_records": applied.with_records,
        "tasks_tuned": len(applied.applied),
    }
    if stale:
        # Records that won against a default schedule the rules no longer produce.
        section["tasks_stale"] = len(stale)
    if not applied.applied:
        section |= {"records": None, "searched": [section["records"]],
                    "reason": "no record of this model beat the default schedule it would replace"}
        return None, section, None
    return applied.mod, section, prepared.mod


def database_digest(directory: Path) -> str:
    """One hash of what decides a records build: the records and the defaults they beat."""
    import hashlib

    from edgecompile.backend.metaschedule import RECORD_FILE
    from edgecompile.paths import file_sha256

    parts = [file_sha256(directory / f) if (directory / f).is_file() else "-"
             for f in (RECORD_FILE, DEFAULTS_FILE)]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def records_unchanged(tuning_section: dict[str, Any], model: onnx.ModelProto,
                      input_shape: tuple[int, ...], preset: TargetPreset) -> bool:
    """Would a build today use the same records an artifact was built with? (No TVM: the
    artifact's final graph is fingerprinted and looked up, the databases hashed.)"""
    match = records_for_model(model, input_shape, preset, mode=tuning_section.get("mode", "isa"))
    if match.directory is None:  # none found now: unchanged if none was looked into then
        return tuning_section.get("records") is None and "tasks_total" not in tuning_section
    # Found now: the same database (used then, or looked into with no record winning), unchanged.
    then = tuning_section.get("records") or (tuning_section.get("searched") or [None])[0]
    return (then == _display_path(match.directory)
            and tuning_section.get("database_sha256") == database_digest(match.directory))


def _display_path(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(shipped_root().parent))
    except ValueError:
        return str(p)
