"""Running many schedules: one harness (its own components) or several side by side, each on a
share of the schedules, results gathered as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ccat_dagster_tests.faults import REPO_ROOT
from ccat_dagster_tests.faults.driver import ScheduleResult, run_schedule
from ccat_dagster_tests.faults.infra import infrastructure
from ccat_dagster_tests.faults.schedule import Schedule


def run_here(
    schedules: list[Schedule],
    workdir: Path,
    *,
    keep: bool = False,
    results_file: Path | None = None,
) -> list[ScheduleResult]:
    """Run ``schedules`` one after the other on one set of components started here."""
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


def run_many(
    schedules: list[Schedule], workdir: Path, *, workers: int = 1, keep: bool = False
) -> list[ScheduleResult]:
    """Run ``schedules`` on ``workers`` harness processes side by side (here when 1)."""
    if workers <= 1:
        return run_here(schedules, workdir, keep=keep)
    workdir.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(workers):
        share = schedules[index::workers]
        if not share:
            continue
        schedules_file = workdir / f"worker-{index}.schedules.json"
        schedules_file.write_text(json.dumps([s.as_dict() for s in share]))
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
            "--schedules-file",
            str(schedules_file),
        ]
        if keep:
            command.append("--keep")
        log = open(workdir / f"worker-{index}.log", "w")  # noqa: SIM115 - closed below
        processes.append(
            (
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT),
                log,
                results_file,
            )
        )
    for process, log, _results_file in processes:
        process.wait()
        log.close()
    results = read_results(workdir)
    for index in range(workers):
        print(f"worker {index}: {workdir / f'worker-{index}.log'}")
    if len(results) < len(schedules):
        print(f"WARNING: only {len(results)} of {len(schedules)} schedules reported (see logs)")
    return results


def read_results(workdir: Path) -> list[ScheduleResult]:
    """The results the workers of a run in ``workdir`` wrote so far."""
    return [
        ScheduleResult.from_dict(json.loads(line))
        for path in sorted(workdir.glob("worker-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
