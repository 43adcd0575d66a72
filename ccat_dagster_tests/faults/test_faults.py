"""The fixed set of fault schedules ``make test`` runs: every fault kind at least once, each
schedule healed, run to idle and checked with ``ccat verify`` and a scan of the storage for the
original bytes of every raw file. ``make faults`` runs the nightly-size set."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

from ccat_dagster_tests.faults.driver import ScheduleResult, run_schedule
from ccat_dagster_tests.faults.infra import Infrastructure, InfrastructureError, infrastructure
from ccat_dagster_tests.faults.report import summarize
from ccat_dagster_tests.faults.schedule import KINDS, Schedule, fixed_schedules

pytestmark = pytest.mark.slow

SCHEDULES = fixed_schedules()
RESULTS: dict[int, ScheduleResult] = {}


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    try:
        context = infrastructure(tmp_path_factory.mktemp("faults") / "infra")
        components = context.__enter__()
    except (InfrastructureError, OSError) as exc:
        message = f"cannot start the fault harness's components: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield components
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"seed{s.seed}-{s.kinds[0]}")
def test_schedule_keeps_every_byte(infra: Infrastructure, schedule: Schedule, tmp_path) -> None:
    result = run_schedule(infra, schedule, tmp_path)
    RESULTS[schedule.seed] = result
    assert not result.failed, summarize([result])
    assert result.final_codes and result.final_codes[-1] == 0, summarize([result])


def test_the_fixed_set_injected_every_kind() -> None:
    if len(RESULTS) < len(SCHEDULES):
        pytest.skip("runs after the whole fixed set (not selected alone)")
    injected = Counter()
    for result in RESULTS.values():
        injected.update(result.injected)
    print(summarize(RESULTS.values()))
    assert not [k for k in KINDS if not injected[k]], f"kinds never injected: {injected}"
