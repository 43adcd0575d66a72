"""Staging end to end on PostgreSQL: data archived through the real pipeline (cologne LTA on the
moto S3 server, us LTA on disk) is staged to cologne's PROCESSING location by the staging sensor
and jobs, shared between jobs, kept while any job is live, cleaned up by the cleanup schedule,
and restored from the archive after a mistake; plus the CLI and the Dagster create job."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, materialize
from sqlalchemy import func, select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.defs.cleanup import cleanup_run_config
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.partitions import partition_set_name
from ccat_dagster.defs.topology import load_topology_snapshot
from ccat_dagster.lifecycle.staging import requests as jobs
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    drive,
    file_simulated_data,
    real_topology,
    setup_pipeline,
)
from ccat_ops_db.models import (
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    StagingJob,
    Status,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow

S = PhysicalCopyStatus
STAGED_KEY = AssetKey(["cologne", "processing", "staged_raw_data_package"])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def archived_env(tmp_path, s3_endpoint, s3_bucket, monkeypatch, fresh_postgres_url):
    """Two obs units x two modules filed, packaged and archived in both LTAs."""
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_postgres_url)
    topology = real_topology(tmp_path, s3_endpoint=s3_endpoint, bucket=s3_bucket)
    processing = tmp_path / "cologne" / "processing"
    processing.mkdir(parents=True)
    topology["sites"][1]["locations"].append(
        {
            "name": "processing",
            "type": "PROCESSING",
            "storage": {"kind": "disk", "path": str(processing)},
        }
    )
    setup_pipeline(fresh_postgres_url, topology, tmp_path, n_obs_units=2, files_per_unit=2)
    with instance_for_test() as instance:
        report = drive(fresh_postgres_url, instance, include_schedules=False)
        assert not report.failed_runs
        yield fresh_postgres_url, instance, processing, tmp_path


def _packages(url) -> dict[str, list[str]]:
    """obs unit name -> its package names."""
    with session_scope(url) as session:
        out: dict[str, list[str]] = {}
        for p in session.scalars(select(RawDataPackage).order_by(RawDataPackage.name)):
            out.setdefault(p.executed_obs_unit.name, []).append(p.name)
        return out


def _files(url, package: str) -> list[tuple[str, str]]:
    with session_scope(url) as session:
        return [
            (f.relative_path, f.checksum)
            for f in session.scalars(
                select(RawDataFile).join(RawDataPackage).where(RawDataPackage.name == package)
            )
        ]


def _staged_intact(url, processing: Path, package: str) -> bool:
    for path, checksum in _files(url, package):
        target = processing / path
        if not target.exists() or hashlib.sha256(target.read_bytes()).hexdigest() != checksum:
            return False
    return True


def _none_on_disk(url, processing: Path, package: str) -> bool:
    return all(not (processing / path).exists() for path, _ in _files(url, package))


def _copy_states(url, package: str) -> tuple[S | None, set[S]]:
    """(package copy status, file copy statuses) at cologne/processing."""
    with session_scope(url) as session:
        pkg = session.scalar(select(RawDataPackage).where(RawDataPackage.name == package))
        loc = jobs.resolve_processing_location(session, "cologne/processing")
        pcopy = session.scalar(
            select(RawDataPackagePhysicalCopy.status).where(
                RawDataPackagePhysicalCopy.raw_data_package_id == pkg.id,
                RawDataPackagePhysicalCopy.data_location_id == loc.id,
            )
        )
        files = set(
            session.scalars(
                select(RawDataFilePhysicalCopy.status)
                .join(RawDataFile, RawDataFile.id == RawDataFilePhysicalCopy.raw_data_file_id)
                .where(
                    RawDataFile.raw_data_package_id == pkg.id,
                    RawDataFilePhysicalCopy.data_location_id == loc.id,
                )
            )
        )
        return pcopy, files


def _materializations(instance) -> list:
    result = instance.fetch_materializations(STAGED_KEY, limit=10_000, ascending=True)
    return [r.asset_materialization for r in result.records]


def _fetches(instance, package: str) -> list[str]:
    """The source LTA of every fetch of ``package`` (one materialization per fetch)."""
    return [
        m.metadata["source"].value for m in _materializations(instance) if m.partition == package
    ]


def _create(url, **kwargs) -> int:
    with session_scope(url) as session:
        return jobs.create_staging_job(session, location="cologne/processing", **kwargs).id


def _complete(url, job_id: int) -> None:
    with session_scope(url) as session:
        jobs.complete_staging_job(session, job_id)


def _job(url, job_id: int) -> StagingJob:
    with session_scope(url) as session:
        job = session.get(StagingJob, job_id)
        session.expunge(job)
        return job


def _forced_cleanup(url, instance) -> None:
    """Launch the site's cleanup job by hand, as an operator would."""
    defs = build_site_definitions("cologne", ops_db_url=url)
    view = load_topology_snapshot(url).site("cologne")
    result = defs.resolve_job_def("cologne_cleanup").execute_in_process(
        run_config=cleanup_run_config(view), instance=instance, raise_on_error=False
    )
    assert result.success


