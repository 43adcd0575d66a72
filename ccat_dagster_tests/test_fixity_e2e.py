"""Fixity at rest and the restore drill, end to end on real components: the three-site pipeline
(cologne's archive on the moto S3 server, us's on disk, a PROCESSING location at cologne) on
SQLite and PostgreSQL, driven through the real Dagster sensors, schedules and jobs.

- A byte flipped at rest in an archive object (on disk and in S3) is found by the scheduled
  re-verification: the copy becomes BAD (never deleted), the package is re-archived from the
  other archive's verified copy and checked again (PRESENT, ``verified_at`` set), and a
  ``fixity_mismatch`` incident is recorded.
- The restore drill stages a sample to the PROCESSING location, verifies it file by file,
  records the outcome as the ``restore_drill`` asset's metadata, and its files go with the next
  cleanup; a drill over a corrupted archive object fails, says which, and is an alert.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select, update

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.lifecycle.alerts.evaluation import evaluate_site
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.fixtures.s3server import s3_admin_client
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import (
    AlertIncident,
    AuditLog,
    DataLocation,
    PackageState,
    PhysicalCopyStatus,
    PolicySetting,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    StagingJob,
    utcnow,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow

S = PhysicalCopyStatus
DRILL_KEY = AssetKey(["cologne", "restore_drill"])


@pytest.fixture
def archived(ops_db_url, tmp_path, s3_endpoint, s3_bucket):
    """Two obs units x two modules archived in both LTAs; cologne has a PROCESSING location."""
    topology = real_topology(
        tmp_path,
        s3_endpoint=s3_endpoint,
        bucket=s3_bucket,
        policy={"data_transfer_package_max_bytes": 1},
    )
    processing = tmp_path / "cologne" / "processing"
    processing.mkdir(parents=True)
    topology["sites"][1]["locations"].append(
        {
            "name": "processing",
            "type": "PROCESSING",
            "storage": {"kind": "disk", "path": str(processing)},
        }
    )
    setup_pipeline(ops_db_url, topology, tmp_path, n_obs_units=2, files_per_unit=2, max_size=60_000)
    with instance_for_test() as instance:
        report = drive(ops_db_url, instance)
        assert not report.failed_runs
        with session_scope(ops_db_url) as session:
            packages = session.scalars(select(RawDataPackage)).all()
            assert len(packages) == 4
            assert all(p.state == PackageState.ARCHIVED for p in packages)
        yield ops_db_url, instance, tmp_path, processing, (s3_endpoint, s3_bucket)


def _lta_copies(session, site: str) -> dict[str, RawDataPackagePhysicalCopy]:
    rows = session.execute(
        select(RawDataPackage.name, RawDataPackagePhysicalCopy)
        .join(RawDataPackage, RawDataPackage.id == RawDataPackagePhysicalCopy.raw_data_package_id)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(Site.short_name == site, DataLocation.name == "lta")
    ).all()
    return {name: copy for name, copy in rows}


def _flip_on_disk(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_in_s3(s3, key: str) -> None:
    """Other bytes under the same key, the metadata written with the object kept: rot."""
    endpoint, bucket = s3
    client = s3_admin_client(endpoint)
    head = client.head_object(Bucket=bucket, Key=f"raw/{key}")
    data = bytearray(client.get_object(Bucket=bucket, Key=f"raw/{key}")["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=f"raw/{key}", Body=bytes(data), Metadata=head["Metadata"])


def _s3_bytes(s3, key: str) -> bytes:
    endpoint, bucket = s3
    return s3_admin_client(endpoint).get_object(Bucket=bucket, Key=f"raw/{key}")["Body"].read()


def _all_due(url: str) -> None:
    """Every archive copy's last check is older than the re-verification interval."""
    with session_scope(url) as session:
        session.execute(
            update(RawDataPackagePhysicalCopy)
            .where(RawDataPackagePhysicalCopy.verified_at.is_not(None))
            .values(verified_at=utcnow() - timedelta(days=31))
            .execution_options(synchronize_session=False)
        )


