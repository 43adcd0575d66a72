"""The cleanup job's temporaries step: what killed runs left behind is removed, what a run in
flight may still be writing is kept (older than the oldest run in flight, minus the margin)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dagster import DagsterRunStatus, RunsFilter

from ccat_dagster.defs.cleanup import cleanup_run_config
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.topology import load_topology_snapshot
from ccat_dagster.instance import write_instance_config
from ccat_dagster.run_health import fail_dead_runs
from ccat_dagster.runner import open_instance
from ccat_dagster_tests.deployment_support import wait_until
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_dagster_tests.runner_support import start_sleeper
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

REPO = Path(__file__).resolve().parents[2]


def leftover(root: Path, name: str, mtime: float) -> Path:
    path = root / ".ccat-partial" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    os.utime(path, (mtime, mtime))
    return path


def test_cleanup_removes_temporaries_older_than_the_oldest_run_in_flight(
    ops_db_url, tmp_path, monkeypatch
):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path / "sites"))
    monkeypatch.setenv("CCAT_TEMP_SWEEP_MARGIN_SECONDS", "0")
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    buffer, lta = tmp_path / "sites" / "us" / "buffer", tmp_path / "sites" / "us" / "lta"
    with open_instance(home) as instance:
        sleeper = start_sleeper(home)
        try:
            [record] = wait_until(
                lambda: instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])),
                timeout=120,
                what="a run in flight",
            )
            started = record.start_time
            before = leftover(buffer, "killed-before.tar", started - 100)
            in_lta = leftover(lta, "killed-lta.tar", started - 100)
            during = leftover(buffer, "maybe-still-written.tar", started + 1)
            defs = build_site_definitions("us", ops_db_url=ops_db_url)
            site = load_topology_snapshot(ops_db_url).site("us")
            cleanup = defs.resolve_job_def("us_cleanup")
            dry = cleanup.execute_in_process(
                run_config=cleanup_run_config(site, dry_run=True), instance=instance
            )
            assert dry.success, "a dry run only lists them"
            assert before.exists(), "a dry run only lists them"
            result = cleanup.execute_in_process(
                run_config=cleanup_run_config(site), instance=instance
            )
            assert result.success
            assert not before.exists()
            assert not in_lta.exists()
            assert during.exists(), "younger than a run in flight: it may be its write"
        finally:
            os.kill(sleeper.pid, signal.SIGKILL)
            sleeper.wait()
        assert len(fail_dead_runs(instance)) == 1
        # with no run in flight the cutoff is now (margin 0): on a fast machine the steps above
        # took under the second by which the leftover is younger than the run's start
        wait_until(
            lambda: time.time() > during.stat().st_mtime,
            timeout=10,
            interval=0.1,
            what="the clock to pass the leftover's modification time",
        )
        result = defs.resolve_job_def("us_cleanup").execute_in_process(
            run_config=cleanup_run_config(site), instance=instance
        )
        assert result.success, "no run in flight any more"
        assert not during.exists(), "no run in flight any more"