def test_stage_share_keep_cleanup_and_recover(archived_env, s3_client, s3_bucket):
    url, instance, processing, _ = archived_env
    units = _packages(url)
    unit_a, unit_b = sorted(units)
    p1, p2 = units[unit_a]
    q1 = units[unit_b][0]

    # by package and by obs unit: p1 is wanted by both jobs
    job_a = _create(url, packages=[p1])
    job_b = _create(url, obs_units=[unit_a])
    report = drive(url, instance)
    assert not report.failed_runs, report.failed_runs
    assert report.by_job.get("cologne_staging", 0) >= 1
    for name in (p1, p2):
        assert _staged_intact(url, processing, name)
        assert _copy_states(url, name) == (S.STAGED, {S.PRESENT})
        assert _fetches(instance, name) == ["cologne/lta"], "same-site S3 archive, fetched once"
    assert not any(processing.rglob("*.tar")), "no package archive at the PROCESSING location"
    assert _job(url, job_a).status == _job(url, job_b).status == Status.COMPLETED

    # a job for data that is already there shares it: no second fetch
    job_c = _create(url, packages=[p1])
    drive(url, instance)
    assert _job(url, job_c).status == Status.COMPLETED
    assert _fetches(instance, p1) == ["cologne/lta"]

    # forced cleanup cycles never touch files of live jobs
    _forced_cleanup(url, instance)
    _forced_cleanup(url, instance)
    _complete(url, job_a)
    _complete(url, job_c)
    drive(url, instance)  # the cleanup schedule runs
    assert _staged_intact(url, processing, p1), "job_b is still active"
    assert _copy_states(url, p1) == (S.STAGED, {S.PRESENT})

    # the last job completes: the files go, the package copy becomes DELETED
    _complete(url, job_b)
    report = drive(url, instance)
    assert report.by_job.get("cologne_cleanup", 0) >= 1
    for name in (p1, p2):
        assert _none_on_disk(url, processing, name)
        assert _copy_states(url, name) == (S.DELETED, {S.DELETED})

    # recovery from the LTA: a new job restores them (the same copy rows revived)
    job_d = _create(url, packages=[p1])
    drive(url, instance)
    assert _staged_intact(url, processing, p1)
    assert _copy_states(url, p1) == (S.STAGED, {S.PRESENT})
    assert _fetches(instance, p1) == ["cologne/lta", "cologne/lta"]

    # files deleted by hand while a job is active: the catalogue still says PRESENT; a new job
    # finds them missing on disk and restores them
    lost = processing / _files(url, p1)[0][0]
    lost.unlink()
    job_e = _create(url, packages=[p1])
    drive(url, instance)
    assert lost.exists()
    assert _staged_intact(url, processing, p1)
    assert len(_fetches(instance, p1)) == 3
    assert _job(url, job_d).active
    assert _job(url, job_e).status == Status.COMPLETED

    # staged, shared, cleaned up, restored: the invariant holds, read back from the storage
    verified = CliRunner().invoke(app, ["verify", "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["violations"] == []

    # the same-site S3 object is gone: staging falls back to the us disk archive
    with session_scope(url) as session:
        key = session.scalar(select(RawDataPackage.relative_path).where(RawDataPackage.name == q1))
    s3_client.delete_object(Bucket=s3_bucket, Key=f"raw/{key}")
    job_f = _create(url, packages=[q1])
    report = drive(url, instance, include_schedules=False)
    assert not report.failed_runs
    assert _fetches(instance, q1) == ["us/lta"]
    assert _staged_intact(url, processing, q1)
    assert _job(url, job_f).status == Status.COMPLETED
    # ...and `ccat verify` reports that archive copy, and nothing else
    verified = CliRunner().invoke(app, ["verify", "--json"])
    assert verified.exit_code == 1, verified.output
    violations = json.loads(verified.stdout)["violations"]
    assert violations
    assert all(
        v["object"] == f"RawDataPackage {q1}"
        and v["location"] == "cologne/lta"
        and v["kind"] in ("object_missing", "lta_copy_not_present")
        for v in violations
    ), violations


def test_bad_requests_are_clear_errors_and_create_no_job(archived_env, monkeypatch):
    url, instance, _, root = archived_env
    runner = CliRunner()
    cases = [
        (["--location", "cologne/processing", "--package", "nope"], "unknown raw data package"),
        (["--location", "cologne/processing", "--obs-unit", "nope"], "unknown executed obs unit"),
        (["--location", "cologne/lta", "--package", "x"], "not PROCESSING"),
        (["--location", "cologne/processing"], "either --package"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["staging", "create", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    # new observations: filed but not packaged yet, then packaged but not yet archived
    with session_scope(url) as session:
        file_simulated_data(session, root, n_obs_units=1, seed=7)
    fresh_unit = "obs_0007_0000"
    result = runner.invoke(
        app, ["staging", "create", "--location", "cologne/processing", "--obs-unit", fresh_unit]
    )
    assert result.exit_code == 1
    assert "no RawDataPackage yet" in result.output
    drive(url, instance, sites=["ccat"], include_schedules=False)
    result = runner.invoke(
        app, ["staging", "create", "--location", "cologne/processing", "--obs-unit", fresh_unit]
    )
    assert result.exit_code == 1
    assert "nothing archived yet" in result.output
    # the Dagster create job refuses the same way
    defs = build_site_definitions("cologne", ops_db_url=url)
    run = defs.resolve_job_def("cologne_create_staging_job").execute_in_process(
        run_config=_create_config("processing", packages=["nope"]),
        instance=instance,
        raise_on_error=False,
    )
    assert not run.success
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(StagingJob)) == 0


def _create_config(location: str, **config) -> dict:
    return {"ops": {"cologne_create_staging_job_op": {"config": {"location": location, **config}}}}


def test_cli_and_dagster_job_create_the_same_staging_job(archived_env):
    url, instance, _, _root = archived_env
    units = _packages(url)
    unit = sorted(units)[0]
    runner = CliRunner()

    result = runner.invoke(
        app,
        ["staging", "create", "-l", "cologne/processing", "-o", unit, "--retention-days", "3"],
    )
    assert result.exit_code == 0, result.output
    assert "staging job 1 created: 2 package(s)" in result.output

    defs = build_site_definitions("cologne", ops_db_url=url)
    run = defs.resolve_job_def("cologne_create_staging_job").execute_in_process(
        run_config=_create_config("processing", obs_units=[unit], retention_days=3),
        instance=instance,
    )
    assert run.success

    with session_scope(url) as session:
        cli_job, dagster_job = session.scalars(select(StagingJob).order_by(StagingJob.id)).all()
        for job in (cli_job, dagster_job):
            assert job.active
            assert job.status == Status.PENDING
            assert job.retention_period_minutes == 3 * 24 * 60
            assert sorted(p.name for p in job.raw_data_packages) == units[unit]
            assert job.destination_location.qualified_name == "cologne/processing"
    assert run.output_for_node("cologne_create_staging_job_op") == dagster_job.id

    listing = runner.invoke(app, ["staging", "list"])
    assert listing.exit_code == 0
    assert "PENDING" in listing.output
    assert len([line for line in listing.output.splitlines() if "cologne/processing" in line]) == 2

    # one partition of the staged asset, as from the UI: the same stage function. The asset's
    # partitions are the packages staged there, so the operator adds the key first (the
    # Materialize dialog's "Add partition"), as this does
    first, other_unit = units[unit][0], units[sorted(units)[1]][0]
    staged_asset = defs.resolve_assets_def(STAGED_KEY)
    instance.add_dynamic_partitions(partition_set_name(STAGED_KEY), [first, other_unit])
    one = materialize([staged_asset], partition_key=first, instance=instance)
    assert one.success
    assert _staged_intact(url, archived_env[2], first)
    assert _fetches(instance, first) == ["cologne/lta"]
    refused = materialize(
        [staged_asset],
        partition_key=other_unit,
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success, "no active staging job wants it: nothing is staged"
    assert _none_on_disk(url, archived_env[2], other_unit)

    drive(url, instance, sites=["cologne"], include_schedules=False)
    assert _fetches(instance, first) == ["cologne/lta"], "the sensor's run shares it"
    listing = runner.invoke(app, ["staging", "list", "--active"])
    assert listing.output.count("COMPLETED") == 2

    done = runner.invoke(app, ["staging", "complete", "1", "2"])
    assert done.exit_code == 0, done.output
    assert "staging job 1 completed" in done.output
    again = runner.invoke(app, ["staging", "complete", "1"])
    assert "already completed" in again.output
    missing = runner.invoke(app, ["staging", "complete", "99"])
    assert missing.exit_code == 1
    assert "no staging job 99" in missing.output
    assert "no staging jobs" in runner.invoke(app, ["staging", "list", "--active"]).output


def test_dagster_cli_runs_the_create_job_from_run_config(archived_env):
    # `dagster job launch ... --config-json` takes the same run config; it needs a run
    # coordinator that starts runs (daemon), so the test uses `dagster job execute` with it.
    url, _, _, root = archived_env
    package = sorted(_packages(url).values())[0][0]
    config = _create_config("processing", packages=[package], requested_by="dagster-cli")
    config_file = root / "create_staging_job.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "CCAT_OPS_DB_URL": url}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "ccat_dagster.sites.site",
            "-a",
            "cologne",
            "-j",
            "cologne_create_staging_job",
            "--config",
            str(config_file),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with session_scope(url) as session:
        job = session.scalars(select(StagingJob)).one()
        assert job.requested_by == "dagster-cli"
        assert [p.name for p in job.raw_data_packages] == [package]
