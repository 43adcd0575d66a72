"""The fixed set of fault schedules ``make test`` runs: every fault kind at least once. Each
schedule is healed, run to idle and checked with ``ccat verify`` and a scan of the storage for the
original bytes of every raw file. Two harnesses run side by side (each with its own PostgreSQL
cluster, sshd, moto server, proxy and tmpfs). ``make faults`` runs the nightly-size set."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from ccat_dagster_tests.faults.harness import run_many
from ccat_dagster_tests.faults.report import summarize
from ccat_dagster_tests.faults.schedule import KINDS, fixed_schedules
from ccat_dagster_tests.fixtures.ci import unavailable

# 25 schedules on two harnesses: minutes, more on busy cores (a bound, not a target)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

WORKERS = 2


def _require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the fault harness mounts a tmpfs and starts PostgreSQL as its user: run as root"
    unavailable(message)


def test_fixed_schedules_lose_nothing(tmp_path) -> None:
    _require_root()
    schedules = fixed_schedules()
    assert len(schedules) >= 25
    results = run_many(schedules, tmp_path, workers=WORKERS)
    summary = summarize(results)
    logs = "\n".join(
        p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker-*.log"))
    )
    assert len(results) == len(schedules), f"{summary}\n{logs}"
    print(summary)
    assert not [r.seed for r in results if r.failed], summary
    assert sum(r.bytes_lost for r in results) == 0, summary
    assert not [r.seed for r in results if r.final_codes[-1:] != [0]], summary
    injected = Counter()
    for result in results:
        injected.update(result.injected)
    assert not [k for k in KINDS if not injected[k]], f"kinds never injected:\n{summary}"
