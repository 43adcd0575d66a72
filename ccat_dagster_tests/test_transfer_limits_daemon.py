"""The policy's transfer limits bind under a real ``dagster-daemon`` (issue 13).

One code server (the LTA site cologne) and ``dagster-daemon run`` on the instance that
``ccat_dagster.instance`` writes from the policy. 121 bundles are routed to cologne, more than 5
transfer runs of 20; every bundle at the telescope buffer is a FIFO, so each transfer run blocks
on its first bundle and stays in flight. At NORMAL exactly ``max_normal_transfers`` (5) runs are
in flight at once, each holding a slot of the ``data_transfer`` pool, and never more (with the
former fixed run limit of 4 per site the fifth waited in the queue). Then cologne's buffer is
put at CRITICAL by a disk-usage sample; the pool drops to ``max_critical_transfers`` (1), the 5
run workers are killed (their pool slots are freed by run monitoring, as
``free_slots_after_run_end_seconds`` in the templates does in production), and from then on at
most 1 transfer run is in flight.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import select

from ccat_dagster.defs.sensors import IN_FLIGHT
from ccat_dagster.instance import write_instance_config
from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.runner import open_instance
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.deployment_support import (
    BIN,
    Deployment,
    code_server_ready,
    free_port,
    wait_until,
    write_workspace,
)
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.models import DataLocation, Site, Status
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JOB = "cologne_data_transfer"
SENSOR = f"{JOB}_sensor"
POOL = "cologne_buffer_data_transfer"
STARTED_PID = re.compile(r"Started process for run \(pid: (\d+)\)")
#: more bundles than 5 runs of 20 take, so a sixth run would be requested if allowed
BUNDLES = 5 * 20 + 21
#: how long a phase keeps sampling after reaching its limit (sensor ticks every 2 s)
HOLD_SECONDS = 12


@dataclass
class Running:
    deployment: Deployment
    home: Path
    url: str
    root: Path


def _route_blocked_bundles(url: str, root: Path) -> None:
    """BUNDLES bundles at the telescope buffer, each with a PENDING transfer to cologne and a
    FIFO in place of its tar: a transfer run blocks opening the first one it pulls."""
    fifos = []
    with session_scope(url) as session:
        locations = {loc.qualified_name: loc for loc in session.scalars(select(DataLocation))}
        sites = {s.short_name: s for s in session.scalars(select(Site))}
        topo = f.Topology(session=session, root=root, sites=sites, locations=locations)
        for _ in range(BUNDLES):
            package = f.file_raw_data_package(topo, write=False)
            dtp = f.bundle(topo, [package], write=False)
            f.transfer(
                topo, dtp, to_site="cologne", status=Status.PENDING, unpack_status=Status.PENDING
            )
            fifos.append(Path(topo.source_buffer.path) / dtp.relative_path)
    for path in fifos:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)


@pytest.fixture
def running(tmp_path, ops_db_url) -> Iterator[Running]:
    root = tmp_path / "sites"
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(root))
        policy = get_policy(session)
    assert (policy.max_normal_transfers, policy.max_critical_transfers) == (5, 1)
    _route_blocked_bundles(ops_db_url, root)
    home = tmp_path / "dagster_home"
    config_path = write_instance_config(home, policy=policy)
    # the killed runs' pool slots are freed after their end, as in production, only sooner
    config = yaml.safe_load(config_path.read_text())
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    config["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    workspace = write_workspace(tmp_path / "workspace.yaml", {"cologne": port})
    env = {
        **os.environ,
        "CCAT_OPS_DB_URL": ops_db_url,
        "DAGSTER_HOME": str(home),
        "CCAT_SENSOR_INTERVAL_SECONDS": "2",
    }
    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        env.pop(name, None)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    deployment = Deployment(root=REPO, env=env, log_dir=log_dir)
    running = Running(deployment, home, ops_db_url, root)
    try:
        deployment.start_code_server("cologne", port)
        wait_until(
            lambda: deployment.check_alive() or code_server_ready(port),
            timeout=120,
            what="the code server of cologne to serve",
            describe=deployment.logs,
        )
        deployment.start_daemon(workspace)
        result = subprocess.run(
            [str(BIN / "dagster"), "sensor", "start", SENSOR, "-w", str(workspace)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield running
    finally:
        with open_instance(home) as instance:  # blocked workers would hold up the stop
            for run in _runs(instance, IN_FLIGHT):
                _kill_worker(instance, run.run_id)
        deployment.stop(timeout=30)


def _runs(instance: DagsterInstance, statuses: list[DagsterRunStatus]):
    return list(instance.get_runs(RunsFilter(job_name=JOB, statuses=statuses)))


def _kill_worker(instance: DagsterInstance, run_id: str) -> None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        match = STARTED_PID.search(entry.message or "")
        if match:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(match.group(1)), signal.SIGKILL)


@dataclass
class Sample:
    in_flight: int  # queued, starting or started
    started: int
    pool_claimed: int
    pool_limit: int


def _sample(instance: DagsterInstance) -> Sample:
    pool = instance.event_log_storage.get_concurrency_info(POOL)
    return Sample(
        in_flight=len(_runs(instance, IN_FLIGHT)),
        started=len(_runs(instance, [DagsterRunStatus.STARTED])),
        pool_claimed=pool.active_slot_count,
        pool_limit=pool.slot_count,
    )


def _observe(running: Running, instance: DagsterInstance, reached, timeout: float) -> list[Sample]:
    """Samples until ``reached(sample)`` and for HOLD_SECONDS more (at most ``timeout`` s)."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    reached_at = None
    while time.monotonic() < deadline:
        running.deployment.check_alive()
        sample = _sample(instance)
        samples.append(sample)
        if reached_at is None and reached(sample):
            reached_at = time.monotonic()
        if reached_at is not None and time.monotonic() - reached_at >= HOLD_SECONDS:
            return samples
        time.sleep(0.5)
    raise AssertionError(
        f"limit not reached in {timeout} s; last samples {samples[-3:]}\n"
        f"{running.deployment.logs()}"
    )


