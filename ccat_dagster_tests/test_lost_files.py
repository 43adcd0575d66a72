"""Declaring a SOURCE file lost (bug 9 of issue 10) on SQLite and PostgreSQL.

A file that disappears before packaging fails its package after the retries; before ``ccat
files declare-lost`` nothing could get the rest of that obs unit and module archived. Driven by
the real sensors and jobs (``run_until_idle``) over the local-disk topology of the pipeline
tests; the command through typer's CliRunner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.packaging.manifest import MANIFEST_NAME
from ccat_dagster.simulate import SimulatedFile, simulate_instrument
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import drive, real_topology, tar_members
from ccat_ops_db.models import (
    AuditLog,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    Status,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

runner = CliRunner()
REASON = "disk sector died under obs_0009; no other copy exists"


def _file(url: str, root: Path, *, n_files: int = 4, unit: str = "obs") -> list[SimulatedFile]:
    files = simulate_instrument(
        root / "ccat" / "src",
        n_obs_units=1,
        modules=("pcam_280ghz",),
        files_per_unit=n_files,
        min_size=1_000,
        max_size=20_000,
        seed=9,
        obs_unit_prefix=unit,
    )
    with session_scope(url) as session:
        register_raw_data_files(
            session,
            "ccat/primecam_raw_data",
            files[0].obs_unit,
            "pcam_280ghz",
            [f.path for f in files],
        )
    return files


def _relative(root: Path, f: SimulatedFile) -> str:
    return str(f.path.relative_to(root / "ccat" / "src"))


@pytest.fixture
def pipeline(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    return ops_db_url, tmp_path


def _package(url: str) -> RawDataPackage:
    with session_scope(url) as session:
        return session.scalars(select(RawDataPackage)).one()


def _declare(*paths: str, reason: str | None = REASON):
    args = ["files", "declare-lost", "--location", "ccat/primecam_raw_data", *paths]
    return runner.invoke(app, [*args, "--reason", reason] if reason is not None else args)


def test_a_file_lost_before_packaging_is_declared_lost_and_the_rest_is_archived(pipeline):
    url, root = pipeline
    files = _file(url, root)
    lost = files[1]
    lost.path.unlink()  # gone from the SOURCE before it was packaged

    with instance_for_test() as instance:
        report = drive(url, instance, include_schedules=False)
        assert report.failed_runs, "packaging fails on the missing file"
        package = _package(url)
        assert package.status == Status.FAILED
        assert package.state == PackageState.FAILED

        result = _declare(_relative(root, lost))
        assert result.exit_code == 0, result.output
        assert package.name in result.stdout
        assert "PENDING" in result.stdout

        report = drive(url, instance, include_schedules=False)
        assert not report.failed_runs, report.failed_runs

    with session_scope(url) as session:
        package = session.get(RawDataPackage, package.id)
        assert package.state == PackageState.ARCHIVED
        assert package.status == Status.COMPLETED
        assert package.file_count == len(files) - 1
        assert package.retry_count == 0
        rdf = session.scalar(select(RawDataFile).where(RawDataFile.id == _file_id(session, lost)))
        assert rdf.lost_at is not None
        assert rdf.lost_reason == REASON
        source_copy = session.scalar(
            select(RawDataFilePhysicalCopy).where(
                RawDataFilePhysicalCopy.raw_data_file_id == rdf.id
            )
        )
        assert source_copy.status == PhysicalCopyStatus.LOST
        reasons = [
            a.reason
            for a in session.scalars(
                select(AuditLog).where(
                    AuditLog.new_status == "LOST",
                    AuditLog.entity_type.in_(["raw_data_file", "physical_copy"]),
                )
            )
        ]
        assert len(reasons) == 2
        assert all(REASON in r for r in reasons)
        key = package.relative_path
    for lta in ("cologne", "us"):
        members = tar_members((root / lta / "lta" / key).read_bytes())
        archived = set(members) - {MANIFEST_NAME}
        assert archived == {_relative(root, f) for f in files if f is not lost}

    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    lines = [line for line in status.stdout.splitlines() if package.name in line]
    assert any(f"1 of {len(files)}" in line and REASON in line for line in lines), status.stdout


def _file_id(session, f: SimulatedFile) -> int:
    return session.scalar(
        select(RawDataFile.id).where(RawDataFile.relative_path.endswith(f.path.name))
    )


def test_a_package_whose_every_file_is_lost_is_closed_with_nothing_to_archive(pipeline):
    url, root = pipeline
    files = _file(url, root, n_files=2)
    for f in files:
        f.path.unlink()
    with instance_for_test() as instance:
        drive(url, instance, include_schedules=False)
        result = _declare(*(_relative(root, f) for f in files))
        assert result.exit_code == 0, result.output
        assert "nothing to archive" in result.stdout
        report = drive(url, instance, include_schedules=False)
        assert not report.failed_runs, "no empty tar is written"
        assert report.runs == 0, "no empty tar is written"
    package = _package(url)
    assert package.status == Status.FAILED
    assert package.state == PackageState.FAILED
    assert package.failure_reason.startswith("nothing to archive")
    assert package.file_count == 0
    assert not (root / "ccat" / "buffer" / package.relative_path).exists()
    status = runner.invoke(app, ["status"]).stdout
    assert any(
        package.name in line and "nothing to archive" in line for line in status.splitlines()
    )
    retry = runner.invoke(app, ["retry"])  # a closed package is not offered for a retry
    assert retry.exit_code == 1
    assert "no FAILED raw data package" in retry.stderr


def test_declare_lost_refuses_files_that_are_not_lost_and_changes_nothing(pipeline):
    url, root = pipeline
    archived = _file(url, root, n_files=2, unit="kept")
    with instance_for_test() as instance:
        assert not drive(url, instance, include_schedules=False).failed_runs
    waiting = _file(url, root, n_files=2, unit="waiting")

    on_disk = _declare(_relative(root, waiting[0]))
    assert on_disk.exit_code == 1
    assert "still exists" in on_disk.stderr
    assert _relative(root, waiting[0]) in on_disk.stderr

    archived[0].path.unlink()  # gone from the SOURCE, but its bytes are in the archives
    safe = _declare(str(archived[0].path))  # an absolute path under the root works too
    assert safe.exit_code == 1
    assert "not lost" in safe.stderr
    assert "lta" in safe.stderr

    unknown = _declare("no/such/file.dat")
    assert unknown.exit_code == 1
    assert "not registered" in unknown.stderr

    blank = _declare(_relative(root, waiting[1]), reason="  ")
    assert blank.exit_code == 1
    assert "reason" in blank.stderr

    missing_reason = _declare(_relative(root, waiting[1]), reason=None)
    assert missing_reason.exit_code == 2
    assert "--reason" in missing_reason.output

    for result in (on_disk, safe, unknown, blank):
        assert "Traceback" not in result.output
    with session_scope(url) as session:
        assert session.scalar(select(RawDataFile).where(RawDataFile.lost_at.is_not(None))) is None
        assert not session.scalars(
            select(RawDataFilePhysicalCopy).where(
                RawDataFilePhysicalCopy.status == PhysicalCopyStatus.LOST
            )
        ).all()
