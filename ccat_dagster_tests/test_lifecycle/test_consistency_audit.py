"""The consistency audit on real storage (local disks, a moto S3 server) and both ops-DB
backends: an archive object deleted behind the catalogue is found, confirmed by a second scan
and restored from the other archive; a planted dark file is quarantined, never deleted; a 2%
anomaly acts on nothing and raises an alert; slices and the cursor; temporaries and writes in
flight are not dark."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.alerts.evaluation import evaluate_site
from ccat_dagster.lifecycle.archive import stage as archive_stage
from ccat_dagster.lifecycle.audit.run import audit_location, locations_due
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster.storage.local import partial_dir
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AlertIncident,
    AuditCursor,
    AuditFinding,
    AuditFindingKind,
    AuditFindingState,
    DataLocation,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    PolicySetting,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    S3DataLocation,
    Status,
    utcnow,
)

S = PhysicalCopyStatus
F = AuditFindingState
LATER = timedelta(minutes=1_441)  # past the default audit_confirm_minutes (one day)


def _policy(session, **values) -> None:
    for key, value in values.items():
        session.merge(PolicySetting(key=key, value=value))
    session.commit()


def _copy(session, package: RawDataPackage, location: DataLocation):
    return session.scalar(
        select(RawDataPackagePhysicalCopy).where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            RawDataPackagePhysicalCopy.data_location_id == location.id,
        )
    )


def _findings(session, location: DataLocation) -> list[AuditFinding]:
    return list(
        session.scalars(
            select(AuditFinding)
            .where(AuditFinding.data_location_id == location.id)
            .order_by(AuditFinding.id)
        )
    )


@pytest.fixture
def topo(session, tmp_path):
    topology = f.make_topology(session, tmp_path, lta_sites=("cologne",), processing=False)
    session.commit()
    return topology


def _s3_archive(session, topo, bucket: str, endpoint: str) -> DataLocation:
    """A second LONG_TERM_ARCHIVE of site cologne, in S3."""
    s3 = S3DataLocation(
        site=topo.sites["cologne"],
        name="s3_lta",
        location_type=LocationType.LONG_TERM_ARCHIVE,
        priority=2,
        bucket=bucket,
        endpoint_url=endpoint,
        prefix="archive",
        region="us-east-1",
    )
    session.add(s3)
    session.flush()
    return s3


def test_an_archive_object_deleted_behind_the_catalogue_is_restored_from_the_other_archive(
    session, topo, s3_bucket, s3_endpoint
):
    _policy(session, audit_anomaly_fraction=0.5)
    lta = topo.lta("cologne")
    s3_lta = _s3_archive(session, topo, s3_bucket, s3_endpoint)
    storages = StorageRegistry()
    packages = [f.archived_package(topo)[0] for _ in range(3)]
    for package in packages:  # archived in both, the buffers cleaned since
        storages.get(s3_lta).write_stream(
            package.relative_path, f.object_path(lta, package.relative_path).open("rb")
        )
        f.add_package_copy(topo, package, s3_lta, verified=True, write=False)
        for buffer in (topo.source_buffer, topo.buffer("cologne")):
            _copy(session, package, buffer).status = S.DELETED
            f.object_path(buffer, package.relative_path).unlink()
    session.commit()
    victim = packages[1]
    f.object_path(lta, victim.relative_path).unlink()  # deleted behind the catalogue

    now = utcnow()
    first = audit_location(session, lta, storages.get(lta), now=now)
    assert (first.lost, first.dark, first.acted, first.anomaly) == (1, 0, 0, None)
    assert _copy(session, victim, lta).status == S.PRESENT  # seen once: nothing done
    assert [(x.kind, x.state) for x in _findings(session, lta)] == [(AuditFindingKind.LOST, F.OPEN)]
    assert archive_stage.archive_candidates(session, topo.sites["cologne"]) == []

    early = audit_location(session, lta, storages.get(lta), now=now + timedelta(minutes=5))
    assert (early.lost, early.confirmed, early.acted) == (1, 0, 0)  # too soon to confirm

    second = audit_location(session, lta, storages.get(lta), now=now + LATER)
    assert (second.lost, second.confirmed, second.acted) == (1, 1, 1)
    assert _copy(session, victim, lta).status == S.LOST
    [finding] = _findings(session, lta)
    assert finding.state == F.ACTED
    assert finding.confirmed_at is not None

    # the archive stage restores it from the verified copy in the other archive
    [(package, source, target)] = archive_stage.archive_candidates(session, topo.sites["cologne"])
    assert (package.id, source.id, target.id) == (victim.id, s3_lta.id, lta.id)
    outcome = archive_stage.send_data_to_long_term_archive(
        session, package, source, target, storage_for=storages.get
    )
    assert outcome.ok, outcome.error
    evidence = archive_stage.confirm_lta_presence(
        session, package, target, storage_for=storages.get
    )
    session.commit()
    assert evidence.ok
    assert f.object_path(lta, victim.relative_path).read_bytes() == f.package_bytes(victim)
    assert _copy(session, victim, lta).status == S.PRESENT
    assert _copy(session, victim, lta).verified_at is not None

    clean = audit_location(session, lta, storages.get(lta), now=now + 2 * LATER)
    assert (clean.lost, clean.dark) == (0, 0)
    storages.close()


def test_a_planted_dark_file_is_quarantined_then_released_and_purged(session, topo):
    _policy(session, audit_anomaly_fraction=0.5)
    buffer = topo.buffer("cologne")
    for _ in range(3):
        f.archived_package(topo)
    session.commit()
    planted = f.write_object(buffer, "packages/stray.tar", b"nobody filed me\n")
    storage = f.local_storage_for(buffer)
    now = utcnow()

    first = audit_location(session, buffer, storage, now=now)
    assert (first.dark, first.quarantined) == (1, 0)
    assert planted.exists()  # never acted on at first sight

    second = audit_location(session, buffer, storage, now=now + LATER)
    assert (second.dark, second.quarantined) == (1, 1)
    assert not planted.exists()
    [finding] = _findings(session, buffer)
    assert finding.state == F.QUARANTINED
    moved = f.object_path(buffer, finding.quarantine_key)
    day = (now + LATER).date().isoformat()  # the day it was quarantined
    assert finding.quarantine_key == f".ccat-quarantine/{day}/packages/stray.tar"
    assert moved.read_bytes() == b"nobody filed me\n"  # moved, not deleted

    # the quarantine is not audited: a third pass finds nothing dark
    assert audit_location(session, buffer, storage, now=now + 2 * LATER).dark == 0

    listing = CliRunner().invoke(app, ["quarantine", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    assert '"key": "packages/stray.tar"' in listing.output
    released = CliRunner().invoke(app, ["quarantine", "release", str(finding.id)])
    assert released.exit_code == 0, released.output
    assert planted.read_bytes() == b"nobody filed me\n"
    assert not moved.exists()
    session.expire_all()
    assert finding.state == F.RELEASED

    # found dark again, quarantined again on confirmation, then purged
    audit_location(session, buffer, storage, now=now + 3 * LATER)
    audit_location(session, buffer, storage, now=now + 4 * LATER)
    again = _findings(session, buffer)[-1]
    assert again.state == F.QUARANTINED
    assert not planted.exists()
    refused = CliRunner().invoke(app, ["quarantine", "purge", str(again.id)], input="n\n")
    assert refused.exit_code != 0
    assert f.object_path(buffer, again.quarantine_key).exists()
    purged = CliRunner().invoke(app, ["quarantine", "purge", str(again.id), "--yes"])
    assert purged.exit_code == 0, purged.output
    assert not f.object_path(buffer, again.quarantine_key).exists()
    session.expire_all()
    assert again.state == F.PURGED
    assert CliRunner().invoke(app, ["quarantine", "list"]).output.strip() == "nothing in quarantine"


def test_a_two_percent_anomaly_acts_on_nothing_and_alerts(session, topo, alert_webhook):
    _policy(session, audit_confirm_minutes=0)
    buffer = topo.source_buffer
    packages = [f.file_raw_data_package(topo, n_files=1) for _ in range(100)]
    session.commit()
    for package in packages[:2]:
        f.object_path(buffer, package.relative_path).unlink()
    storage = f.local_storage_for(buffer)
    now = utcnow()

    for minutes in (0, 10):
        report = audit_location(session, buffer, storage, now=now + timedelta(minutes=minutes))
        assert report.anomaly is not None
        assert "2 of 100 objects" in report.anomaly
        assert (report.acted, report.confirmed) == (0, 0)
    assert _findings(session, buffer) == []
    assert all(_copy(session, p, buffer).status == S.PRESENT for p in packages)
    cursor = session.get(AuditCursor, buffer.id)
    assert cursor.last_key == ""
    assert cursor.pass_number == 1

    evaluate_site(session, "ccat", [alert_webhook.channel()], claimer="test", now=now)
    incident = session.scalar(
        select(AlertIncident).where(AlertIncident.kind == "location_looks_wrong")
    )
    assert incident is not None
    assert incident.location == "ccat/telescope_buffer"
    [body] = alert_webhook.bodies
    assert "looks wrong: 2 of 100 objects dark or lost" in body["text"]
    assert "wrong mount or bucket?" in body["text"]


def test_a_location_is_audited_in_slices_and_the_cursor_wraps(session, topo):
    _policy(session, audit_slice_objects=4, audit_confirm_minutes=0, audit_anomaly_fraction=0.5)
    buffer = topo.source_buffer
    packages = [f.file_raw_data_package(topo, n_files=1) for _ in range(10)]
    session.commit()
    f.object_path(buffer, packages[9].relative_path).unlink()  # lost, in the last slice
    storage = f.local_storage_for(buffer)
    now = utcnow()

    reports = [audit_location(session, buffer, storage, now=now) for _ in range(3)]
    assert [r.listed for r in reports] == [4, 4, 1]
    assert [r.wrapped for r in reports] == [False, False, True]
    assert reports[0].cursor == packages[3].relative_path
    assert [r.lost for r in reports] == [0, 0, 1]
    cursor = session.get(AuditCursor, buffer.id)
    assert (cursor.last_key, cursor.pass_number) == ("", 2)
    assert cursor.pass_finished_at is not None

    # the next pass starts from the beginning; the lost copy is confirmed when met again
    nxt = [
        audit_location(session, buffer, storage, now=now + timedelta(minutes=1)) for _ in range(3)
    ]
    assert [r.listed for r in nxt] == [4, 4, 1]
    assert nxt[2].acted == 1
    assert _copy(session, packages[9], buffer).status == S.LOST


def test_temporaries_and_writes_in_flight_are_not_dark(session, topo):
    _policy(session, audit_confirm_minutes=0, audit_anomaly_fraction=1)
    buffer = topo.source_buffer
    f.file_raw_data_package(topo)
    pending = f.file_raw_data_package(topo, write=False)
    pending.status = Status.IN_PROGRESS  # being packaged: the tar is written, not recorded
    _copy(session, pending, buffer).status = S.DELETED
    session.commit()
    f.write_object(buffer, pending.relative_path, b"being written")
    partial = partial_dir(buffer.path)
    partial.mkdir(exist_ok=True)
    (partial / "deadbeef-pkg.tar").write_bytes(b"half a tar")
    f.write_object(buffer, "packages/.x.tar.part-0123", b"half a tar beside")
    storage = f.local_storage_for(buffer)

    for minutes in (0, 10):
        report = audit_location(session, buffer, storage, now=utcnow() + timedelta(minutes=minutes))
        assert (report.dark, report.lost, report.quarantined) == (0, 0, 0)
    assert (partial / "deadbeef-pkg.tar").exists()
    assert f.object_path(buffer, pending.relative_path).exists()
    assert _findings(session, buffer) == []


def test_a_dark_object_the_catalogue_learns_before_the_second_scan_is_closed(session, topo):
    _policy(session, audit_anomaly_fraction=0.6)
    buffer = topo.source_buffer
    f.file_raw_data_package(topo)
    late = f.file_raw_data_package(topo, write=False)
    _copy(session, late, buffer).status = S.DELETED  # not yet recorded, object written
    session.commit()
    f.write_object(buffer, late.relative_path, f.package_bytes(late))
    storage = f.local_storage_for(buffer)
    now = utcnow()
    assert audit_location(session, buffer, storage, now=now).dark == 1
    _copy(session, late, buffer).status = S.PRESENT  # the write's record committed
    session.commit()
    report = audit_location(session, buffer, storage, now=now + LATER)
    assert (report.dark, report.quarantined) == (0, 0)
    assert [x.state for x in _findings(session, buffer)] == [F.GONE]
    assert f.object_path(buffer, late.relative_path).exists()


def test_only_active_audited_locations_that_are_due(session, topo):
    _policy(session, audit_interval_minutes=60)
    site = topo.sites["cologne"]
    due = locations_due(session, site)
    assert [loc.name for loc in due] == ["buffer", "lta"]
    audit_location(session, topo.buffer("cologne"), f.local_storage_for(topo.buffer("cologne")))
    assert [loc.name for loc in locations_due(session, site)] == ["lta"]
    later = utcnow() + timedelta(minutes=61)
    assert [loc.name for loc in locations_due(session, site, now=later)] == ["buffer", "lta"]


def test_at_a_source_only_lost_files_are_looked_for(session, topo):
    _policy(session, audit_confirm_minutes=0, audit_anomaly_fraction=1)
    source = topo.source
    package = f.file_raw_data_package(topo, n_files=3)
    session.commit()
    f.write_object(source, "raw/new_obs/just_written.dat", b"new data, not yet filed")
    gone = package.raw_data_files[0]
    f.object_path(source, gone.relative_path).unlink()
    storage = f.local_storage_for(source)
    now = utcnow()
    first = audit_location(session, source, storage, now=now)
    assert (first.dark, first.lost) == (0, 1)
    second = audit_location(session, source, storage, now=now + timedelta(minutes=1))
    assert second.acted == 1
    assert f.object_path(source, "raw/new_obs/just_written.dat").exists()
    copies = {c.raw_data_file_id: c.status for c in session.scalars(select(PhysicalCopy))}
    assert copies[gone.id] == S.LOST
    assert [copies[r.id] for r in package.raw_data_files[1:]] == [S.PRESENT, S.PRESENT]


def test_a_half_done_move_is_finished_and_other_bytes_are_never_overwritten(session, topo):
    _policy(session, audit_confirm_minutes=0, audit_anomaly_fraction=1)
    buffer = topo.buffer("cologne")
    now = utcnow()
    day = now.date().isoformat()
    f.write_object(buffer, "stray/a.tar", b"same bytes")
    f.write_object(buffer, f".ccat-quarantine/{day}/stray/a.tar", b"same bytes")  # copied
    f.write_object(buffer, "stray/b.tar", b"new bytes!")
    f.write_object(buffer, f".ccat-quarantine/{day}/stray/b.tar", b"old bytes!")  # other
    storage = f.local_storage_for(buffer)
    audit_location(session, buffer, storage, now=now)
    report = audit_location(session, buffer, storage, now=now)
    assert report.quarantined == 1
    assert len(report.errors) == 1
    assert not f.object_path(buffer, "stray/a.tar").exists()
    assert f.object_path(buffer, "stray/b.tar").read_bytes() == b"new bytes!"
    assert f.object_path(buffer, f".ccat-quarantine/{day}/stray/b.tar").read_bytes() == (
        b"old bytes!"
    )
    states = {x.key: x.state for x in _findings(session, buffer)}
    assert states == {"stray/a.tar": F.QUARANTINED, "stray/b.tar": F.OPEN}


def test_a_dark_object_in_an_s3_archive_is_moved_into_its_quarantine(
    session, topo, s3_bucket, s3_endpoint
):
    _policy(session, audit_confirm_minutes=0, audit_anomaly_fraction=0.5)
    s3_lta = _s3_archive(session, topo, s3_bucket, s3_endpoint)
    storages = StorageRegistry()
    storage = storages.get(s3_lta)
    for package in [f.archived_package(topo)[0] for _ in range(2)]:
        storage.write_stream(package.relative_path, io.BytesIO(f.package_bytes(package)))
        f.add_package_copy(topo, package, s3_lta, verified=True, write=False)
    session.commit()
    storage.write_stream("packages/copied_by_hand.tar", io.BytesIO(b"by hand"))
    now = utcnow()
    audit_location(session, s3_lta, storage, now=now)
    report = audit_location(session, s3_lta, storage, now=now)
    assert (report.dark, report.lost, report.quarantined) == (1, 0, 1)
    [finding] = _findings(session, s3_lta)
    assert not storage.stat("packages/copied_by_hand.tar").exists
    with storage.open_read(finding.quarantine_key) as fh:
        assert fh.read() == b"by hand"
    storages.close()
