"""Dead run workers in the daemon deployment: a real ``dagster code-server`` and
``dagster-daemon`` on the shipped instance template (run monitoring on; in this test a short
poll interval and a 20 s maximum runtime). The daemon launches packaging runs whose run worker
blocks reading a raw file (a FIFO put in its place).

1. The run worker is killed with SIGKILL: its code server, which watches its run workers,
   marks the run FAILED, and a new run of the stage packages the same items.
2. The code server is killed together with its run worker (a crashed container): nothing is
   left to notice, the run stays STARTED until Dagster's run monitoring fails it at its maximum
   runtime; then, with the code server back, a new run packages its items.
3. The helper the code server forks its run workers from is killed alone: the worker dies with
   it, the code server fails the run, and a new run (from a new helper) packages its items.

Ops DB on PostgreSQL, Dagster instance on SQLite."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from sqlalchemy import select

from ccat_dagster.instance import write_instance_config
from ccat_dagster.run_health import process_running
from ccat_dagster.runner import open_instance
from ccat_dagster_tests.deployment_support import (
    BIN,
    Deployment,
    ManagedProcess,
    code_server_ready,
    free_port,
    wait_until,
    write_workspace,
)
from ccat_dagster_tests.pipeline_support import file_simulated_data, real_topology
from ccat_ops_db.models import RawDataFile, RawDataPackage, Status
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

# a deployment under the daemon: minutes, more on busy cores (a bound, not a target)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
JOB = "ccat_raw_data_package_creation"
SENSOR = f"{JOB}_sensor"
STARTED_PID = re.compile(r"Started process for run \(pid: (\d+)\)")
MAX_RUNTIME = 20


@dataclass
class Site:
    deployment: Deployment
    code_server: ManagedProcess
    port: int
    home: Path
    workspace: Path
    url: str
    root: Path

    def start_code_server(self) -> None:
        self.code_server = self.deployment.start_code_server("ccat", self.port)
        wait_until(
            lambda: self.deployment.check_alive() or code_server_ready(self.port),
            timeout=120,
            what="the code server of ccat to serve",
            describe=self.deployment.logs,
        )

    def kill_code_server(self) -> None:
        """SIGKILL the code server and everything it started (its run workers)."""
        os.killpg(self.code_server.popen.pid, signal.SIGKILL)
        self.code_server.popen.wait()
        self.deployment.processes.remove(self.code_server)


@pytest.fixture
def site(tmp_path, fresh_postgres_url) -> Iterator[Site]:
    root = tmp_path / "sites"
    with session_scope(fresh_postgres_url) as session:
        apply_topology(session, real_topology(root))
    home = tmp_path / "dagster_home"
    config_path = write_instance_config(home)
    config = yaml.safe_load(config_path.read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    config["run_monitoring"].update(poll_interval_seconds=2, max_runtime_seconds=MAX_RUNTIME)
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    workspace = write_workspace(tmp_path / "workspace.yaml", {"ccat": port})
    env = {
        **os.environ,
        "CCAT_OPS_DB_URL": fresh_postgres_url,
        "DAGSTER_HOME": str(home),
        "CCAT_SENSOR_INTERVAL_SECONDS": "2",
    }
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    deployment = Deployment(root=REPO, env=env, log_dir=log_dir)
    try:
        running = Site(deployment, None, port, home, workspace, fresh_postgres_url, root)  # type: ignore[arg-type]
        running.start_code_server()
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
        deployment.stop()


def _file_one_blocked_obs_unit(site: Site, seed: int) -> tuple[Path, Path]:
    """File an obs unit and put a FIFO in place of one of its files; (path, the real file)."""
    with session_scope(site.url) as session:
        filed = file_simulated_data(
            session, site.root, n_obs_units=1, files_per_unit=2, max_size=50_000, seed=seed
        )
        first = session.scalars(
            select(RawDataFile).where(RawDataFile.relative_path.contains(filed[0].obs_unit))
        ).first()
        path = Path(first.source_location.path) / first.relative_path
    kept = path.with_name(path.name + ".kept")
    os.replace(path, kept)
    os.mkfifo(path)  # the packaging run blocks opening it, STARTED, until killed
    return path, kept


def _worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        match = STARTED_PID.search(entry.message or "")
        if match:
            return int(match.group(1))
    return None


def _parent_pid(pid: int | None) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _parent_command(pid: int | None) -> str:
    """The command line of the parent of process ``pid``."""
    cmdline = Path(f"/proc/{_parent_pid(pid)}/cmdline").read_bytes()
    return cmdline.replace(b"\0", b" ").decode()


def _runs(instance: DagsterInstance, status: DagsterRunStatus) -> list[DagsterRun]:
    return list(instance.get_runs(RunsFilter(job_name=JOB, statuses=[status])))


def _wait_blocked_run(site: Site, instance: DagsterInstance, seen: set[str]) -> DagsterRun:
    def started():
        site.deployment.check_alive()
        fresh = [r for r in _runs(instance, DagsterRunStatus.STARTED) if r.run_id not in seen]
        return fresh[0] if fresh and _worker_pid(instance, fresh[0].run_id) else None

    return wait_until(
        started, timeout=180, what="the daemon to launch a run", describe=site.deployment.logs
    )


def _wait_status(site: Site, instance: DagsterInstance, run_id: str, status) -> DagsterRun:
    return wait_until(
        lambda: (run := instance.get_run_by_id(run_id)).status == status and run,
        timeout=180,
        what=f"run {run_id} to be {status}",
        describe=site.deployment.logs,
    )


def _wait_rerun(site: Site, instance: DagsterInstance, dead: DagsterRun) -> DagsterRun:
    """A later successful run of the same items (the dead run holds them busy no more)."""
    return wait_until(
        lambda: next(
            (
                r
                for r in _runs(instance, DagsterRunStatus.SUCCESS)
                if r.run_config == dead.run_config
            ),
            None,
        ),
        timeout=180,
        what="a new run of the dead run's items to succeed",
        describe=site.deployment.logs,
    )


def _messages(instance: DagsterInstance, run_id: str) -> str:
    return " ".join(entry.message or "" for entry in instance.all_logs(run_id))


def test_dead_run_workers_are_failed_and_their_items_run_again(site: Site):
    with open_instance(site.home) as instance:
        # 1. the run worker is killed; its code server lives on
        path, kept = _file_one_blocked_obs_unit(site, seed=1)
        run = _wait_blocked_run(site, instance, set())
        worker = _worker_pid(instance, run.run_id)
        helper = _parent_command(worker)
        # forked from the code server's helper that has imported the site (run_workers.py)
        assert "multiprocessing.forkserver" in helper, helper
        assert "ccat_dagster.run_worker_preload" in helper, helper
        os.kill(worker, signal.SIGKILL)
        os.replace(kept, path)  # the new run reads the real file
        _wait_status(site, instance, run.run_id, DagsterRunStatus.FAILURE)
        assert "signal 9" in _messages(instance, run.run_id)
        _wait_rerun(site, instance, run)

        # 2. the code server dies with its run worker: run monitoring fails the run
        path, kept = _file_one_blocked_obs_unit(site, seed=2)
        seen = {r.run_id for r in instance.get_runs(RunsFilter(job_name=JOB))}
        run = _wait_blocked_run(site, instance, seen)
        site.kill_code_server()
        os.replace(kept, path)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
        site.start_code_server()
        _wait_status(site, instance, run.run_id, DagsterRunStatus.FAILURE)
        assert f"maximum runtime of {MAX_RUNTIME} seconds" in _messages(instance, run.run_id)
        _wait_rerun(site, instance, run)

        # 3. the helper the run workers are forked from is killed alone (run_worker_preload.py):
        # its worker dies with it, so the run the code server fails is really over
        path, kept = _file_one_blocked_obs_unit(site, seed=3)
        seen = {r.run_id for r in instance.get_runs(RunsFilter(job_name=JOB))}
        run = _wait_blocked_run(site, instance, seen)
        worker = _worker_pid(instance, run.run_id)
        helper = _parent_pid(worker)
        os.kill(helper, signal.SIGKILL)
        _wait_status(site, instance, run.run_id, DagsterRunStatus.FAILURE)
        wait_until(
            lambda: not process_running(worker), timeout=30, what=f"run worker {worker} to be gone"
        )
        os.replace(kept, path)
        site.deployment.check_alive()  # the code server lives on
        _wait_rerun(site, instance, run)  # from a new helper
    with session_scope(site.url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        assert len(packages) == 6
        assert {p.status for p in packages} == {Status.COMPLETED}
