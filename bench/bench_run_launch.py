"""Run launch rate of the real ``dagster-daemon`` on a PostgreSQL Dagster instance.

The deployment as production runs it, on one machine: Cologne's code location served by
``dagster code-server`` (``ccat_dagster.sites.site``, CCAT_SITE=cologne), ``dagster-daemon run``
with the instance config ``ccat instance init`` writes (``instance_templates/
dagster.postgres.yaml``: Dagster's QueuedRunCoordinator and DefaultRunLauncher, the run limits per
site, the pools' default limit), a scratch PostgreSQL ops DB with bench_deletion's topology and
a scratch PostgreSQL Dagster database (both ``bench_launch_*``, dropped at the end).

For each N: N runs of ``cologne_data_transfer_unpacking`` with no items (the cheapest real job:
it opens the ops DB, finds nothing to do, logs its counts) submitted through GraphQL
``launchRun`` as the UI and the sensors do (the run is QUEUED), then the daemon dequeues and
launches them (RUN_STARTING), the code server starts one run worker process per run (RUN_START),
and the run ends. Reported: submissions per minute, runs launched and completed per minute
(from the first submission), per-run times (queue wait, worker start, start -> end), and the
most runs in flight at once. Baseline, same machine and run: ``python -c "import dagster"`` as
a subprocess, a process building the site's definitions and the same job executed in process on
the same instance.

Each batch runs on two deployments one after the other (``--run-workers``): the code server as
Dagster starts run workers (``spawned``: a new interpreter per run, the baseline,
``spawned_run_workers_site.py``) and as deployed (``forked`` from a helper that has imported the
site's code, ``ccat_dagster/run_workers.py``). Each checks which one it got from the code
server's processes.

    .venv/bin/python bench/bench_run_launch.py [--runs 30,60] [--port 25100]
        [--run-workers spawned,forked]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deletion import migrate_with_topology
from scratch import scratch_database

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.instance import write_instance_config
from ccat_dagster.runner import open_instance
from ccat_dagster_tests.deployment_support import (
    Deployment,
    code_server_ready,
    max_concurrent,
    postgres_url_for_dagster,
    run_tag_limits,
    wait_until,
    write_workspace,
)

SITE = "cologne"
JOB = "cologne_data_transfer_unpacking"
OP = "cologne_data_transfer_unpacking_batch"
RUN_CONFIG = {"ops": {OP: {"config": {"items": []}}}}
#: the in-process baseline without its console log (the runs' own log level stays as deployed)
QUIET = {**RUN_CONFIG, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
REPO = Path(__file__).resolve().parents[1]
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
#: the location roots of bench_deletion's topology, made for the run when absent
ROOTS = {
    "ccat": ("primecam_raw_data", "telescope_buffer"),
    "cologne": ("buffer", "lta"),
    "us": ("buffer", "lta"),
}


@contextmanager
def location_roots() -> Iterator[None]:
    made = [Path("/tmp", site) for site in ROOTS if not Path("/tmp", site).exists()]
    for site, names in ROOTS.items():
        for name in names:
            Path("/tmp", site, name).mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for root in made:
            shutil.rmtree(root, ignore_errors=True)


def limits(dagster_yaml: Path) -> str:
    config = yaml.safe_load(dagster_yaml.read_text()) or {}
    concurrency = config.get("concurrency") or {}
    runs = concurrency.get("runs") or {}
    pools = concurrency.get("pools") or {}
    tags = ", ".join(f"{k} {v}" for k, v in run_tag_limits(dagster_yaml).items())
    return (
        f"max_concurrent_runs {runs.get('max_concurrent_runs')}, per unique tag value: {tags}; "
        f"pools default_limit {pools.get('default_limit')} (the job's one op is in pool "
        f"{SITE}_buffer_data_transfer_unpacking)"
    )


def baseline_import(reps: int = 3) -> float:
    """Best wall time of ``python -c "import dagster"`` in a fresh subprocess."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dagster"], check=True)
        best = min(best, time.perf_counter() - t)
    return best


def baseline_code_location(reps: int = 3) -> float:
    """Best wall time of a fresh process that imports ccat_dagster and builds Cologne's
    definitions from the ops DB: the least a run worker does before its first event."""
    code = (
        "import os; from ccat_dagster.defs.definitions import build_site_definitions; "
        f"build_site_definitions({SITE!r}, ops_db_url=os.environ['CCAT_OPS_DB_URL'])"
        ".get_repository_def()"
    )
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def baseline_in_process(ops_url: str, instance: DagsterInstance, reps: int = 3) -> float:
    """Best wall time of the job executed in process on the same instance (no queue, no
    launcher, no worker process)."""
    job = build_site_definitions(SITE, ops_db_url=ops_url).get_job_def(JOB)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        result = job.execute_in_process(run_config=QUIET, instance=instance)
        best = min(best, time.perf_counter() - t)
        assert result.success
    return best


