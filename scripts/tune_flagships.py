"""Tune models (default: the seven flagships) into the shipped records, one after another.

    python scripts/tune_flagships.py --trials-per-task 64 --focus 12 --results results/tune-x86.jsonl
    python scripts/tune_flagships.py --search rules --focus 12   # the rules' own choices, ~1.5 min a model

Each model's costliest tasks (default schedule x calls) get the budget; the records land in
tuning/<preset>-<cpu>/ and a build applies each one only where it beat the default schedule.
Interrupted, it resumes: tasks keep what they already measured. Prints one JSON line per model:
seconds spent, and the model's kernel time with the default schedules and with the records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecompile.models import FLAGSHIPS
from edgecompile.tune.run import TuneOptions, format_tasks, tune


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help=f"default: {', '.join(FLAGSHIPS)}")
    p.add_argument("--target", default="x86")
    p.add_argument("--trials-per-task", type=int, default=64)
    p.add_argument("--focus", type=int, default=12, help="tune the N costliest tasks of each model")
    p.add_argument("--threads", type=int, help="cores the models will run on (default: all here)")
    p.add_argument("--records-dir", type=Path, help="records root (default: the shipped tuning/)")
    p.add_argument("--results", type=Path, help="append the JSON lines here too")
    p.add_argument("--search", choices=("evolutionary", "rules"), default="evolutionary",
                   help="rules: the default rules' own ranked alternatives (edgecompile tune --search)")
    p.add_argument("--recheck", action="store_true",
                   help="no search: re-time the stored records against the default schedules")
    args = p.parse_args(argv)
    for name in args.models or FLAGSHIPS:
        r = tune(TuneOptions(name, args.target, trials_per_task=args.trials_per_task,
                             max_tasks=args.focus, threads=args.threads, root=args.records_dir,
                             recheck=args.recheck, search=args.search))
        print(format_tasks(r), file=sys.stderr)
        used = sum(1 for t in r.tasks if t["record_used"])
        line = {"model": name, "target": args.target, "search": "recheck" if args.recheck else args.search,
                "seconds": round(r.seconds, 1),
                "trials_run": r.trials_run, "tasks_tuned": len(r.tasks), "records_used": used,
                "kernel_ms_default": r.default_ms, "kernel_ms_records": r.estimate_ms,
                "directory": str(r.directory)}
        print(json.dumps(line), flush=True)
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