def _incidents(url: str, kind: str) -> list[AlertIncident]:
    with session_scope(url) as session:
        return list(session.scalars(select(AlertIncident).where(AlertIncident.kind == kind)))


def test_a_byte_flipped_at_rest_is_found_repaired_reverified_and_alerted(archived):
    url, instance, root, _processing, s3 = archived
    with session_scope(url) as session:
        packages = sorted(session.scalars(select(RawDataPackage)), key=lambda p: p.name)
        on_disk, in_s3 = packages[0], packages[1]
        keys = {p.name: p.relative_path for p in packages}
        checksums = {p.name: p.checksum for p in packages}
        bad_ids = {
            _lta_copies(session, "us")[on_disk.name].id,
            _lta_copies(session, "cologne")[in_s3.name].id,
        }
    _flip_on_disk(root / "us" / "lta" / keys[on_disk.name])
    _flip_in_s3(s3, keys[in_s3.name])
    _all_due(url)
    started = utcnow()

    report = drive(url, instance, max_passes=60)
    assert report.passes < 60

    with session_scope(url) as session:
        # found by the scrub: PRESENT -> BAD, with the evidence of a computed checksum
        marked = session.scalars(
            select(AuditLog).where(
                AuditLog.entity_type == "physical_copy",
                AuditLog.new_status == S.BAD.value,
                AuditLog.created_at >= started,
            )
        ).all()
        assert {a.entity_id for a in marked} == bad_ids
        assert all("checksum mismatch" in a.reason for a in marked)
        assert all(a.evidence["checksum_source"] == "computed" for a in marked)
        # never deleted: no archive copy ever went through a deletion status
        deleted = session.scalars(
            select(AuditLog).where(
                AuditLog.entity_type == "physical_copy",
                AuditLog.entity_id.in_(bad_ids),
                AuditLog.new_status.in_(
                    [S.DELETION_SCHEDULED.value, S.DELETION_IN_PROGRESS.value, S.DELETED.value]
                ),
            )
        ).all()
        assert deleted == []
        # repaired and re-verified: BAD -> PRESENT, verified again after the marking
        repaired = session.scalars(
            select(AuditLog).where(
                AuditLog.entity_type == "physical_copy",
                AuditLog.entity_id.in_(bad_ids),
                AuditLog.old_status == S.BAD.value,
                AuditLog.new_status == S.PRESENT.value,
            )
        ).all()
        assert {a.entity_id for a in repaired} == bad_ids
        for site in ("us", "cologne"):
            for copy in _lta_copies(session, site).values():
                assert copy.status == S.PRESENT
                assert copy.verified_at is not None
                assert copy.verified_at.replace(tzinfo=None) >= started.replace(tzinfo=None)
    # the bytes at rest are the recorded ones again
    disk = (root / "us" / "lta" / keys[on_disk.name]).read_bytes()
    assert hashlib.sha256(disk).hexdigest() == checksums[on_disk.name]
    assert hashlib.sha256(_s3_bytes(s3, keys[in_s3.name])).hexdigest() == checksums[in_s3.name]

    # the UI: failed lta_presence evaluations of both partitions, then passed ones
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    failed = {(tuple(e.asset_key.path), e.partition) for e in evaluations if not e.passed}
    assert failed == {
        (("us", "lta", "raw_data_package"), on_disk.name),
        (("cologne", "lta", "raw_data_package"), in_s3.name),
    }

    # the alert: a fixity mismatch incident per archive, though the copies are repaired already
    incidents = {i.location for i in _incidents(url, "fixity_mismatch")}
    assert incidents == {"us/lta", "cologne/lta"}


def _drill_materializations(instance) -> list:
    result = instance.fetch_materializations(DRILL_KEY, limit=100, ascending=True)
    return [r.asset_materialization for r in result.records]