def submit(context, n: int, batch: str) -> float:
    from dagster_graphql.test.utils import execute_dagster_graphql

    params = {
        "selector": {
            "repositoryLocationName": SITE,
            "repositoryName": "__repository__",
            "jobName": JOB,
        },
        "runConfigData": RUN_CONFIG,
        "executionMetadata": {"tags": [{"key": "bench/batch", "value": batch}]},
    }
    t = time.perf_counter()
    for _ in range(n):
        result = execute_dagster_graphql(context, LAUNCH, {"params": params})
        launched = (result.data or {}).get("launchRun") or {}
        if result.errors or launched.get("__typename") != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun failed: {result.errors or launched}")
    return time.perf_counter() - t


def measure(instance: DagsterInstance, deployment: Deployment, batch: str, n: int) -> list[dict]:
    """Wait until the batch's runs have ended; their timestamps."""
    runs_filter = RunsFilter(tags={"bench/batch": batch})
    records = []

    def done() -> bool:
        deployment.check_alive()
        nonlocal records
        records = instance.get_run_records(filters=runs_filter)
        return len(records) == n and all(r.dagster_run.status in TERMINAL for r in records)

    wait_until(done, timeout=60 * n, what=f"{n} runs to end", interval=0.5)
    rows = []
    for record in records:
        run_id = record.dagster_run.run_id
        starting = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_STARTING)
        launched = starting.records[0].timestamp if starting.records else float("nan")
        rows.append(
            {
                "status": record.dagster_run.status,
                "created": record.create_timestamp.timestamp(),
                "launched": launched,
                "start": record.start_time or float("nan"),
                "end": record.end_time or float("nan"),
            }
        )
    return rows


def report(n: int, submit_s: float, rows: list[dict], location_s: float, in_proc_s: float) -> None:
    first = min(r["created"] for r in rows)
    last_launch = max(r["launched"] for r in rows)
    last_end = max(r["end"] for r in rows)
    failed = sum(r["status"] != DagsterRunStatus.SUCCESS for r in rows)
    wait = [r["launched"] - r["created"] for r in rows]
    spawn = [r["start"] - r["launched"] for r in rows]
    work = [r["end"] - r["start"] for r in rows]
    total = [r["end"] - r["created"] for r in rows]
    peak = max_concurrent((r["start"], r["end"]) for r in rows)
    launched_peak = max_concurrent((r["launched"], r["end"]) for r in rows)

    def med_max(values: list[float]) -> str:
        return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"

    print(f"  submitted {n} runs (launchRun) in {submit_s:.1f} s: {60 * n / submit_s:.0f} per min")
    print(
        f"  launched (QUEUED -> RUN_STARTING): {60 * n / (last_launch - first):.1f} runs/min; "
        f"completed: {60 * n / (last_end - first):.1f} runs/min; all ended "
        f"{last_end - first:.1f} s after the first submission; {failed} not SUCCESS"
    )
    print(f"  queue wait (created -> launched): {med_max(wait)}")
    print(f"  worker start (launched -> RUN_START): {med_max(spawn)}")
    print(f"  run start -> end: {med_max(work)}; created -> end: {med_max(total)}")
    print(
        f"  most runs at once: {launched_peak} launched and not ended, {peak} between "
        "RUN_START and end"
    )
    sequential = location_s + in_proc_s
    print(
        f"  per run, daemon path (launched -> end, median) / baseline (a process building the "
        f"definitions {location_s:.2f} s + in-process run {in_proc_s:.2f} s = "
        f"{sequential:.2f} s): "
        f"{statistics.median(s + w for s, w in zip(spawn, work, strict=True)) / sequential:.1f}"
    )
    print(
        f"  completed per min / in-process runs per min, one after another "
        f"({60 / in_proc_s:.0f}): {(60 * n / (last_end - first)) / (60 / in_proc_s):.2f}"
    )


#: the module each kind of run worker's code server serves (bench/spawned_run_workers_site.py:
#: the site module with Dagster's own spawned run workers put back)
CODE_SERVER_MODULES = {"spawned": "spawned_run_workers_site", "forked": "ccat_dagster.sites.site"}


def forkserver_helpers(deployment: Deployment) -> list[int]:
    """The pids of multiprocessing forkserver helpers in the code server's process group."""
    groups = {p.popen.pid for p in deployment.processes if p.name.startswith("code-server")}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            in_group = os.getpgid(int(entry.name)) in groups
        except (OSError, ProcessLookupError):
            continue
        if in_group and b"multiprocessing.forkserver" in cmdline:
            found.append(int(entry.name))
    return found