def test_five_transfers_in_flight_at_normal_and_one_at_critical(running: Running):
    with open_instance(running.home) as instance:
        # NORMAL: 5 transfer runs at once, each op holding a data_transfer pool slot
        normal = _observe(
            running, instance, lambda s: s.started == 5 and s.pool_claimed == 5, timeout=100
        )
        assert max(s.in_flight for s in normal) == 5, "never more than max_normal_transfers"
        assert max(s.pool_claimed for s in normal) == 5
        assert {s.pool_limit for s in normal if s.pool_limit} == {5}

        # CRITICAL: the pool and the sensor drop to 1; the 5 blocked runs are ended
        with session_scope(running.url) as session:
            buffer = session.scalars(
                select(DataLocation).where(DataLocation.name == "buffer")
            ).all()
            cologne = next(loc for loc in buffer if loc.site.short_name == "cologne")
            record_disk_usage(session, cologne, used_bytes=90, total_bytes=100)
        wait_until(
            lambda: _sample(instance).pool_limit == 1,
            timeout=30,
            what="the transfer sensor to lower the pool to max_critical_transfers",
            describe=running.deployment.logs,
        )
        blocked = _runs(instance, IN_FLIGHT)
        assert len(blocked) == 5
        for run in blocked:
            _kill_worker(instance, run.run_id)
        wait_until(
            lambda: all(
                instance.get_run_by_id(r.run_id).status == DagsterRunStatus.FAILURE for r in blocked
            ),
            timeout=60,
            what="the killed transfer runs to be failed",
            describe=running.deployment.logs,
        )
        critical = _observe(
            running, instance, lambda s: s.started == 1 and s.pool_claimed == 1, timeout=60
        )
        assert max(s.in_flight for s in critical) == 1, "never more than max_critical_transfers"
        assert max(s.started for s in critical) == 1
        assert {s.pool_limit for s in critical} == {1}
