"""End-to-end throughput: N GB of instrument-like files through three sites, and the bound.

The e2e topology of the pipeline tests (``ccat_dagster_tests.pipeline_support.real_topology``):
SOURCE ``ccat/primecam_raw_data`` on local disk, the telescope buffer behind a real sshd
(test fixture), Cologne's buffer on disk and its archive on a moto S3 server, the US buffer and
archive on disk. Both databases (ops DB and Dagster's storage) are scratch PostgreSQL databases
of their own (created and dropped).

By default the runs are driven as in production: one ``dagster code-server`` per site,
``dagster-daemon run`` (QueuedRunCoordinator, each run launched by its code server as a
subprocess, several in flight within the run limits of dagster.yaml) and ``dagster-webserver``,
through which every sensor and schedule of the three sites is turned on (the processes and
GraphQL helpers of the deployment test, ``ccat_dagster_tests.deployment_support``). The sensors
tick every ``--sensor-interval`` seconds and the cleanup schedule on ``--cleanup-cron``. The
bench files the data and waits until every package is ARCHIVED in both archives and the
telescope (SOURCE and buffer) is clean. ``--run-until-idle`` drives the same world with
``run_until_idle`` instead (``ccat run-until-idle``: every sensor ticked, each requested run
executed in process, one at a time): no daemon latency, and no overlap of stages.

Prints: raw-data throughput end to end (filing to the last archive copy and the cleanup),
time per stage (Dagster run records by job: runs, wall time, step time) and Dagster overhead
per run (run wall minus its steps) and per package, and the ratio to the bound of the slowest
component measured in the same run (sha256 of the data, disk write with fsync, SSH pull
through the sshd, S3 put to moto). Under the daemon also: the run limits in force, the time of
each run in the queue and in its launch (dequeued to STARTED: subprocess and code load), the
span of each stage, the most runs in flight and the time no run was in flight at all.

    .venv/bin/python bench/bench_e2e.py [--gb 10] [--workdir /tmp/ccat_bench_e2e]
        [--run-until-idle] [--sensor-interval 5] [--cleanup-cron '* * * * *'] [--port 0]
        [--sensor-threads 0] [--db-prefix ccat_bench_e2e]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch import scratch_database

from ccat_dagster.instance import write_instance_config
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.runner import load_site_definitions, open_instance, run_until_idle
from ccat_dagster.simulate import simulate_instrument
from ccat_dagster.storage.s3 import S3Storage
from ccat_dagster_tests.fixtures.s3server import FAKE_ENV, running_moto_server, s3_admin_client
from ccat_dagster_tests.fixtures.sshd import running_sshd
from ccat_dagster_tests.pipeline_support import copy_statuses, real_topology
from ccat_ops_db.checksum import checksum_file
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

MB = 1_000_000
MODULES = ("pcam_280ghz", "pcam_350ghz")
SITES = ("ccat", "cologne", "us")
REPO = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def measure_bounds(files: list[Path], sample: Path, sshd, endpoint: str, work: Path) -> dict:
    """MB/s of each component on this machine, now: sha256 of all the data (page cache), a
    disk write with fsync, an SSH pull and an S3 put of ``sample``."""
    size = sample.stat().st_size
    total = sum(f.stat().st_size for f in files)
    sha_s, _ = timed(lambda: [checksum_file(f) for f in files])
    out = work / "bound-disk.bin"

    def disk_write() -> None:
        with open(sample, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())

    disk_s, _ = timed(disk_write)
    remote = work / "bound-ssh"
    remote.mkdir(exist_ok=True)
    shutil.copyfile(sample, remote / "sample.bin")
    storage = sshd.storage(remote, name="bench/ssh")
    (remote / "warm-up.bin").write_bytes(b"warm-up")  # the connection is up before timing
    with storage.open_read("warm-up.bin") as stream:
        stream.read()

    def ssh_pull() -> None:
        with storage.open_read("sample.bin") as stream, open(out, "wb") as dst:
            while chunk := stream.read(1024 * 1024):
                dst.write(chunk)

    ssh_s, _ = timed(ssh_pull)
    s3_admin_client(endpoint).create_bucket(Bucket="bound")
    s3 = S3Storage("bench/s3", "bound", "put", endpoint_url=endpoint, region="us-east-1")
    digest, _ = checksum_file(sample)

    def s3_put() -> None:
        with open(sample, "rb") as fh:
            s3.write_stream("sample.bin", fh, expected_checksum=digest, size_hint=size)

    s3_s, _ = timed(s3_put)
    out.unlink(missing_ok=True)
    shutil.rmtree(remote)
    return {
        "sha256": total / sha_s / MB,
        "disk write": size / disk_s / MB,
        "ssh pull": size / ssh_s / MB,
        "s3 put": size / s3_s / MB,
    }


def run_rows(instance) -> list[dict]:
    """One dict per finished run: stage (job without its site prefix), created, dequeued,
    started, ended (epoch s; dequeued None when the run was not queued) and step seconds."""
    from dagster import DagsterEventType, RunsFilter

    rows = []
    for record in instance.get_run_records(RunsFilter()):
        run = record.dagster_run
        if record.start_time is None or record.end_time is None:
            continue
        steps = sum(
            (s.end_time or 0) - (s.start_time or 0)
            for s in instance.get_run_step_stats(run.run_id)
            if s.start_time and s.end_time
        )
        first: dict[str, float] = {}
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else None
            if kind is not None and kind not in first:
                first[kind] = entry.timestamp
        # the site prefix off: one row per stage over all sites
        job = run.job_name.split("_", 1)[1] if "_" in run.job_name else run.job_name
        rows.append(
            {
                "stage": job,
                "created": record.create_timestamp.timestamp(),
                "dequeued": first.get(DagsterEventType.RUN_DEQUEUED.value),
                "starting": first.get(DagsterEventType.RUN_STARTING.value),
                "started": record.start_time,
                "ended": record.end_time,
                "steps": steps,
            }
        )
    return rows


def stage_table(rows: list[dict]) -> dict[str, list[float]]:
    """Per stage: [runs, run wall s, step s]."""
    by_job: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for row in rows:
        entry = by_job[row["stage"]]
        entry[0] += 1
        entry[1] += row["ended"] - row["started"]
        entry[2] += row["steps"]
    return dict(by_job)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals."""
    total, end_so_far = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= end_so_far:
            continue
        total += end - max(start, end_so_far)
        end_so_far = end
    return total


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    return (
        f"mean {sum(ordered) / len(ordered):.1f} s, median {median:.1f} s, max {ordered[-1]:.1f} s"
    )