def _run_drill(url: str, instance):
    defs = build_site_definitions("cologne", ops_db_url=url)
    result = defs.resolve_job_def("cologne_restore_drill").execute_in_process(instance=instance)
    assert result.success
    return _drill_materializations(instance)[-1]


def _drill_check(instance) -> list[bool]:
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    return [
        e.passed
        for r in records
        if (e := r.event_log_entry.dagster_event.event_specific_data).asset_key == DRILL_KEY
    ]


def test_the_restore_drill_restores_verifies_records_and_cleans_up(archived):
    url, instance, _root, processing, _s3 = archived
    # the schedule: no drill before the archive is restore_drill_interval_minutes old
    drive(url, instance)
    assert _drill_materializations(instance) == []
    with session_scope(url) as session:
        session.execute(
            update(RawDataPackagePhysicalCopy)
            .values(created_at=utcnow() - timedelta(days=8))
            .execution_options(synchronize_session=False)
        )
    drive(url, instance)  # the schedule finds a drill due and runs it; the cleanup follows

    [drill] = _drill_materializations(instance)
    meta = drill.metadata
    assert meta["outcome"].value == "PASSED"
    assert meta["packages"].value == 3  # restore_drill_sample_size
    assert meta["packages_failed"].value == 0
    assert meta["files_verified"].value == 3 * 2
    assert meta["time_to_restore_seconds"].value > 0
    assert meta["archives"].value == "cologne/lta"
    assert _drill_check(instance) == [True]
    with session_scope(url) as session:
        [row] = session.scalars(select(AuditLog).where(AuditLog.entity_type == "restore_drill"))
        assert row.new_status == "PASSED"
        assert len(row.evidence["packages"]) == 3
        [job] = session.scalars(select(StagingJob))
        assert job.requested_by == "restore-drill"
        assert not job.active
        # the drill's files went with the cleanup that followed, by the processing rule
        staged = session.scalars(
            select(RawDataPackagePhysicalCopy)
            .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
            .where(DataLocation.name == "processing")
        ).all()
        assert len(staged) == 3
        assert {c.status for c in staged} == {S.DELETED}
        files = session.scalars(
            select(RawDataFilePhysicalCopy)
            .join(DataLocation, DataLocation.id == RawDataFilePhysicalCopy.data_location_id)
            .where(DataLocation.name == "processing")
        ).all()
        assert {c.status for c in files} == {S.DELETED}
    assert [p for p in processing.rglob("*") if p.is_file()] == []
    # not due again until the interval has passed
    drive(url, instance)
    assert len(_drill_materializations(instance)) == 1
    assert _incidents(url, "restore_drill_failed") == []


def test_a_drill_over_a_corrupted_archive_object_fails_and_alerts(archived):
    url, instance, _root, _processing, s3 = archived
    with session_scope(url) as session:
        session.add(PolicySetting(key="restore_drill_sample_size", value=10))
        victim = session.scalars(select(RawDataPackage).order_by(RawDataPackage.name)).first()
        name, key = victim.name, victim.relative_path
    _flip_in_s3(s3, key)

    drill = _run_drill(url, instance)

    meta = drill.metadata
    assert meta["outcome"].value == "FAILED"
    assert meta["packages"].value == 4
    assert meta["packages_failed"].value == 1
    assert name in meta["restores"].value
    assert _drill_check(instance) == [False]
    with session_scope(url) as session:
        [row] = session.scalars(select(AuditLog).where(AuditLog.entity_type == "restore_drill"))
        assert row.new_status == "FAILED"
        assert name in row.reason
        # the archive copy the drill could not restore was read back at once: BAD, for repair
        assert _lta_copies(session, "cologne")[name].status == S.BAD
        evaluate_site(session, "cologne", [], claimer="test")
    [incident] = _incidents(url, "restore_drill_failed")
    assert incident.location == "cologne/processing"
    assert name in incident.summary
    assert incident.resolved_at is None
    assert {i.location for i in _incidents(url, "fixity_mismatch")} == {"cologne/lta"}
