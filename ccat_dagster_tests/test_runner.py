"""``run_until_idle`` on tiny real Dagster definitions: work that keeps failing is not retried
again in the same invocation and is reported with its reason; a run whose process was killed
is found dead (pid gone, or reused: the start time differs) and marked failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ccat_dagster.instance import write_instance_config
from ccat_dagster.run_health import (
    OWNER_PID_TAG,
    dead_runs,
    fail_dead_runs,
    owner_alive,
    process_identity,
    process_running,
)
from ccat_dagster.runner import open_instance, run_until_idle
from ccat_dagster_tests import runner_support
from ccat_dagster_tests.deployment_support import wait_until

REPO = Path(__file__).resolve().parents[1]


def _instance(home: Path) -> DagsterInstance:
    write_instance_config(home)
    return open_instance(home)


def test_request_that_keeps_failing_is_blocked_with_its_reason(tmp_path):
    with _instance(tmp_path / "dagster_home") as instance:
        report = run_until_idle(
            [runner_support.failing_definitions()], instance=instance, log=lambda m: None
        )
    assert report.runs == 5, "stops retrying, far below max_passes"
    assert report.passes <= 6, "stops retrying, far below max_passes"
    assert not report.idle
    assert report.stopped is None
    [blocked] = report.blocked
    assert blocked.job_name == "always_fails"
    assert blocked.failures == 5
    assert runner_support.BROKEN in blocked.reason
    assert "pkg_7 at test/broken_disk" in blocked.reason
    assert blocked.last_run_id in blocked.describe()


def test_a_success_in_between_resets_the_count(tmp_path):
    runner_support.FLAKY_ATTEMPTS.clear()
    with _instance(tmp_path / "dagster_home") as instance:
        report = run_until_idle(
            [runner_support.flaky_definitions()],
            instance=instance,
            log=lambda m: None,
            max_request_failures=2,
        )
    assert len(report.failed_runs) == 5
    assert report.runs == 10
    assert report.blocked == []
    assert report.idle


def test_max_passes_is_reported(tmp_path):
    runner_support.FLAKY_ATTEMPTS.clear()
    with _instance(tmp_path / "dagster_home") as instance:
        report = run_until_idle(
            [runner_support.flaky_definitions()],
            instance=instance,
            log=lambda m: None,
            max_passes=3,
        )
    assert report.passes == 3
    assert not report.idle
    assert "stopped after 3 passes" in report.stopped


def test_owner_identity_judges_only_processes_it_can_see():
    me = process_identity()
    assert me is not None
    assert owner_alive(me) is True
    assert owner_alive(replace(me, start_ticks=me.start_ticks + 1)) is False  # pid reused
    assert owner_alive(replace(me, boot_id="another-boot")) is None
    assert owner_alive(replace(me, host="another-host")) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = process_identity(child.pid)
    assert identity is not None
    assert process_running(child.pid)
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped: a zombie
    assert not process_running(child.pid)
    assert owner_alive(identity) is False
    child.wait()
    assert not process_running(child.pid)
    assert owner_alive(identity) is False


def test_run_of_a_killed_runner_is_found_dead_and_failed(tmp_path):
    home = tmp_path / "dagster_home"
    with _instance(home) as instance:
        runner = runner_support.start_sleeper(home)
        try:
            run = wait_until(
                lambda: next(
                    iter(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))), None
                ),
                timeout=120,
                what="the sleeper run to start",
            )
            assert run.tags[OWNER_PID_TAG] == str(runner.pid)
            assert dead_runs(instance) == [], "its runner is alive"
        finally:
            os.kill(runner.pid, signal.SIGKILL)
            runner.wait()
        [dead] = dead_runs(instance)
        assert dead.run_id == run.run_id
        assert "no longer exists" in dead.reason
        assert [d.run_id for d in fail_dead_runs(instance)] == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert dead_runs(instance) == []
        assert fail_dead_runs(instance) == []


def test_sensor_observations_are_recorded_as_the_daemon_records_them(tmp_path):
    from dagster import DagsterEventType, EventRecordsFilter

    with _instance(tmp_path / "dagster_home") as instance:
        run_until_idle(
            [runner_support.observing_definitions()], instance=instance, log=lambda m: None
        )
        records = instance.get_event_records(
            EventRecordsFilter(
                event_type=DagsterEventType.ASSET_OBSERVATION,
                asset_key=runner_support.OBSERVED,
            )
        )
    assert records, "the buffer monitor's observations reach the UI under run-until-idle too"


def test_schedule_ticks_use_the_loop_instance_and_open_no_other(tmp_path, monkeypatch):
    """A schedule context opened a fresh DagsterInstance from its reference on every tick
    (storages, connections, schema checks: ~0.6 s on SQLite, each schedule on every pass)."""
    runner_support.SCHEDULE_INSTANCES.clear()
    with _instance(tmp_path / "dagster_home") as instance:

        def opened(*args, **kwargs):
            raise AssertionError("a schedule tick opened another Dagster instance")

        monkeypatch.setattr(DagsterInstance, "from_ref", opened)
        report = run_until_idle(
            [runner_support.scheduled_definitions()], instance=instance, log=lambda m: None
        )
    assert report.failed_ticks == []
    assert runner_support.SCHEDULE_INSTANCES
    assert all(seen is instance for seen in runner_support.SCHEDULE_INSTANCES)


def test_resources_are_initialized_once_per_invocation_and_torn_down_at_its_end(tmp_path):
    """Dagster initializes a sensor's resources anew for every tick (~10 ms per
    ConfigurableResource, a third of an idle tick); the loop initializes them once."""
    runner_support.RESOURCE_LIFECYCLE.clear()
    with _instance(tmp_path / "dagster_home") as instance:
        report = run_until_idle(
            [runner_support.resource_definitions()], instance=instance, log=lambda m: None
        )
    assert report.idle, report
    assert report.failed_ticks == []
    assert report.runs == runner_support.TICKS_WANTED - 1
    assert report.passes == runner_support.TICKS_WANTED  # each tick in a pass of its own
    assert runner_support.RESOURCE_LIFECYCLE == ["setup", "teardown"]
