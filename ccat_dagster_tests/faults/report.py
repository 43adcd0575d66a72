"""The harness's summary: schedules run, faults injected by kind, violations, bytes lost,
packages stuck and why, and the seed of every failing schedule (each can be replayed alone)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ccat_dagster_tests.faults.driver import ScheduleResult
from ccat_dagster_tests.faults.schedule import KINDS, UNSURVIVABLE

REPLAY = "python -m ccat_dagster_tests.faults --seed {seed}"


def summarize(results: Iterable[ScheduleResult], *, seconds: float | None = None) -> str:
    results = list(results)
    injected: Counter = Counter()
    not_reached: Counter = Counter()
    for r in results:
        injected.update(r.injected)
        not_reached.update(r.not_reached)
    violations = sum(len(r.violations) for r in results)
    lost = sum(r.bytes_lost for r in results)
    failing = [r for r in results if r.failed]
    lines = [
        f"schedules run: {len(results)}"
        + (f" in {seconds:.0f} s ({seconds / max(len(results), 1):.1f} s each)" if seconds else ""),
        f"faults injected: {sum(injected.values())}",
    ]
    for kind in KINDS:
        extra = f" ({not_reached[kind]} not reached)" if not_reached[kind] else ""
        lines.append(f"  {kind:32} {injected[kind]:5}{extra}")
    lines += [
        f"invariant violations: {violations}",
        f"bytes of raw data lost: {lost}",
    ]
    unsurvivable = [(r.seed, len(r.unsurvivable)) for r in results if r.unsurvivable]
    if unsurvivable:
        lines.append(
            f"not survivable by design ({', '.join(sorted(UNSURVIVABLE))}): "
            f"{sum(n for _, n in unsurvivable)} file(s) in {len(unsurvivable)} schedule(s), "
            "reported, not counted as lost"
        )
        reported = sum(1 for r in results if r.reported_by_design)
        lines.append(f"  ccat verify reported the loss in {reported} of {len(unsurvivable)}")
    stuck = [(r.seed, s) for r in results for s in r.stuck]
    lines.append(f"packages stuck: {len(stuck)}")
    for seed, line in stuck[:40]:
        lines.append(f"  seed {seed}: {line}")
    timeouts = sum(r.step_timeouts for r in results)
    if timeouts:
        lines.append(f"steps that timed out: {timeouts}")
    not_idle = [r.seed for r in results if r.final_codes and r.final_codes[-1] != 0]
    if not_idle:
        lines.append(f"final run-until-idle not clean in schedules (seed): {not_idle}")
    lines.append(f"failing schedules: {len(failing)}")
    for r in failing:
        lines.append(f"  seed {r.seed}: {REPLAY.format(seed=r.seed)}")
        lines.append(f"    {r.description}")
        for v in r.violations[:10]:
            lines.append(f"    violation: {v}")
        if r.bytes_lost:
            lines.append(f"    lost {r.bytes_lost} bytes: {', '.join(r.files_lost[:10])}")
    return "\n".join(lines)