def archived_and_clean(ops_url: str) -> bool:
    """Every package ARCHIVED and PRESENT in both archives, the telescope buffer DELETED and
    the SOURCE's files released (DELETION_POSSIBLE: the policy keeps them for the retention
    period, 30 days by default, or DELETED): where ``run_until_idle`` ends."""
    from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
    from ccat_ops_db.models import LocationType, PackageState, PhysicalCopyStatus, RawDataPackage

    with session_scope(ops_url) as session:
        states = session.scalars(sa.select(RawDataPackage.state)).all()
        if not states or any(state != PackageState.ARCHIVED for state in states):
            return False
        if packages_missing_from_ltas(session):
            return False
    released = {
        LocationType.SOURCE: {PhysicalCopyStatus.DELETION_POSSIBLE, PhysicalCopyStatus.DELETED},
        LocationType.BUFFER: {PhysicalCopyStatus.DELETED},
    }
    for location_type, done in released.items():
        statuses = copy_statuses(ops_url, "ccat", location_type)
        if not statuses or any(s not in done for s in statuses):
            return False
    return True


def telescope_statuses(ops_url: str) -> str:
    from ccat_ops_db.models import LocationType

    parts = []
    for location_type in (LocationType.SOURCE, LocationType.BUFFER):
        counts: dict[str, int] = defaultdict(int)
        for status in copy_statuses(ops_url, "ccat", location_type):
            counts[status.value] += 1
        parts.append(f"{location_type.value} {dict(counts)}")
    return "; ".join(parts)


