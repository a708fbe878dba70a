"""`edgecompile matrix`: bench + eval of every model x target on a farm of devices.

Artifacts are built on this host first (or reused). Then each target's jobs go to the devices
registered with the tracker under the target's RPC key: one worker per registered device, each
leasing a device from the tracker (TVM's own matching) for one job at a time, so two boards
halve the wall time. Every finished job is appended to the results file (JSON lines) the
moment it finishes; a re-run skips the jobs already there with status "ok". A job whose device
dies or hangs is retried, on whichever device the tracker gives next, up to ``attempts`` times;
every failed attempt is recorded in the job's one result line, never lost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgeCompileError, UsageError
from edgecompile.measure.results import append_jsonl
from edgecompile.pipeline.build import build_or_reuse
from edgecompile.targets import get_target


@dataclass(frozen=True)
class MatrixOptions:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    tracker: str | None = None  # None: every target runs on this host
    data: Path | None = None  # labelled images for eval; None: bench only
    limit: int | None = None
    results: Path = Path("results/matrix.jsonl")
    output_dir: Path = Path("build")
    input_size: int | None = None
    attempts: int = 3
    job_timeout_s: float = 900.0  # from the device lease to the result
    lease_timeout_s: float = 3600.0  # waiting for a free device
    bench_min_time_s: float = 1.0
    bench_min_runs: int = 10
    warmup: int = 2
    profile_runs: int = 0  # > 0: each bench also times every kernel (bench --profile)
    weights_dir: Path | None = None  # DIR/<model>.pth, where present, instead of the seeded init
    peak: bool = False  # also measure each target's device ceilings (edgecompile peak)


MAX_AVOIDED_LEASES = 5


@dataclass
class Job:
    model: str
    target: str
    key: str  # the target's RPC key
    artifact: Path | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    avoided: int = 0  # leases handed back because they named a server that already failed

    @property
    def id(self) -> str:
        return f"{self.model}@{self.target}"


def job_key(opts: MatrixOptions, model: str, target: str) -> str:
    """What makes two runs the same job: a changed input size or data set is new work."""
    return json.dumps([model, target, opts.input_size, str(opts.data) if opts.data else None,
                       opts.limit] + ([str(opts.weights_dir)] if opts.weights_dir else []))


def done_keys(results: Path) -> set[str]:
    if not results.is_file():
        return set()
    keys = set()
    for line in results.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: that job simply runs again
        if rec.get("kind") == "matrix" and rec.get("status") == "ok":
            keys.add(rec["key"])
    return keys


class Farm:
    def __init__(self, opts: MatrixOptions, say=None):
        self.opts = opts
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        self.done = self.failed = self.running = 0
        self.total = 0
        self.durations: list[float] = []
        self.records: list[dict[str, Any]] = []
        self.bad_servers: set[str] = set()  # died or froze during this run
        self.alive: dict[str, int] = {}  # key -> workers still running
        self.unfinished: dict[str, int] = {}  # key -> jobs without a final result yet

    # -- planning ---------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        skip = done_keys(self.opts.results)
        jobs = []
        for target in self.opts.targets:
            preset = get_target(target)
            for model in self.opts.models:
                if job_key(self.opts, model, target) not in skip:
                    jobs.append(Job(model, preset.name, preset.rpc_key or preset.name))
        return jobs

    def devices(self, jobs: list[Job]) -> dict[str, int]:
        """key -> workers: the devices registered under each key the jobs need."""
        keys = sorted({j.key for j in jobs})
        if not self.opts.tracker:
            from edgecompile.backend import compiler
            from edgecompile.devices import tracker

            def here(target: str) -> bool:
                preset = get_target(target)
                return preset.device == "cpu" and compiler.can_run_here(preset.target)

            elsewhere = sorted({j.target for j in jobs if not here(j.target)})
            if elsewhere:
                raise UsageError(f"target(s) {', '.join(elsewhere)} do not run on this host: give "
                                 "--tracker HOST:PORT with devices registered under their keys")
            return {k: 1 for k in keys}
        from edgecompile.backend import compiler
        from edgecompile.devices import tracker

        registered = tracker.key_counts(self.opts.tracker)
        missing = [k for k in keys if not registered.get(k)]
        if missing:
            raise EdgeCompileError(
                f"no device registered at tracker {self.opts.tracker} under key(s) "
                f"{', '.join(missing)} (keys there: {', '.join(sorted(registered)) or 'none'})"
            )
        return {k: registered[k] for k in keys}

    # -- running ----------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        jobs = self.plan()
        self.total = len(jobs)
        if not jobs:
            self.say(f"matrix: every job is already in {self.opts.results}")
            return []
        workers = self.devices(jobs)
        self.say(f"matrix: {len(jobs)} jobs, devices per key: "
                 + ", ".join(f"{k}={n}" for k, n in workers.items()))
        for i, job in enumerate(jobs, 1):  # compile on this host first (reused when cached)
            self.say(f"matrix: build {i}/{len(jobs)} {job.id}")
            job.artifact = build_or_reuse(job.model, job.target, self.opts.output_dir,
                                          self.opts.input_size, quiet=True,
                                          weights=self._weights(job.model)).path
        self.opts.results.parent.mkdir(parents=True, exist_ok=True)
        queues: dict[str, queue.Queue[Job]] = {k: queue.Queue() for k in workers}
        for job in jobs:
            queues[job.key].put(job)
        self.alive = dict(workers)
        self.unfinished = {k: sum(j.key == k for j in jobs) for k in workers}
        threads = [threading.Thread(target=self._worker, args=(k, queues[k]), daemon=True)
                   for k, n in workers.items() for _ in range(n)]
        self.started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k, q in queues.items():  # every device of a key died: nothing may be lost
            while not q.empty():
                job = q.get_nowait()
                job.attempts.append({"server": None, "error": f"no device left under key '{k}'"})
                self._finish(job, None)
        return self.records

    def _weights(self, model: str) -> Path | None:
        if self.opts.weights_dir is None:
            return None
        path = self.opts.weights_dir / f"{model}.pth"
        return path if path.is_file() else None

    def _worker(self, key: str, jobs: queue.Queue) -> None:
        while True:
            try:
                job = jobs.get(timeout=0.5)
            except queue.Empty:
                with self.lock:  # a job another worker is running may still come back
                    if self.unfinished[key] == 0:
                        return
                continue
            with self.lock:
                self.running += 1
            result, device_lost = self._attempt(job)
            with self.lock:
                self.running -= 1
            if result is not None:
                self._finish(job, result)
                continue
            if device_lost is None:  # a lease on a known-bad server, handed back
                jobs.put(job)
                continue
            if len(job.attempts) < self.opts.attempts:
                jobs.put(job)  # another device, or this one again, gets it next
            else:
                self._finish(job, None)
            with self.lock:
                if device_lost and self.alive[key] > 1:
                    self.alive[key] -= 1  # this worker's device is gone; the others go on
                    return

    def _attempt(self, job: Job) -> tuple[dict[str, Any] | None, bool | None]:
        """One try of ``job``: (result, device_lost); device_lost None means the lease named a
        server that already failed this run, and was handed back without using an attempt."""
        o = self.opts
        argv = [sys.executable, "-m", "edgecompile.measure.farm_job", str(job.artifact),
                "--min-time", str(o.bench_min_time_s), "--min-runs", str(o.bench_min_runs),
                "--warmup", str(o.warmup), "--lease-timeout", str(o.lease_timeout_s)]
        argv += ["--tracker", o.tracker, "--key", job.key] if o.tracker else []
        argv += ["--data", str(o.data)] if o.data else []
        argv += ["--limit", str(o.limit)] if o.limit else []
        argv += ["--profile-runs", str(o.profile_runs)] if o.profile_runs else []
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        events: queue.Queue = queue.Queue()
        threading.Thread(target=_read_events, args=(proc, events), daemon=True).start()
        server, deadline = None, time.monotonic() + o.lease_timeout_s
        while True:
            try:
                ev = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                _kill(proc)
                phase = "running" if server else "waiting for a device"
                job.attempts.append({"server": server, "error": f"timed out {phase}"})
                if server:
                    self.bad_servers.add(server)
                return None, server is not None
            if ev.get("event") == "leased":
                server, deadline = ev["server"], time.monotonic() + o.job_timeout_s
                # The tracker may offer a frozen server again (it still holds its connection):
                # hand such a lease back a few times rather than burn the job's attempts on it.
                if server in self.bad_servers and job.avoided < MAX_AVOIDED_LEASES:
                    _kill(proc)
                    job.avoided += 1
                    return None, None
                self.say(f"matrix: {job.id} running on {server}")
            elif ev.get("event") == "result":
                proc.wait()
                return ev, False
            elif ev.get("event") in ("error", "exit"):
                _kill(proc)
                msg = ev.get("message") or f"job process exited ({proc.returncode}): {ev.get('stderr', '')}"
                job.attempts.append({"server": server, "error": msg})
                lost = server is not None and not self._still_registered(job.key, server)
                if lost:
                    self.bad_servers.add(server)
                return None, lost

    def _still_registered(self, key: str, server: str) -> bool:
        if not self.opts.tracker:
            return True
        from edgecompile.devices import tracker

        return server in tracker.servers(self.opts.tracker, key)

    def _finish(self, job: Job, result: dict[str, Any] | None) -> None:
        rec = {
            "kind": "matrix", "key": job_key(self.opts, job.model, job.target),
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": job.model, "target": job.target, "rpc_key": job.key,
            "status": "ok" if result else "failed",
            "server": result["server"] if result else None,
            "failed_attempts": job.attempts,
            "bench": result["bench"] if result else None,
            "eval": result["eval"] if result else None,
        }
        with self.lock:
            append_jsonl(self.opts.results, rec)
            self.records.append(rec)
            if job.key in self.unfinished:
                self.unfinished[job.key] -= 1
            if result:
                self.done += 1
            else:
                self.failed += 1
            self.durations.append(time.monotonic() - self.started)
            self._progress(rec)

    def _progress(self, rec: dict[str, Any]) -> None:
        finished = self.done + self.failed
        left = self.total - finished
        elapsed = time.monotonic() - self.started
        eta = elapsed / finished * left if finished else 0.0
        what = (f"{rec['bench']['latency_ms']['median']:.2f} ms on {rec['server']}"
                if rec["bench"] else f"FAILED: {rec['failed_attempts'][-1]['error']}")
        self.say(f"matrix: [{finished}/{self.total}] {rec['model']}@{rec['target']} {what} | "
                 f"done {self.done}, running {self.running}, failed {self.failed}, "
                 f"ETA {eta:.0f}s")


def _read_events(proc: subprocess.Popen, events: queue.Queue) -> None:
    # stderr is drained while stdout is read: read only after stdout closes, a job that writes
    # more than a pipe buffer (64 KiB) to stderr would block in that write and never close
    # stdout, and hang until it was counted as a lost device. Only its tail is kept.
    tail = [""]

    def drain() -> None:
        for chunk in iter(lambda: proc.stderr.read(8192), ""):
            tail[0] = (tail[0] + chunk)[-500:]

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    for line in proc.stdout:
        try:
            events.put(json.loads(line))
        except json.JSONDecodeError:
            continue
    proc.wait()
    drainer.join()
    events.put({"event": "exit", "stderr": tail[0]})


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def expand_models(names: list[str]) -> tuple[str, ...]:
    """Model names, family names (all their variants) or "all", in listing order."""
    from edgecompile.errors import UnknownNameError
    from edgecompile.models import get_model_info, list_families, list_models

    out: list[str] = []
    for n in names:
        if n == "all":
            out += list_models()
        elif n in list_families():
            out += list_models(n)
        else:
            try:
                out.append(get_model_info(n).name)
            except UnknownNameError:
                raise UnknownNameError("model or family", n, list_models() + list_families()) from None
    return tuple(dict.fromkeys(out))


def run_matrix(opts: MatrixOptions, say=None) -> list[dict[str, Any]]:
    if not opts.models or not opts.targets:
        raise UsageError("matrix needs --models and --targets")
    farm = Farm(opts, say)
    records = farm.run()
    if opts.peak:
        measure_peaks(opts, farm.say)
    return records


def measure_peaks(opts: MatrixOptions, say) -> None:
    """Each target's device ceilings into the results (cached per device: cheap on a rerun).
    A device that cannot be reached costs its peak line, not the run."""
    from edgecompile.devices.spec import DeviceSpec
    from edgecompile.measure.peak import PeakOptions, run_peak

    opts.results.parent.mkdir(parents=True, exist_ok=True)
    for target in opts.targets:
        preset = get_target(target)
        device = (DeviceSpec(tracker=opts.tracker, key=preset.rpc_key or preset.name)
                  if opts.tracker else DeviceSpec())
        try:
            r = run_peak(PeakOptions(target), device, results=opts.results)
            say(f"matrix: peak {target}: {r['compute_gflops']:.1f} GFLOP/s, {r['bandwidth_gbps']:.1f} GB/s")
        except EdgeCompileError as e:
            say(f"matrix: peak {target} not measured: {e}")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        b, e = r.get("bench") or {}, r.get("eval") or {}
        rows.append({
            "model": r["model"], "target": r["target"], "status": r["status"],
            "median_ms": round(b["latency_ms"]["median"], 3) if b else None,
            "top1": round(e["top1"], 2) if e else None,
            "torch_top1": round(e["torch_top1"], 2) if e else None,
            "agree": round(e["top1_agreement"], 2) if e else None,
            "server": r["server"], "retries": len(r["failed_attempts"]),
        })
    return rows
