"""``python -m ccat_dagster_tests.faults``: run fault schedules and print the summary.

Exit status 0 when no schedule broke the invariant (no violation, no byte lost), else 1.
``--seed N`` replays one schedule alone (its files are kept for inspection when it fails).
``--workers N`` runs N harnesses side by side, each with its own components, on a share of the
seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ccat_dagster_tests.faults.driver import ScheduleResult, run_schedule
from ccat_dagster_tests.faults.infra import infrastructure
from ccat_dagster_tests.faults.report import summarize
from ccat_dagster_tests.faults.schedule import Schedule, fixed_schedules, make_schedule


def _schedules(args: argparse.Namespace) -> list[Schedule]:
    if args.fixed:
        return fixed_schedules()
    if args.seed:
        return [make_schedule(s) for s in args.seed]
    return [make_schedule(s) for s in range(args.first_seed, args.first_seed + args.schedules)]


def _run(schedules: list[Schedule], workdir: Path, keep: bool, results_file: Path | None):
    results = []
    with infrastructure(workdir / "infra") as infra:
        for schedule in schedules:
            result = run_schedule(infra, schedule, workdir, keep=keep)
            results.append(result)
            state = "FAILED" if result.failed else "ok"
            stuck = f" | stuck {len(result.stuck)}" if result.stuck else ""
            print(
                f"[{len(results)}/{len(schedules)}] {state} {result.seconds:5.1f}s "
                f"{schedule.describe()}{stuck}",
                flush=True,
            )
            for violation in result.violations[:5]:
                print(f"    violation: {violation}", flush=True)
            if results_file:
                with open(results_file, "a") as out:
                    out.write(json.dumps(result.as_dict()) + "\n")
    return results


def _run_workers(args: argparse.Namespace, schedules: list[Schedule], workdir: Path):
    seeds = [s.seed for s in schedules]
    processes = []
    for index in range(args.workers):
        share = seeds[index :: args.workers]
        if not share:
            continue
        results_file = workdir / f"worker-{index}.jsonl"
        results_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "ccat_dagster_tests.faults",
            "--workdir",
            str(workdir / f"worker-{index}"),
            "--results",
            str(results_file),
        ]
        command += [a for s in share for a in ("--seed", str(s))]
        if args.keep:
            command.append("--keep")
        log = open(workdir / f"worker-{index}.log", "w")  # noqa: SIM115 - closed below
        processes.append(
            (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, results_file)
        )
    results = []
    for process, log, results_file in processes:
        process.wait()
        log.close()
        if results_file.exists():
            results += [
                ScheduleResult.from_dict(json.loads(line))
                for line in results_file.read_text().splitlines()
            ]
    for index in range(args.workers):
        print(f"worker {index}: {workdir / f'worker-{index}.log'}")
    if len(results) < len(schedules):
        print(f"WARNING: only {len(results)} of {len(schedules)} schedules reported (see logs)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccat_dagster_tests.faults", description=__doc__
    )
    parser.add_argument("--schedules", type=int, default=500, help="how many (default 500)")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of the first schedule")
    parser.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    parser.add_argument("--fixed", action="store_true", help="the fixed set of make test")
    parser.add_argument("--workers", type=int, default=1, help="harnesses side by side")
    parser.add_argument("--workdir", type=Path, help="where worlds live (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every schedule's files")
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    schedules = _schedules(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ccat-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{len(schedules)} schedule(s); worlds under {workdir}", flush=True)
    started = time.monotonic()
    if args.workers > 1:
        results = _run_workers(args, schedules, workdir)
    else:
        results = _run(schedules, workdir, args.keep, args.results)
    print(summarize(results, seconds=time.monotonic() - started), flush=True)
    failed = any(r.failed for r in results) or len(results) < len(schedules)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