def file_everything(ops_url: str, files) -> None:
    """What the ingest sensor would do: register every raw file, by obs unit and module."""
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for f in files:
        groups[(f.obs_unit, f.instrument_module)].append(f.path)
    with session_scope(ops_url) as session:
        for (unit, module), paths in sorted(groups.items()):
            register_raw_data_files(session, "ccat/primecam_raw_data", unit, module, paths)


def drive_run_until_idle(home: Path, ops_url: str, files) -> dict:
    write_instance_config(home)
    cpu_before = group_cpu_seconds(os.getpgrp())
    start, start_epoch = time.perf_counter(), time.time()
    file_everything(ops_url, files)
    filing_s = time.perf_counter() - start
    with open_instance(home) as instance:
        run_until_idle(
            load_site_definitions(None, ops_db_url=ops_url),
            instance=instance,
            max_passes=1000,
            log=lambda m: None,
        )
        e2e_s = time.perf_counter() - start
        cpu = {"bench (runs, moto, sshd)": group_cpu_seconds(os.getpgrp()) - cpu_before}
        rows = run_rows(instance)
    return {
        "e2e_s": e2e_s,
        "filing_s": filing_s,
        "start_epoch": start_epoch,
        "rows": rows,
        "cpu": cpu,
    }


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of the live processes of a process
    group: a deployment process with its subprocesses (a code server's gRPC server and run
    workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


def drive_daemon(work: Path, home: Path, ops_url: str, dagster_url: str, files, sshd, args) -> dict:
    """The deployment of the deployment test, on this bench's world: code servers, daemon,
    webserver; every sensor and schedule on; file; wait for the end condition."""
    from ccat_dagster_tests.deployment_support import (
        Deployment,
        GraphQLClient,
        code_server_ready,
        free_port,
        loaded_locations,
        run_tag_limits,
        start_all_instigators,
        wait_until,
        write_postgres_instance,
        write_workspace,
    )

    dagster_yaml = write_postgres_instance(home, dagster_url)
    if args.sensor_threads:
        # an experiment, not production's config: the sensor and schedule daemons evaluate
        # their instigators in a thread pool instead of one after another
        with open(dagster_yaml, "a") as fh:
            for daemon in ("sensors", "schedules"):
                fh.write(f"{daemon}:\n  use_threads: true\n  num_workers: {args.sensor_threads}\n")
    ports = [args.port + i for i in range(4)] if args.port else [free_port() for _ in range(4)]
    site_ports: dict[str, int] = dict(zip(SITES, ports, strict=False))
    workspace = write_workspace(work / "workspace.yaml", site_ports)
    env = {
        **os.environ,  # FAKE_ENV: moto's fake credentials
        "CCAT_OPS_DB_URL": ops_url,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_url,
        "CCAT_SSH_KEY_FILE": sshd.key_file,
        "CCAT_HOST": sshd.host,  # the telescope buffer's host is the ccat code server's own
        "CCAT_SENSOR_INTERVAL_SECONDS": str(args.sensor_interval),
        "CCAT_MONITOR_INTERVAL_SECONDS": "30",
        "CCAT_CLEANUP_CRON": args.cleanup_cron,
    }
    log_dir = work / "logs"
    log_dir.mkdir()
    deployment = Deployment(root=REPO, env=env, log_dir=log_dir)
    try:
        for site, port in site_ports.items():
            deployment.start_code_server(site, port)
        for site, port in site_ports.items():
            wait_until(
                lambda port=port: deployment.check_alive() or code_server_ready(port),
                timeout=180,
                what=f"the code server of {site} to serve",
                describe=deployment.logs,
            )
        deployment.start_daemon(workspace)
        deployment.start_webserver(workspace, ports[3])
        gql = GraphQLClient(ports[3])
        wait_until(
            lambda: deployment.check_alive() or gql.is_up(),
            timeout=180,
            what="dagster-webserver to answer",
            describe=deployment.logs,
        )
        locations = wait_until(
            lambda: deployment.check_alive() or loaded_locations(gql, SITES),
            timeout=180,
            what="the three code locations to load",
            describe=deployment.logs,
        )
        instigators = start_all_instigators(gql, locations)
        cpu_before = {p.name: group_cpu_seconds(p.popen.pid) for p in deployment.processes}
        bench_cpu_before = group_cpu_seconds(os.getpgrp())
        start, start_epoch = time.perf_counter(), time.time()
        file_everything(ops_url, files)
        filing_s = time.perf_counter() - start
        wait_until(
            lambda: deployment.check_alive() or archived_and_clean(ops_url),
            timeout=args.timeout,
            what="every package in both archives and the telescope clean",
            interval=0.5,
            describe=lambda: deployment.logs(1500),
        )
        e2e_s = time.perf_counter() - start
        cpu = {
            p.name: group_cpu_seconds(p.popen.pid) - cpu_before[p.name]
            for p in deployment.processes
        }
        # this process's group: moto's S3 server (threads here), the sshd, the polling
        cpu["bench (moto, sshd)"] = group_cpu_seconds(os.getpgrp()) - bench_cpu_before
        with open_instance(home) as instance:
            # runs the sensors launched meanwhile (the LTA sites' cleanups) finish first
            from dagster import DagsterRunStatus, RunsFilter

            busy = RunsFilter(
                statuses=[
                    DagsterRunStatus.QUEUED,
                    DagsterRunStatus.NOT_STARTED,
                    DagsterRunStatus.STARTING,
                    DagsterRunStatus.STARTED,
                ]
            )
            in_flight_at_end = instance.get_runs_count(busy)
            wait_until(
                lambda: instance.get_runs_count(busy) == 0,
                timeout=600,
                what="the runs in flight to finish",
            )
            rows = run_rows(instance)
    finally:
        killed = deployment.stop()
        if killed:
            print(f"had to kill: {', '.join(killed)}")
    return {
        "e2e_s": e2e_s,
        "filing_s": filing_s,
        "start_epoch": start_epoch,
        "rows": rows,
        "instigators": len(instigators),
        "run_limits": run_tag_limits(dagster_yaml),
        "in_flight_at_end": in_flight_at_end,
        "cpu": cpu,
        "sensor_threads": args.sensor_threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gb", type=float, default=10.0)
    parser.add_argument("--min-mb", type=float, default=1.0)
    parser.add_argument("--max-mb", type=float, default=200.0)
    parser.add_argument("--files-per-unit", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/ccat_bench_e2e")
    parser.add_argument(
        "--run-until-idle",
        action="store_true",
        help="drive the runs in process, one at a time, instead of by the daemon",
    )
    parser.add_argument("--sensor-interval", type=int, default=5, help="seconds (daemon)")
    parser.add_argument("--cleanup-cron", default="* * * * *", help="cleanup schedule (daemon)")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="first of 4 consecutive ports for the code servers and the webserver (0: free ones)",
    )
    parser.add_argument("--timeout", type=float, default=7200, help="seconds (daemon)")
    parser.add_argument(
        "--sensor-threads",
        type=int,
        default=0,
        help="evaluate sensors and schedules in this many threads (daemon; 0: one by one, as "
        "the instance config of production)",
    )
    parser.add_argument("--db-prefix", default="ccat_bench_e2e", help="scratch database names")
    args = parser.parse_args()
    os.environ.update(FAKE_ENV)  # moto's fake credentials, never a real profile

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lo, hi = args.min_mb * MB, args.max_mb * MB
    mean = (hi - lo) / math.log(hi / lo) if hi > lo else lo  # log-uniform sizes
    per_unit = args.files_per_unit * len(MODULES)
    units = max(1, round(args.gb * 1e9 / mean / per_unit))
    mode = "run_until_idle" if args.run_until_idle else "daemon"
    try:
        with ExitStack() as stack:
            ops_url = stack.enter_context(scratch_database(f"{args.db_prefix}_ops"))
            dagster_url = stack.enter_context(scratch_database(f"{args.db_prefix}_dagster"))
            sshd = stack.enter_context(running_sshd(work / "sshd"))
            endpoint = stack.enter_context(running_moto_server())
            s3_admin_client(endpoint).create_bucket(Bucket="archive")
            os.environ["CCAT_OPS_DB_URL"] = ops_url
            os.environ["DAGSTER_PG_URL"] = dagster_url
            os.environ["CCAT_SSH_KEY_FILE"] = sshd.key_file
            upgrade(ops_url)
            topology = real_topology(
                work / "sites",
                sshd=sshd,
                s3_endpoint=endpoint,
                bucket="archive",
                policy={
                    "data_transfer_package_max_bytes": 2_000_000_000,
                    "data_transfer_package_max_wait_minutes": 0,
                },
            )
            with session_scope(ops_url) as session:
                apply_topology(session, topology)
            t = time.perf_counter()
            files = simulate_instrument(
                work / "sites" / "ccat" / "src",
                n_obs_units=units,
                modules=MODULES,
                files_per_unit=args.files_per_unit,
                min_size=int(lo),
                max_size=int(hi),
                seed=15,
            )
            total = sum(f.path.stat().st_size for f in files)
            print(
                f"data: {len(files)} files, {total / 1e9:.2f} GB ({units} obs units x "
                f"{len(MODULES)} modules), written in {time.perf_counter() - t:.1f} s; "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            sample = max((f.path for f in files), key=lambda p: p.stat().st_size)
            bounds = measure_bounds([f.path for f in files], sample, sshd, endpoint, work)

            home = work / "dagster_home"
            if args.run_until_idle:
                result = drive_run_until_idle(home, ops_url, files)
            else:
                result = drive_daemon(work, home, ops_url, dagster_url, files, sshd, args)
            with session_scope(ops_url) as session:
                archived = session.execute(
                    sa.text(
                        "SELECT dl.name, s.short_name, count(*) FROM physical_copy pc "
                        "JOIN data_location dl ON dl.id = pc.data_location_id "
                        "JOIN site s ON s.id = dl.site_id "
                        "WHERE pc.type = 'raw_data_package' AND pc.status = 'PRESENT' "
                        "AND dl.location_type = 'LONG_TERM_ARCHIVE' GROUP BY 1, 2"
                    )
                ).all()
                packages = session.scalar(sa.text("SELECT count(*) FROM raw_data_package")) or 0
            result["telescope"] = telescope_statuses(ops_url)
            result["end_condition"] = archived_and_clean(ops_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(mode, result, total, archived, packages, bounds)


def report(mode: str, result: dict, total: int, archived, packages: int, bounds: dict) -> None:
    e2e_s, filing_s, start_epoch = result["e2e_s"], result["filing_s"], result["start_epoch"]
    rows = result["rows"]
    archive_ends = [r["ended"] for r in rows if r["stage"] == "long_term_archive_transfer"]
    archived_s = max(archive_ends, default=start_epoch) - start_epoch
    copies = ", ".join(f"{site}/{name}: {n}" for name, site, n in archived)
    print(f"\nmode: {mode}; packages: {packages}; archive copies: {copies}")
    print(
        f"telescope copies at the end: {result['telescope']} (end condition met: "
        f"{result['end_condition']})"
    )
    print(
        f"end to end: {e2e_s:.1f} s for {total / 1e9:.2f} GB = {total / e2e_s / MB:.0f} MB/s "
        f"(filing by hand {filing_s:.1f} s of it); every package in both archives after "
        f"{archived_s:.1f} s = {total / max(archived_s, 1e-9) / MB:.0f} MB/s "
        "(end of the last archive run)"
    )
    stages = stage_table(rows)
    header = ("stage (all sites)", "runs", "run wall s", "steps s", "overhead s/run")
    print("\n{:34s} {:>5s} {:>10s} {:>8s} {:>14s}".format(*header))
    run_wall = step_sum = 0.0
    for job, (n, wall, steps) in sorted(stages.items(), key=lambda kv: -kv[1][1]):
        run_wall += wall
        step_sum += steps
        print(f"{job:34s} {int(n):5d} {wall:10.1f} {steps:8.1f} {(wall - steps) / n:14.2f}")
    runs = len(rows)
    busy = union_seconds([(r["started"], r["ended"]) for r in rows])
    print(
        f"\nruns: {runs}; Dagster overhead (run wall - step time) {run_wall - step_sum:.1f} s = "
        f"{(run_wall - step_sum) / max(runs, 1):.2f} s per run, "
        f"{(run_wall - step_sum) / max(packages, 1):.2f} s per package; "
        f"sum of run walls {run_wall:.1f} s, time with a run in flight {busy:.1f} s "
        f"(mean {run_wall / max(busy, 1e-9):.2f} runs in flight then); "
        f"no run in flight (sensor ticks, schedules, queue, launch, filing): "
        f"{max(e2e_s - busy, 0):.1f} s"
    )
    if mode == "daemon":
        from ccat_dagster_tests.deployment_support import max_concurrent

        queued = [r["dequeued"] - r["created"] for r in rows if r["dequeued"]]
        launch = [r["started"] - (r["dequeued"] or r["created"]) for r in rows]
        worker = [r["started"] - r["starting"] for r in rows if r["starting"]]
        most = max_concurrent([(r["started"], r["ended"]) for r in rows])
        print(
            f"daemon: {result['instigators']} sensors and schedules on "
            f"({result['sensor_threads'] or 'no'} sensor threads); run limits "
            f"{result['run_limits']} (per unique value; max_concurrent_runs -1), pools default 5; "
            f"most runs in flight at once {most}; "
            f"runs still in flight at the end condition {result['in_flight_at_end']}"
        )
        if queued:
            print(f"  queued (created -> dequeued): {quantiles(queued)}")
        print(f"  created -> STARTED (queue, launch, run worker start): {quantiles(launch)}")
        print(f"  of which STARTING -> STARTED (run worker process): {quantiles(worker)}")
        print(f"  created -> STARTED over all runs: {sum(queued) + sum(launch):.1f} s")
    if "cpu" in result:
        cpu = result["cpu"]
        print(
            f"CPU seconds from filing to the end condition ({e2e_s:.0f} s x "
            f"{os.cpu_count()} cores = {e2e_s * (os.cpu_count() or 1):.0f} core-s): "
            + ", ".join(f"{name} {sec:.0f}" for name, sec in cpu.items())
            + f"; total {sum(cpu.values()):.0f}"
        )
    print("\nstage timeline, s after filing (first created, first start, last end):")
    print(f"  {'stage':34s} {'created':>8s} {'start':>8s} {'end':>8s}")
    spans: dict[str, list[float]] = {}
    for r in rows:
        span = spans.setdefault(r["stage"], [math.inf, math.inf, -math.inf])
        span[0] = min(span[0], r["created"] - start_epoch)
        span[1] = min(span[1], r["started"] - start_epoch)
        span[2] = max(span[2], r["ended"] - start_epoch)
    for job, (created, started, ended) in sorted(spans.items(), key=lambda kv: kv[1][1]):
        print(f"  {job:34s} {created:8.1f} {started:8.1f} {ended:8.1f}")
    print("\nbound components (same run):")
    for name, rate in bounds.items():
        print(f"  {name:12s} {rate:8.0f} MB/s")
    slowest = min(bounds, key=lambda k: bounds[k])
    bound_s = total / (bounds[slowest] * MB)
    print(
        f"bound: {slowest} at {bounds[slowest]:.0f} MB/s -> {bound_s:.1f} s for the data; "
        f"ratio end to end / bound = {e2e_s / bound_s:.1f} (target <= 2); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
