"""The cleanup executor on real files (LocalDiskStorage on tmp dirs) and both ops-DB backends:
what it deletes, what it keeps, the live LTA re-verification, failures, retries, the plan."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier
from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.executor import RefusedDeletionError, execute_deletions
from ccat_dagster.lifecycle.deletion.last_copy import RULE_LTA_VERIFICATION_FAILED
from ccat_dagster.lifecycle.deletion.plan import has_deletable, plan_deletions
from ccat_dagster.storage.s3 import S3Storage
from ccat_dagster_tests import deletion_rules as matrix
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    PhysicalCopy,
    PhysicalCopyStatus,
    PolicySetting,
    RawDataPackage,
    Status,
    utcnow,
)

S = PhysicalCopyStatus
verify = make_storage_lta_verifier(f.local_storage_for)


cycle = f.cleanup_cycle


def copy_of(session, location, **kw) -> PhysicalCopy:
    q = select(PhysicalCopy).where(PhysicalCopy.data_location_id == location.id)
    for attr, entity in kw.items():
        q = q.where(getattr(PhysicalCopy, f"{attr}_id") == entity.id)
    session.expire_all()
    return session.scalars(q).one()


def exists(location, key) -> bool:
    return f.object_path(location, key).exists()


def deleted_audits(session):
    return session.scalars(
        select(AuditLog).where(AuditLog.new_status == S.DELETED.value).order_by(AuditLog.id)
    ).all()


# --------------------------------------------------------------------------- the happy path


def test_cycle_deletes_buffer_copies_after_archive_and_keeps_the_archive(session, topo):
    pkg, dtp = f.archived_package(topo, n_files=2)
    session.commit()
    report = cycle(session)
    assert report.ok, report.errors
    # Bytes gone from the buffers, archive and raw files untouched.
    assert not exists(topo.source_buffer, pkg.relative_path)
    assert not exists(topo.source_buffer, dtp.relative_path)
    assert not exists(topo.buffer("cologne"), dtp.relative_path)
    assert not exists(topo.buffer("cologne"), pkg.relative_path)
    assert exists(topo.lta("cologne"), pkg.relative_path)
    for rdf in pkg.raw_data_files:
        assert exists(topo.source, rdf.relative_path)
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).status == S.DELETED
    assert copy_of(session, topo.lta("cologne"), raw_data_package=pkg).status == S.PRESENT
    # Stage 1 of the raw-file deletion happened as the side effect.
    statuses = {
        copy_of(session, topo.source, raw_data_file=rdf).status for rdf in pkg.raw_data_files
    }
    assert statuses == {S.DELETION_POSSIBLE}
    assert report.marked_deletion_possible == 2
    assert report.deleted_by_rule == {
        d.RULE_DTP_SOURCE_BUFFER: 1,
        d.RULE_DTP_LTA_BUFFER: 1,
        d.RULE_RDP_SOURCE_BUFFER: 1,
        d.RULE_RDP_LTA_BUFFER: 1,
    }
    assert report.bytes_by_location["ccat/telescope_buffer"] == pkg.size + dtp.size


def test_deletion_audit_carries_live_lta_evidence(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    cycle(session)
    src = copy_of(session, topo.source_buffer, raw_data_package=pkg)
    trail = session.scalars(
        select(AuditLog)
        .where(AuditLog.entity_type == "physical_copy", AuditLog.entity_id == src.id)
        .order_by(AuditLog.id)
    ).all()
    assert [a.new_status for a in trail] == [
        "DELETION_SCHEDULED",
        "DELETION_IN_PROGRESS",
        "DELETED",
    ]
    assert {a.reason for a in trail} == {d.RULE_RDP_SOURCE_BUFFER}
    assert {a.run_id for a in trail} == {"run-1"}
    (evidence,) = trail[-1].evidence["lta_verification"]
    assert evidence["ok"] is True
    assert evidence["exists"] is True
    assert evidence["checksum"] == pkg.checksum
    assert evidence["size"] == pkg.size
    assert evidence["location"] == "cologne/lta"
    assert evidence["checked_at"]


def test_cycle_opens_its_own_session_from_a_factory(engine, session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    report = cycle(sessionmaker(engine))
    assert report.ok
    assert report.deleted_by_rule[d.RULE_RDP_SOURCE_BUFFER] == 1
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).status == S.DELETED


def test_nothing_deletable_before_archive(session, topo):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    session.commit()
    assert not has_deletable(session, session.scalars(select(DataLocation)).all())
    report = cycle(session)
    assert report.deleted == 0
    assert report.ok
    assert exists(topo.source_buffer, pkg.relative_path)
    assert exists(topo.source_buffer, dtp.relative_path)


def test_dry_run_changes_nothing(session, topo):
    pkg, _dtp = f.archived_package(topo)
    session.commit()
    calls = []
    report = cycle(session, dry_run=True, verify_lta_copy=lambda p, loc: calls.append(p))
    assert report.dry_run
    assert report.deleted == 0
    assert calls == []
    assert report.plan.count_by_rule[d.RULE_RDP_SOURCE_BUFFER] == 1
    assert exists(topo.source_buffer, pkg.relative_path)
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).status == S.PRESENT
    assert session.scalars(select(AuditLog)).all() == []


# --------------------------------------------------------------------------- safety


def test_source_copy_kept_when_lta_object_deleted_behind_catalogues_back(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    f.object_path(topo.lta("cologne"), pkg.relative_path).unlink()
    report = cycle(session)
    assert not report.ok
    assert any(pkg.name in e and "cologne/lta" in e for e in report.errors)
    assert exists(topo.source_buffer, pkg.relative_path)
    assert exists(topo.buffer("cologne"), pkg.relative_path)  # last non-LTA copies: both kept
    src = copy_of(session, topo.source_buffer, raw_data_package=pkg)
    assert src.status == S.PRESENT
    assert src.claimed_by is None
    assert RULE_LTA_VERIFICATION_FAILED in src.failure_reason
    session.expire_all()
    assert RULE_LTA_VERIFICATION_FAILED in session.get(RawDataPackage, pkg.id).failure_reason
    errors = session.scalars(
        select(AuditLog).where(AuditLog.reason == RULE_LTA_VERIFICATION_FAILED)
    ).all()
    assert errors
    assert all(a.evidence["level"] == "ERROR" for a in errors)
    # The raw files were not marked DELETION_POSSIBLE: their package was not deleted.
    for rdf in pkg.raw_data_files:
        assert copy_of(session, topo.source, raw_data_file=rdf).status == S.PRESENT


def test_source_copy_kept_when_lta_object_corrupted(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    path = f.object_path(topo.lta("cologne"), pkg.relative_path)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    report = cycle(session)
    assert any("checksum mismatch" in e for e in report.errors)
    assert exists(topo.source_buffer, pkg.relative_path)
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).status == S.PRESENT


def test_source_copy_kept_and_reported_when_archive_endpoint_down(session, topo, monkeypatch):
    pkg, _ = f.archived_package(topo)
    session.commit()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with socket.socket() as sock:  # a port nobody listens on: a real S3 endpoint that is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = S3Storage(
        "cologne/lta", "ccat-lta", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1"
    )
    lta_id = topo.lta("cologne").id

    def storage_for(location):
        return down if location.id == lta_id else f.local_storage_for(location)

    report = cycle(session, verify_lta_copy=make_storage_lta_verifier(storage_for))
    # an archive that does not answer is a wait, not an incident: reported for the location
    assert report.ok
    assert d.RULE_RDP_SOURCE_BUFFER not in report.deleted_by_rule
    assert {e.location for e in report.unavailable} == {"cologne/lta"}
    assert "unreachable" in str(report.unavailable[0])
    assert exists(topo.source_buffer, pkg.relative_path)
    src = copy_of(session, topo.source_buffer, raw_data_package=pkg)
    assert src.status == S.PRESENT
    # the copy in the archive is not judged: nothing was examined
    assert copy_of(session, topo.lta("cologne"), raw_data_package=pkg).status == S.PRESENT
    # marked unavailable from the cleanup's site, the rule waits instead of failing each cycle
    from ccat_dagster.lifecycle.capacity.availability import record_location_error

    record_location_error(session, report.unavailable[0], observer="ccat")
    waiting = d.explain_blocked(
        session, d.RULE_RDP_SOURCE_BUFFER, ctx=d.rule_context(session, observer="ccat")
    )
    assert [b.reason for b in waiting] == [d.REASON_ARCHIVE_UNREACHABLE]
    from ccat_dagster.lifecycle.capacity.availability import mark_available

    mark_available(session, topo.lta("cologne"), observer="ccat")
    session.commit()
    # Later, with the endpoint back, the same copy goes.
    report = cycle(session, run_id="run-2")
    assert report.ok
    assert not exists(topo.source_buffer, pkg.relative_path)


def test_executor_refuses_a_copy_at_a_long_term_archive(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    lta_copy = copy_of(session, topo.lta("cologne"), raw_data_package=pkg)
    forged = d.DeletableCopy(
        lta_copy.id,
        lta_copy.type,
        topo.lta("cologne").id,
        pkg.id,
        pkg.id,
        pkg.name,
        pkg.relative_path,
        pkg.size,
        S.PRESENT,
        d.RULE_RDP_LTA_BUFFER,
    )
    with pytest.raises(RefusedDeletionError, match="LONG_TERM_ARCHIVE"):
        execute_deletions(
            session,
            [forged],
            storage_for=f.local_storage_for,
            verify_lta_copy=verify,
            run_id="evil",
            ctx=d.rule_context(session),
        )
    assert exists(topo.lta("cologne"), pkg.relative_path)
    assert copy_of(session, topo.lta("cologne"), raw_data_package=pkg).status == S.PRESENT


def test_lta_never_deleted_by_any_number_of_cycles_even_under_pressure(session, topo):
    pkg, _ = f.archived_package(topo)
    f.stage(topo, [pkg], active=False)
    for loc in topo.locations.values():
        record_disk_usage(session, loc, used_bytes=99, total_bytes=100)
    session.commit()
    for i in range(3):
        cycle(session, run_id=f"run-{i}", now=utcnow() + timedelta(days=400))
    assert exists(topo.lta("cologne"), pkg.relative_path)
    assert copy_of(session, topo.lta("cologne"), raw_data_package=pkg).status == S.PRESENT
    lta_audits = session.scalars(
        select(AuditLog).where(AuditLog.data_location_id == topo.lta("cologne").id)
    ).all()
    assert lta_audits == []


# --------------------------------------------------------------------------- failures and retries


def test_storage_error_marks_copy_failed_and_next_cycle_retries(session, topo):
    pkg, dtp = f.archived_package(topo)
    session.commit()
    # A directory where the DTP file was: delete() refuses (a permanent storage error).
    path = f.object_path(topo.source_buffer, dtp.relative_path)
    path.unlink()
    path.mkdir()
    report = cycle(session)
    failed = copy_of(session, topo.source_buffer, data_transfer_package=dtp)
    assert failed.status == S.DELETION_FAILED
    assert failed.retry_count == 1
    assert "not a regular file" in failed.failure_reason
    assert [x.copy_id for x in report.failures] == [failed.id]
    # Nothing else lost or blocked by it.
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).status == S.DELETED
    path.rmdir()
    report = cycle(session, run_id="run-2")
    assert copy_of(session, topo.source_buffer, data_transfer_package=dtp).status == S.DELETED
    assert report.deleted_by_rule[d.RULE_DTP_SOURCE_BUFFER] == 1


def test_deletion_failing_max_retries_times_stays_failed_and_is_reported(session, topo):
    session.add(PolicySetting(key="max_retries", value=2))
    _, dtp = f.archived_package(topo)
    session.commit()
    path = f.object_path(topo.source_buffer, dtp.relative_path)
    path.unlink()
    path.mkdir()
    cycle(session, run_id="a")
    report = cycle(session, run_id="b")
    assert any("failed 2 times" in e for e in report.errors)
    report = cycle(session, run_id="c")  # no third attempt
    assert report.failures == []
    failed = copy_of(session, topo.source_buffer, data_transfer_package=dtp)
    assert failed.status == S.DELETION_FAILED
    assert failed.retry_count == 2
    assert [p[0] for p in report.permanent_failures] == [failed.id]
    assert "PERMANENT FAILURE" in plan_deletions(session).summary()


def test_crash_between_claim_and_delete_is_reclaimed_next_cycle(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    from ccat_dagster.lifecycle.deletion.claims import claim_for_deletion, mark_in_progress

    claimed = claim_for_deletion(session, rows, run_id="crashed", ctx=ctx)
    mark_in_progress(session, claimed, run_id="crashed")
    session.commit()  # ... and the run dies here
    # A fresh claim is respected: the next cycle leaves it alone.
    cycle(session, run_id="too-soon")
    assert exists(topo.source_buffer, pkg.relative_path)
    assert copy_of(session, topo.source_buffer, raw_data_package=pkg).claimed_by == "crashed"
    # Once the claim is older than the stale timeout it is taken over and finished.
    report = cycle(session, run_id="next", now=utcnow() + timedelta(hours=2))
    src = copy_of(session, topo.source_buffer, raw_data_package=pkg)
    assert src.status == S.DELETED
    assert src.claimed_by == "next"
    assert not exists(topo.source_buffer, pkg.relative_path)
    assert report.deleted_by_rule[d.RULE_RDP_SOURCE_BUFFER] == 1


# --------------------------------------------------------------------------- raw files, processing


def test_two_stage_raw_file_deletion_with_retention(session, topo):
    pkg, _ = f.archived_package(topo, n_files=3)
    session.commit()
    cycle(session, run_id="a")
    keys = [r.relative_path for r in pkg.raw_data_files]
    assert all(exists(topo.source, k) for k in keys)  # stage 1 only
    cycle(session, run_id="b", now=utcnow() + timedelta(days=29))
    assert all(exists(topo.source, k) for k in keys)  # retention (30 days) not over
    report = cycle(session, run_id="c", now=utcnow() + timedelta(days=31))
    assert not any(exists(topo.source, k) for k in keys)
    assert report.deleted_by_rule[d.RULE_RDF_DELETION_POSSIBLE] == 3


def test_two_stage_raw_file_deletion_under_critical_pressure(session, topo):
    pkg, _ = f.archived_package(topo, n_files=2)
    record_disk_usage(session, topo.source, used_bytes=96, total_bytes=100)
    session.commit()
    # The same cycle that marks them DELETION_POSSIBLE deletes them: no waiting for retention.
    report = cycle(session, run_id="a")
    assert report.marked_deletion_possible == 2
    assert report.deleted_by_rule[d.RULE_RDF_DELETION_POSSIBLE] == 2
    assert not any(exists(topo.source, r.relative_path) for r in pkg.raw_data_files)


def test_processing_cleanup_active_inactive_expired(session, topo):
    active, _ = f.archived_package(topo, "active_pkg")
    inactive, _ = f.archived_package(topo, "inactive_pkg")
    expired, _ = f.archived_package(topo, "expired_pkg")
    done, _ = f.archived_package(topo, "done_pkg")
    f.stage(topo, [active], staged=False)
    f.stage(topo, [inactive], staged=False, active=False)
    # active past its retention: kept (retention never releases the files of an active job)
    f.stage(topo, [expired], staged=True, retention_minutes=30, created_at=f.minutes_ago(60))
    f.stage(topo, [done], staged=True, active=False, retention_minutes=600)
    session.commit()
    report = cycle(session)
    proc = topo.processing
    assert all(exists(proc, r.relative_path) for r in active.raw_data_files)
    assert not any(exists(proc, r.relative_path) for r in inactive.raw_data_files)
    assert all(exists(proc, r.relative_path) for r in expired.raw_data_files)
    assert not any(exists(proc, r.relative_path) for r in done.raw_data_files)
    assert report.deleted_by_rule[d.RULE_RDF_PROCESSING] == 2
    assert report.deleted_by_rule[d.RULE_RDF_STAGED] == 2
    assert report.staged_packages_closed == 1
    assert copy_of(session, proc, raw_data_package=expired).status == S.STAGED
    assert copy_of(session, proc, raw_data_package=done).status == S.DELETED


# --------------------------------------------------------------------------- plan


def test_plan_explains_blocked_items_and_changes_nothing(session, topo):
    archived, _ = f.archived_package(topo)
    waiting = f.file_raw_data_package(topo, "waiting_pkg")
    in_flight = f.file_raw_data_package(topo, "in_flight_pkg")
    dtp = f.bundle(topo, [in_flight])
    f.transfer(topo, dtp, to_site="cologne", status=Status.IN_PROGRESS)
    session.commit()
    plan = plan_deletions(session)
    deletable = {(r.rule, r.name) for r in plan.deletable}
    assert (d.RULE_RDP_SOURCE_BUFFER, archived.name) in deletable
    # the schedule's quick question agrees with the plan, location by location
    locations = session.scalars(select(DataLocation)).all()
    with_deletable = []
    for location in locations:
        expected = bool(plan_deletions(session, location=location).deletable)
        assert has_deletable(session, [location]) == expected, location.name
        if expected:
            with_deletable.append(location)
    # ... and for several at once (one SELECT per rule), whichever holds the deletable copy
    without = [loc for loc in locations if loc not in with_deletable]
    assert with_deletable
    assert without
    assert not has_deletable(session, without)
    assert has_deletable(session, [*without, with_deletable[-1]])
    blocked = {(b.rule, b.name): b.reason for b in plan.blocked}
    assert "not ARCHIVED" in blocked[(d.RULE_RDP_SOURCE_BUFFER, "waiting_pkg")]
    assert "not ARCHIVED" in blocked[(d.RULE_RDP_SOURCE_BUFFER, "in_flight_pkg")]
    assert "no COMPLETED" in blocked[(d.RULE_DTP_SOURCE_BUFFER, dtp.name)]
    assert plan.bytes_by_location["ccat/telescope_buffer"] > 0
    text = plan.summary()
    assert (
        "blocked by can_delete_raw_data_package_from_source_buffer: 1 (package state is not "
        "ARCHIVED: WAITING)" in text
    )
    assert session.scalars(select(AuditLog)).all() == []
    assert exists(topo.source_buffer, waiting.relative_path)


def test_staging_job_created_between_finding_and_claiming_keeps_its_files(session, topo):
    """The claim is re-checked against the rule: a StagingJob committed after the cleanup found
    the files but before it claimed them protects them."""
    from ccat_dagster.lifecycle.deletion.executor import execute_deletions

    package, _ = f.archived_package(topo, "raced_pkg")
    f.stage(topo, [package], staged=False, active=False)
    session.commit()
    ctx = d.rule_context(session)
    found = matrix.find_deletable_processing_raw_data_files(session, ctx=ctx)
    assert found, "the files are deletable before the new job exists"
    f.stage(topo, [package], staged=False, active=True)  # a scientist stages it again
    session.commit()
    execute_deletions(
        session,
        found,
        storage_for=f.local_storage_for,
        verify_lta_copy=verify,
        run_id="racer",
        ctx=ctx,
    )
    session.commit()
    proc = topo.processing
    assert all(exists(proc, r.relative_path) for r in package.raw_data_files)
    assert all(
        copy_of(session, proc, raw_data_file=r).status == S.PRESENT for r in package.raw_data_files
    )