def run_mode(
    args: argparse.Namespace,
    mode: str,
    sizes: list[int],
    deployment: Deployment,
    workspace: Path,
    instance: DagsterInstance,
    baseline: tuple[float, float],
) -> None:
    """Start the code server (run workers ``mode``) and the daemon, run the batches, report."""
    print(f"\n##### run workers {mode}")
    deployment.start_code_server(
        SITE,
        args.port,
        module=CODE_SERVER_MODULES[mode],
        extra_env={"PYTHONPATH": str(Path(__file__).resolve().parent)},
    )
    wait_until(
        lambda: deployment.check_alive() or code_server_ready(args.port),
        timeout=180,
        what="the code server to serve",
        describe=deployment.logs,
    )
    started = time.time()
    deployment.start_daemon(workspace)

    def heartbeat() -> bool:
        deployment.check_alive()
        beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
        return beat is not None and beat.timestamp > started

    wait_until(
        heartbeat,
        timeout=180,
        what="the daemon's run coordinator heartbeat",
        describe=deployment.logs,
    )
    from dagster_graphql.test.utils import define_out_of_process_context

    with define_out_of_process_context(str(workspace), None, instance) as context:
        for n in sizes:
            batch = uuid.uuid4().hex[:8]
            print(f"\n== {n} runs of {JOB}, run workers {mode}")
            submit_s = submit(context, n, batch)
            rows = measure(instance, deployment, batch, n)
            report(n, submit_s, rows, *baseline)
            daemon_log = (deployment.log_dir / "daemon.log").read_text(errors="replace")
            print(
                f"  load average {os.getloadavg()[0]:.1f}; daemon log so far: "
                f"{daemon_log.count('blocked by global concurrency limits')} runs held "
                "back by a pool limit"
            )
    helpers = forkserver_helpers(deployment)
    print(
        f"  run workers: forked from the helper {helpers[0]}"
        if helpers
        else "  run workers: spawned (no forkserver helper in the code server's group)"
    )
    if (mode == "forked") != bool(helpers):
        raise SystemExit(f"the code server did not start its run workers {mode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", default="30,60", help="runs per batch, comma-separated")
    parser.add_argument("--port", type=int, default=25100, help="the code server's port")
    parser.add_argument(
        "--dequeue-workers",
        type=int,
        default=0,
        help="add run_queue: dequeue_use_threads with this many workers to the instance config "
        "(0: as deployed, one launch after another)",
    )
    parser.add_argument(
        "--run-workers",
        default="spawned,forked",
        help="how the code server starts run workers, comma-separated, one deployment each in "
        "order: spawned (Dagster's own start, the baseline) and forked (as deployed: "
        "ccat_dagster/run_workers.py)",
    )
    parser.add_argument("--logs", type=Path, help="copy the daemon's and code server's logs here")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    sizes = [int(n) for n in args.runs.split(",")]
    modes = [m.strip() for m in args.run_workers.split(",")]
    if unknown := set(modes) - set(CODE_SERVER_MODULES):
        parser.error(f"--run-workers: unknown {sorted(unknown)}; use spawned and/or forked")
    with (
        location_roots(),
        scratch_database("bench_launch_ops") as ops_url,
        scratch_database("bench_launch_dagster") as dagster_url,
        tempfile.TemporaryDirectory(prefix="bench_launch_") as tmp,
    ):
        migrate_with_topology(ops_url)
        home = Path(tmp, "dagster_home")
        os.environ["DAGSTER_PG_URL"] = postgres_url_for_dagster(dagster_url)
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["CCAT_OPS_DB_URL"] = ops_url
        dagster_yaml = write_instance_config(home)
        if args.dequeue_workers:
            with dagster_yaml.open("a") as config:
                config.write(
                    "run_queue:\n  dequeue_use_threads: true\n"
                    f"  dequeue_num_workers: {args.dequeue_workers}\n"
                )
            print(f"run_queue: dequeue_use_threads, {args.dequeue_workers} workers (not deployed)")
        print(f"instance: {dagster_yaml.name} from dagster.postgres.yaml; {limits(dagster_yaml)}")
        workspace = write_workspace(Path(tmp, "workspace.yaml"), {SITE: args.port})
        log_dir = Path(tmp, "logs")
        log_dir.mkdir()
        instance = open_instance(home)
        try:
            import_s = baseline_import()
            location_s = baseline_code_location()
            in_proc_s = baseline_in_process(ops_url, instance)
            print(
                f"baseline (best of 3): python -c 'import dagster' {import_s:.2f} s; a process "
                f"building {SITE}'s definitions {location_s:.2f} s; {JOB} in process "
                f"{in_proc_s:.2f} s"
            )
            baseline = (location_s, in_proc_s)
            for mode in modes:
                deployment = Deployment(root=REPO, env=dict(os.environ), log_dir=log_dir / mode)
                deployment.log_dir.mkdir()
                try:
                    run_mode(args, mode, sizes, deployment, workspace, instance, baseline)
                finally:
                    if killed := deployment.stop():
                        print(f"killed after the timeout: {', '.join(killed)}")
        finally:
            if args.logs:
                shutil.copytree(log_dir, args.logs, dirs_exist_ok=True)
            instance.dispose()


if __name__ == "__main__":
    main()
