"""End-to-end throughput: N GB of instrument-like files through three sites, and the bound.

The e2e topology of the pipeline tests (``ccat_dagster_tests.pipeline_support.real_topology``):
SOURCE ``ccat/primecam_raw_data`` on local disk, the telescope buffer behind a real sshd
(test fixture), Cologne's buffer on disk and its archive on a moto S3 server, the US buffer and
archive on disk. Both databases (ops DB and Dagster's storage) are scratch PostgreSQL databases
of their own (created and dropped). Runs are driven by ``run_until_idle``
(``ccat run-until-idle``: every sensor ticked, each requested run executed in process), not
by the daemon: the daemon's launch and polling are not in the figures.

Prints: raw-data throughput end to end (filing to the last archive copy and the cleanup),
time per stage (Dagster run records by job: runs, wall time, step time) and Dagster overhead
per run (run wall minus its steps) and per package, and the ratio to the bound of the slowest
component measured in the same run (sha256 of the data, disk write with fsync, SSH pull
through the sshd, S3 put to moto).

    .venv/bin/python bench/bench_e2e.py [--gb 10] [--workdir /tmp/ccat_bench_e2e]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccat_dagster.instance import write_instance_config
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.runner import load_site_definitions, open_instance, run_until_idle
from ccat_dagster.simulate import simulate_instrument
from ccat_dagster.storage.s3 import S3Storage
from ccat_dagster_tests.fixtures.s3server import FAKE_ENV, running_moto_server, s3_admin_client
from ccat_dagster_tests.fixtures.sshd import running_sshd
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.checksum import checksum_file
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

ADMIN_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
MB = 1_000_000
MODULES = ("pcam_280ghz", "pcam_350ghz")


@contextmanager
def scratch_database(prefix: str):
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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


def stage_table(instance) -> tuple[dict[str, list[float]], int, float]:
    """Per job: [runs, run wall s, step s]; the number of runs; the end of the last archive
    run (epoch seconds)."""
    from dagster import RunsFilter

    by_job: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    records = instance.get_run_records(RunsFilter())
    archived_at = 0.0
    for record in records:
        run = record.dagster_run
        if record.start_time is None or record.end_time is None:
            continue
        steps = sum(
            (s.end_time or 0) - (s.start_time or 0)
            for s in instance.get_run_step_stats(run.run_id)
            if s.start_time and s.end_time
        )
        # the site prefix off: one row per stage over all sites
        job = run.job_name.split("_", 1)[1] if "_" in run.job_name else run.job_name
        row = by_job[job]
        row[0] += 1
        row[1] += record.end_time - record.start_time
        row[2] += steps
        if job == "long_term_archive_transfer":
            archived_at = max(archived_at, record.end_time)
    return dict(by_job), len(records), archived_at


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gb", type=float, default=10.0)
    parser.add_argument("--min-mb", type=float, default=1.0)
    parser.add_argument("--max-mb", type=float, default=200.0)
    parser.add_argument("--files-per-unit", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/ccat_bench_e2e")
    args = parser.parse_args()
    os.environ.update(FAKE_ENV)  # moto's fake credentials, never a real profile

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lo, hi = args.min_mb * MB, args.max_mb * MB
    mean = (hi - lo) / math.log(hi / lo) if hi > lo else lo  # log-uniform sizes
    per_unit = args.files_per_unit * len(MODULES)
    units = max(1, round(args.gb * 1e9 / mean / per_unit))
    try:
        with ExitStack() as stack:
            ops_url = stack.enter_context(scratch_database("ccat_bench_e2e_ops"))
            dagster_url = stack.enter_context(scratch_database("ccat_bench_e2e_dagster"))
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
            write_instance_config(home)
            start, start_epoch = time.perf_counter(), time.time()
            groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
            for f in files:
                groups[(f.obs_unit, f.instrument_module)].append(f.path)
            with session_scope(ops_url) as session:
                for (unit, module), paths in sorted(groups.items()):
                    register_raw_data_files(session, "ccat/primecam_raw_data", unit, module, paths)
            filing_s = time.perf_counter() - start
            with open_instance(home) as instance:
                report = run_until_idle(
                    load_site_definitions(None, ops_db_url=ops_url),
                    instance=instance,
                    max_passes=1000,
                    log=lambda m: None,
                )
                e2e_s = time.perf_counter() - start
                stages, runs, archived_at = stage_table(instance)
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
                packages = session.scalar(sa.text("SELECT count(*) FROM raw_data_package"))
            del report
    finally:
        shutil.rmtree(work, ignore_errors=True)

    copies = ", ".join(f"{site}/{name}: {n}" for name, site, n in archived)
    print(f"\npackages: {packages}; archive copies: {copies}")
    print(
        f"end to end: {e2e_s:.1f} s for {total / 1e9:.2f} GB = {total / e2e_s / MB:.0f} MB/s "
        f"(filing by hand {filing_s:.1f} s of it); every package in both archives after "
        f"{archived_at - start_epoch:.1f} s = {total / (archived_at - start_epoch) / MB:.0f} MB/s "
        "(the rest is the cleanup of the buffers)"
    )
    header = ("stage (all sites)", "runs", "run wall s", "steps s", "overhead s/run")
    print("\n{:34s} {:>5s} {:>10s} {:>8s} {:>14s}".format(*header))
    run_wall = step_sum = 0.0
    for job, (n, wall, steps) in sorted(stages.items(), key=lambda kv: -kv[1][1]):
        run_wall += wall
        step_sum += steps
        print(f"{job:34s} {int(n):5d} {wall:10.1f} {steps:8.1f} {(wall - steps) / n:14.2f}")
    print(
        f"\nruns: {runs}; Dagster overhead (run wall - step time) {run_wall - step_sum:.1f} s = "
        f"{(run_wall - step_sum) / max(runs, 1):.2f} s per run, "
        f"{(run_wall - step_sum) / max(packages, 1):.2f} s per package; outside runs (sensor "
        f"ticks, schedules, filing): {e2e_s - run_wall:.1f} s"
    )
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
