"""``python -m ccat_dagster_tests.faults``: run fault schedules and print the summary.

Exit status 0 when no schedule broke the invariant (no violation, no byte lost), else 1.
``--seed N`` replays one schedule alone (its files are kept for inspection when it fails);
``--kind K`` puts fault kind K into the first step of every schedule.
``--workers N`` runs N harnesses side by side, each with its own components, on a share of the
seed numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from ccat_dagster_tests.faults.harness import read_results, run_here, run_many
from ccat_dagster_tests.faults.report import summarize
from ccat_dagster_tests.faults.schedule import KINDS, Schedule, fixed_schedules, make_schedule


def _schedules(args: argparse.Namespace) -> list[Schedule]:
    if args.schedules_file:
        return [Schedule.from_dict(d) for d in json.loads(args.schedules_file.read_text())]
    if args.fixed:
        return fixed_schedules()
    if args.seed:
        return [make_schedule(s, forced=args.kind) for s in args.seed]
    numbers = range(args.first_seed, args.first_seed + args.schedules)
    return [make_schedule(s, forced=args.kind) for s in numbers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccat_dagster_tests.faults", description=__doc__
    )
    parser.add_argument("--schedules", type=int, default=500, help="how many (default 500)")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of the first schedule")
    parser.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    parser.add_argument("--fixed", action="store_true", help="the fixed set of make test")
    parser.add_argument(
        "--kind", choices=sorted(KINDS), help="put this fault kind into every schedule's first step"
    )
    parser.add_argument("--workers", type=int, default=1, help="harnesses side by side")
    parser.add_argument("--workdir", type=Path, help="where worlds live (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every schedule's files")
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="WORKDIR",
        help="print the summary of the schedules a (running or stopped) run in WORKDIR finished",
    )
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schedules-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.summarize:
        results = read_results(args.summarize)
        print(summarize(results))
        return 1 if any(r.failed for r in results) else 0
    schedules = _schedules(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ccat-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{len(schedules)} schedule(s); worlds under {workdir}", flush=True)
    started = time.monotonic()
    if args.results:  # a worker of run_many
        results = run_here(schedules, workdir, keep=args.keep, results_file=args.results)
    else:
        results = run_many(schedules, workdir, workers=args.workers, keep=args.keep)
    print(summarize(results, seconds=time.monotonic() - started), flush=True)
    failed = any(r.failed for r in results) or len(results) < len(schedules)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
