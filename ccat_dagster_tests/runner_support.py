"""Tiny Definitions for runner tests, independent of the pipeline: a job that always fails (like
a cleanup whose storage is permanently broken), one that fails every other time, and one that
runs until it is killed (``start_sleeper`` runs it in a child process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dagster import (
    AssetKey,
    AssetObservation,
    ConfigurableResource,
    Definitions,
    Failure,
    InitResourceContext,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    schedule,
    sensor,
)

BROKEN = "cannot open the storage of test/broken_disk: permission denied"


@op
def broken_storage_op() -> None:
    raise Failure(
        description=BROKEN,
        metadata={"copy": MetadataValue.text("RawDataPackage pkg_7 at test/broken_disk")},
        allow_retries=False,
    )


@job
def always_fails() -> None:
    broken_storage_op()


@sensor(job=always_fails)
def always_requests_the_failing_job(_context: SensorEvaluationContext):
    return RunRequest(run_config={}, tags={"test": "always_fails"})


def failing_definitions() -> Definitions:
    return Definitions(jobs=[always_fails], sensors=[always_requests_the_failing_job])


FLAKY_ATTEMPTS: list[int] = []  # attempts of the flaky op in this process
FLAKY_RUNS_WANTED = 10


@op
def flaky_op() -> None:
    FLAKY_ATTEMPTS.append(1)
    if len(FLAKY_ATTEMPTS) % 2 == 1:
        raise Failure(description="transient trouble", allow_retries=False)


@job
def flaky() -> None:
    flaky_op()


@sensor(job=flaky)
def requests_flaky_until_done(_context: SensorEvaluationContext):
    if len(FLAKY_ATTEMPTS) >= FLAKY_RUNS_WANTED:
        return SkipReason("done")
    return RunRequest(run_config={}, tags={"test": "flaky"})


def flaky_definitions() -> Definitions:
    return Definitions(jobs=[flaky], sensors=[requests_flaky_until_done])


@op
def sleep_until_killed() -> None:
    time.sleep(600)


@job
def sleeper() -> None:
    sleep_until_killed()


@sensor(job=sleeper)
def requests_the_sleeper_once(context: SensorEvaluationContext):
    if context.cursor:
        return SkipReason("requested already")
    context.update_cursor("requested")
    return RunRequest(run_config={}, tags={"test": "sleeper"})


def sleeper_definitions() -> Definitions:
    return Definitions(jobs=[sleeper], sensors=[requests_the_sleeper_once])


def start_sleeper(home: Path) -> subprocess.Popen:
    """A child run-until-idle on ``home`` whose sleeper run stays in flight until it is killed.

    The child opens the instance as the CLI does (under the instance lock), so it cannot race the
    test's own first open of a new DAGSTER_HOME."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(home)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "DAGSTER_HOME": str(home)},
    )


OBSERVED = AssetKey(["test", "buffer", "raw_data_package"])


@sensor(job=always_fails)
def observes_a_buffer(_context: SensorEvaluationContext):
    """Like the buffer monitor: an observation each tick, no run."""
    return SensorResult(
        asset_events=[AssetObservation(asset_key=OBSERVED, metadata={"used_percent": 12.5})]
    )


def observing_definitions() -> Definitions:
    return Definitions(jobs=[always_fails], sensors=[observes_a_buffer])


#: the instance each tick of ``reads_the_instance`` saw, in this process
SCHEDULE_INSTANCES: list[object] = []


@op
def noop() -> None:
    pass


@job
def nothing() -> None:
    noop()


@schedule(job=nothing, cron_schedule="* * * * *")
def reads_the_instance(context: ScheduleEvaluationContext):
    """Like the cleanup schedule: reads the runs in flight from ``context.instance``."""
    SCHEDULE_INSTANCES.append(context.instance)
    context.instance.get_runs_count()
    return SkipReason("nothing to do")


def scheduled_definitions() -> Definitions:
    return Definitions(jobs=[nothing], schedules=[reads_the_instance])


#: what the counted resource went through in this process: "setup", "teardown"
RESOURCE_LIFECYCLE: list[str] = []
TICKS_WANTED = 4


class CountedResource(ConfigurableResource):
    """Like the ops DB resource: config only; counts its setups and teardowns."""

    name: str = "counted"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        RESOURCE_LIFECYCLE.append("setup")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        RESOURCE_LIFECYCLE.append("teardown")


@sensor(job=nothing)
def uses_the_resource(context: SensorEvaluationContext, counted: CountedResource):
    """Requests a run on each of its first ticks (so that the loop makes several passes)."""
    ticks = int(context.cursor or 0) + 1
    context.update_cursor(str(ticks))
    if ticks >= TICKS_WANTED:
        return SkipReason(f"{counted.name}: done")
    return RunRequest(run_key=str(ticks), run_config={}, tags={"test": counted.name})


@schedule(job=nothing, cron_schedule="* * * * *")
def schedule_uses_the_resource(_context: ScheduleEvaluationContext, counted: CountedResource):
    return SkipReason(f"{counted.name}: nothing to do")


def resource_definitions() -> Definitions:
    return Definitions(
        jobs=[nothing],
        sensors=[uses_the_resource],
        schedules=[schedule_uses_the_resource],
        resources={"counted": CountedResource()},
    )


if __name__ == "__main__":
    from ccat_dagster.runner import open_instance, run_until_idle

    with open_instance(sys.argv[1]) as _instance:
        run_until_idle([sleeper_definitions()], instance=_instance)
