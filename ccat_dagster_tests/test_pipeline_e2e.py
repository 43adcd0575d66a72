"""End to end over real components: files filed at the telescope reach both long-term archives.

Ops DB on PostgreSQL; the telescope buffer is reached over a real sshd by the LTA sites; the
cologne LTA is the moto S3 server, the us LTA a disk. The sensors and jobs of all three code
locations are driven until idle against a persistent Dagster instance.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.common.progress import set_status
from ccat_dagster.lifecycle.ingest.raw_data_packages import (
    build_raw_data_package,
    create_raw_data_packages_for_location,
)
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    drive,
    real_topology,
    setup_pipeline,
    sha256,
    tar_members,
)
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Status,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow


@pytest.fixture
def real_env(tmp_path, sshd_server, s3_endpoint, s3_bucket, monkeypatch, fresh_postgres_url):
    monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd_server.key_file)
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_postgres_url)
    # one RawDataPackage per bundle, so round-robin has several bundles to spread
    topology = real_topology(
        tmp_path,
        sshd=sshd_server,
        s3_endpoint=s3_endpoint,
        bucket=s3_bucket,
        policy={"data_transfer_package_max_bytes": 1},
    )
    return fresh_postgres_url, topology, tmp_path


def _lta_bytes(s3_client, bucket: str, root: Path, package: RawDataPackage) -> dict[str, bytes]:
    s3 = s3_client.get_object(Bucket=bucket, Key=f"raw/{package.relative_path}")["Body"].read()
    disk = (root / "us" / "lta" / package.relative_path).read_bytes()
    return {"cologne/lta": s3, "us/lta": disk}


def test_filed_files_reach_both_ltas_with_matching_checksums(real_env, s3_client, s3_bucket):
    url, topology, root = real_env
    files = setup_pipeline(url, topology, root)
    with instance_for_test() as instance:
        report = drive(url, instance, include_schedules=False)
        assert not report.failed_runs

        with session_scope(url) as session:
            assert packages_missing_from_ltas(session) == []
            packages = session.scalars(select(RawDataPackage)).all()
            assert packages
            assert all(p.state == PackageState.ARCHIVED for p in packages)
            by_path = {f.relative_path: f for f in session.scalars(select(RawDataFile))}
            assert len(by_path) == len(files)
            seen = set()
            for package in packages:
                for lta, data in _lta_bytes(s3_client, s3_bucket, root, package).items():
                    assert sha256(data) == package.checksum, f"{package.name} in {lta}"
                    members = tar_members(data)
                    for name, content in members.items():
                        if name in by_path:
                            original = (root / "ccat" / "src" / name).read_bytes()
                            assert content == original
                            assert sha256(content) == by_path[name].checksum
                            seen.add(name)
            assert seen == set(by_path), "every filed file is inside an archived package"

            # round-robin spread of primary transfers over the two LTA sites
            primaries = session.scalars(
                select(DataTransfer).where(DataTransfer.route_kind == "primary")
            ).all()
            spread = Counter(t.destination_location.site.short_name for t in primaries)
            assert set(spread) == {"cologne", "us"}
            assert abs(spread["cologne"] - spread["us"]) <= 1
            # secondary routes: every bundle reached both LTA sites
            for dtp in session.scalars(select(DataTransferPackage)):
                sites = {t.destination_location.site.short_name for t in dtp.data_transfers}
                assert sites == {"cologne", "us"}
                assert all(
                    t.status == Status.COMPLETED and t.unpack_status == Status.COMPLETED
                    for t in dtp.data_transfers
                )
            # audit trail: each package went PENDING -> IN_PROGRESS -> COMPLETED, then ARCHIVED
            for package in packages:
                trail = [
                    a.new_status
                    for a in session.scalars(
                        select(AuditLog)
                        .where(
                            AuditLog.entity_type == "raw_data_package",
                            AuditLog.entity_id == package.id,
                        )
                        .order_by(AuditLog.id)
                    )
                ]
                assert trail[:3] == ["PENDING", "IN_PROGRESS", "COMPLETED"]
                assert "TRANSFERRING" in trail
                assert trail[-1] == "ARCHIVED"
            lta_copies = session.scalars(
                select(RawDataPackagePhysicalCopy).where(
                    RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
                    RawDataPackagePhysicalCopy.verified_at.is_not(None),
                )
            ).all()
            assert len(lta_copies) >= 2 * len(packages)

        # Dagster: per-partition materializations and passed lta_presence checks
        for site in ("cologne", "us"):
            key = AssetKey([site, "lta", "raw_data_package"])
            assert instance.get_materialized_partitions(key) == {p.name for p in packages}
        checks = instance.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        )
        evaluations = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in checks
            if r.event_log_entry.dagster_event.event_specific_data.check_name == "lta_presence"
        ]
        assert len(evaluations) == 2 * len(packages)
        assert all(e.passed for e in evaluations)

    # the invariant, read back from the storage: S3, the disk archive, the SSH-reached buffer
    result = CliRunner().invoke(app, ["verify", "--json"])
    assert result.exit_code == 0, result.output
    verified = json.loads(result.stdout)
    assert verified["violations"] == []
    assert verified["counters"]["files_proven"] == len(files)
    assert verified["counters"]["lta_copies_expected"] == 2 * len(packages)


def _flip_byte(path: Path, offset: int = 2048) -> bytes:
    data = bytearray(path.read_bytes())
    original = data[offset : offset + 1]
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(original)


def test_bundle_rotted_at_origin_is_rebuilt_over_ssh_and_archived(real_env):
    """The archive sites pull over SSH; a pull that mismatches re-reads the origin over SSH,
    finds the bundle rotted there, and the telescope site rebuilds it (bytes spoiled in transit
    with a good origin: test_bundle_at_origin.py)."""
    url, topology, root = real_env
    setup_pipeline(url, topology, root, n_obs_units=1, files_per_unit=2)
    with instance_for_test() as instance:
        # the telescope site packages and bundles; nothing has moved yet
        drive(url, instance, sites=["ccat"], include_schedules=False)
        with session_scope(url) as session:
            dtp = session.scalars(
                select(DataTransferPackage).order_by(DataTransferPackage.id)
            ).first()
            bundle = root / "ccat" / "buffer" / dtp.relative_path
            dtp_id, checksum = dtp.id, dtp.checksum
        _flip_byte(bundle)
        drive(url, instance, sites=["cologne", "us"], max_passes=1, include_schedules=False)
        with session_scope(url) as session:
            first = session.scalar(
                select(DataTransfer).where(DataTransfer.data_transfer_package_id == dtp_id)
            )
            assert first.retry_count == 0, "the origin's fault burns no retry of the transfer"
            assert first.status == Status.PENDING
            assert "checksum mismatch" in first.failure_reason
            rebuilding = session.get(DataTransferPackage, dtp_id)
            assert rebuilding.status == Status.PENDING
            assert rebuilding.retry_count == 1
        assert not bundle.exists(), "the rotted origin copy was removed"

        report = drive(url, instance, include_schedules=False)
        assert not report.failed_runs
        with session_scope(url) as session:
            assert packages_missing_from_ltas(session) == []
            retried = session.get(DataTransfer, first.id)
            assert retried.status == Status.COMPLETED
            assert retried.retry_count == 0
            assert session.get(DataTransferPackage, dtp_id).checksum == checksum


def test_permanently_corrupt_source_fails_and_archives_nothing_of_it(real_env):
    url, topology, root = real_env
    files = setup_pipeline(url, topology, root, n_obs_units=2, files_per_unit=2)
    victim = files[0]
    _flip_byte(victim.path, offset=min(10, victim.size - 1))
    with instance_for_test() as instance:
        report = drive(url, instance, include_schedules=False)
    assert report.failed_runs, "a permanent failure is a failed run an operator sees"
    with session_scope(url) as session:
        rel = os.path.relpath(victim.path, root / "ccat" / "src")
        bad = session.scalar(select(RawDataFile).where(RawDataFile.relative_path == rel))
        package = bad.raw_data_package
        assert package.status == Status.FAILED
        assert package.state == PackageState.FAILED
        assert package.retry_count == 4  # first attempt + max_retries (3)
        assert "Check the source copy" in package.failure_reason
        assert (
            session.scalars(
                select(LongTermArchiveTransfer).where(
                    LongTermArchiveTransfer.raw_data_package_id == package.id
                )
            ).all()
            == []
        )
        assert (
            session.scalars(
                select(RawDataPackagePhysicalCopy).where(
                    RawDataPackagePhysicalCopy.raw_data_package_id == package.id
                )
            ).all()
            == []
        )
        others = session.scalars(select(RawDataPackage).where(RawDataPackage.id != package.id))
        assert all(p.state == PackageState.ARCHIVED for p in others)
        failed_name = package.name

    # the operator restores the file from the instrument's own copy and retries
    _flip_byte(victim.path, offset=min(10, victim.size - 1))
    result = CliRunner().invoke(app, ["retry", "--package", failed_name])
    assert result.exit_code == 0, result.output
    assert "packages reset: 1" in result.output
    with instance_for_test() as instance:
        report = drive(url, instance, include_schedules=False)
    assert not report.failed_runs
    with session_scope(url) as session:
        assert packages_missing_from_ltas(session) == []
        retried = session.scalar(select(RawDataPackage).where(RawDataPackage.name == failed_name))
        assert retried.state == PackageState.ARCHIVED


def _packaged_at_the_telescope(session) -> list[RawDataPackage]:
    """Packaging by hand, without Dagster: every filed file into a package tar in the buffer."""
    source = session.scalar(select(DataLocation).where(DataLocation.name == "primecam_raw_data"))
    packages = create_raw_data_packages_for_location(session, source)
    with StorageRegistry(local_site="ccat") as storages:
        for p in packages:
            assert build_raw_data_package(session, p, storage_for=storages.get).ok
    return packages


@pytest.mark.parametrize("spoiled", ["rotted", "gone"])
def test_package_rotted_in_source_buffer_is_repackaged_from_source(ops_db_url, tmp_path, spoiled):
    """Bundling verifies each package tar; a corrupt one (or one removed by hand before the
    audit saw it) is re-made from the SOURCE files."""
    setup_pipeline(
        ops_db_url,
        real_topology(tmp_path),
        tmp_path,
        n_obs_units=1,
        files_per_unit=2,
        max_size=50_000,
    )
    with session_scope(ops_db_url) as session:
        packages = _packaged_at_the_telescope(session)
        victim = packages[0].name
        tar = tmp_path / "ccat" / "buffer" / packages[0].relative_path
    if spoiled == "rotted":
        _flip_byte(tar, offset=600)
    else:
        tar.unlink()
    with instance_for_test() as instance:
        report = drive(ops_db_url, instance, include_schedules=False)
    assert report.failed_runs  # the bundle with the rotten tar failed once, visibly
    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        package = session.scalar(select(RawDataPackage).where(RawDataPackage.name == victim))
        assert package.state == PackageState.ARCHIVED
        assert package.retry_count == 1
        reasons = [
            a.reason
            for a in session.scalars(
                select(AuditLog).where(AuditLog.entity_type == "physical_copy")
            )
        ]
        assert any("re-package from SOURCE" in r for r in reasons)


def test_a_package_tar_lost_from_the_source_buffer_before_bundling_is_repackaged(
    ops_db_url, tmp_path
):
    """The consistency audit confirmed the only tar of a package not yet bundled as LOST (an
    operator removed it by hand): the SOURCE files are still there, so it is packaged again and
    archived with the rest, with no one running a command."""
    setup_pipeline(ops_db_url, real_topology(tmp_path), tmp_path, n_obs_units=2, files_per_unit=2)
    with session_scope(ops_db_url) as session:
        victim = _packaged_at_the_telescope(session)[0]
        (tmp_path / "ccat" / "buffer" / victim.relative_path).unlink()
        copy = session.scalars(
            select(RawDataPackagePhysicalCopy).where(
                RawDataPackagePhysicalCopy.raw_data_package_id == victim.id,
                RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            )
        ).one()
        set_status(  # as lifecycle/audit/lost.act_on_lost marks a confirmed lost copy
            session,
            copy,
            PhysicalCopyStatus.LOST,
            entity_type="physical_copy",
            reason="consistency audit: object missing (seen by two scans)",
            data_location_id=copy.data_location_id,
        )
        session.commit()
        victim_name = victim.name
    with instance_for_test() as instance:
        report = drive(ops_db_url, instance, include_schedules=False)
    assert report.idle, report
    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        package = session.scalar(select(RawDataPackage).where(RawDataPackage.name == victim_name))
        assert package.state == PackageState.ARCHIVED
        trail = [
            a.reason
            for a in session.scalars(
                select(AuditLog).where(
                    AuditLog.entity_type == "raw_data_package", AuditLog.entity_id == package.id
                )
            )
        ]
        assert any("re-packaging from the SOURCE files" in r for r in trail), trail


@pytest.mark.parametrize("us_archive", ["up", "away"])
def test_a_package_tar_lost_from_an_archive_buffer_before_it_was_archived_there_is_archived(
    ops_db_url, tmp_path, us_archive
):
    """Cologne's archive was away (and us's too, or us archived everything and the telescope
    was cleaned) when a package tar vanished from cologne's buffer (removed by hand) before
    cologne had archived it. The archive stage finds it gone, marks it LOST without counting it
    against the package, and cologne archives the package from the best copy left: the us
    archive, or the telescope's buffer. Nothing is lost and no one runs a command."""
    topology = real_topology(tmp_path, policy={"retention_period_minutes": 0})
    setup_pipeline(ops_db_url, topology, tmp_path, n_obs_units=2, files_per_unit=2)
    ltas = {site: tmp_path / site / "lta" for site in ("cologne", "us")}
    away = {site: lta.with_name("lta.away") for site, lta in ltas.items()}
    for site in ("cologne", "us") if us_archive == "away" else ("cologne",):
        ltas[site].rename(away[site])
    with instance_for_test() as instance:
        drive(ops_db_url, instance)
    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session), "cologne's archive was away"
        [victim, *_] = session.scalars(
            select(RawDataPackage)
            .join(RawDataPackagePhysicalCopy)
            .join(DataLocation)
            .where(
                DataLocation.name == "buffer",
                DataLocation.site.has(short_name="cologne"),
                RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            )
            .order_by(RawDataPackage.id)
        )
        victim_name = victim.name
        (tmp_path / "cologne" / "buffer" / victim.relative_path).unlink()
    away["cologne"].rename(ltas["cologne"])
    with instance_for_test() as instance:
        drive(ops_db_url, instance)
        with session_scope(ops_db_url) as session:
            package = session.scalar(
                select(RawDataPackage).where(RawDataPackage.name == victim_name)
            )
            data = (ltas["cologne"] / package.relative_path).read_bytes()
            assert sha256(data) == package.checksum, "cologne archived it from another copy"
            lost = session.scalars(
                select(AuditLog).where(AuditLog.new_status == PhysicalCopyStatus.LOST.value)
            ).all()
            assert [a.reason for a in lost if "gone from cologne/buffer" in a.reason], lost
            transfers = session.scalars(
                select(LongTermArchiveTransfer).where(
                    LongTermArchiveTransfer.raw_data_package_id == package.id
                )
            ).all()
            assert all(t.status != Status.FAILED for t in transfers)
            assert all((t.retry_count or 0) == 0 for t in transfers), "not the package's fault"
        if us_archive == "away":
            away["us"].rename(ltas["us"])
            drive(ops_db_url, instance)
    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        assert all(
            p.state == PackageState.ARCHIVED for p in session.scalars(select(RawDataPackage))
        )
    verify = CliRunner().invoke(app, ["verify"], env={"CCAT_OPS_DB_URL": ops_db_url})
    assert verify.exit_code == 0, verify.output
