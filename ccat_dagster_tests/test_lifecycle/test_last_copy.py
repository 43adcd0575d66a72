"""The gate before the last copy outside the archives goes, for every kind of copy, and the
marking of archive copies that fail a live check (both ops-DB backends, real files)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from ccat_dagster.lifecycle.archive.repair import (
    mark_for_repackaging,
    packages_to_repackage,
    record_lta_check,
)
from ccat_dagster.lifecycle.archive.verification import LtaEvidence, make_storage_lta_verifier
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.executor import mark_raw_data_files_for_deletion
from ccat_dagster_tests import deletion_rules as matrix
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AuditLog,
    LongTermArchiveTransfer,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFilePhysicalCopy,
    Status,
    utcnow,
)

S = PhysicalCopyStatus
verify = make_storage_lta_verifier(f.local_storage_for)


cycle = f.cleanup_cycle


def status_of(session, copy_id: int) -> PhysicalCopyStatus:
    session.expire_all()
    return session.get(PhysicalCopy, copy_id).status


def _source_files_deletion_possible(session, topo, pkg):
    """The state after the source-buffer package copy went: raw files DELETION_POSSIBLE."""
    src = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id == topo.source_buffer.id,
        )
    )
    src.status = S.DELETED
    f.object_path(topo.source_buffer, pkg.relative_path).unlink()
    mark_raw_data_files_for_deletion(session, [pkg.id], now=utcnow() - timedelta(days=60))
    session.commit()


def _delete_lta_buffer_copy(session, topo, pkg):
    copy = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id == topo.buffer("cologne").id,
        )
    )
    copy.status = S.DELETED
    session.commit()


def test_deletion_possible_files_go_only_with_passing_evidence(session, topo):
    pkg, _ = f.archived_package(topo)
    _delete_lta_buffer_copy(session, topo, pkg)
    _source_files_deletion_possible(session, topo, pkg)
    report = cycle(session)
    assert report.ok, report.errors
    rows = session.scalars(
        select(AuditLog).where(
            AuditLog.new_status == S.DELETED.value, AuditLog.reason == d.RULE_RDF_DELETION_POSSIBLE
        )
    ).all()
    assert len(rows) == 2
    for row in rows:
        assert row.evidence["last_copy_outside_lta"] is True
        assert [c["ok"] for c in row.evidence["lta_verification"]] == [True]
        assert row.evidence["lta_verification"][0]["checksum_source"] == "computed"


def test_deletion_possible_files_kept_and_archive_copy_marked_lost(session, topo):
    pkg, _ = f.archived_package(topo)
    _delete_lta_buffer_copy(session, topo, pkg)
    _source_files_deletion_possible(session, topo, pkg)
    f.object_path(topo.lta("cologne"), pkg.relative_path).unlink()
    report = cycle(session)
    assert not report.ok
    assert report.deleted == 0
    files = session.scalars(select(RawDataFilePhysicalCopy)).all()
    assert {c.status for c in files} == {S.DELETION_POSSIBLE}
    assert all(c.claimed_by is None for c in files)
    for rdf in pkg.raw_data_files:
        assert f.object_path(topo.source, rdf.relative_path).exists()
    lta_copy = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id == topo.lta("cologne").id,
        )
    )
    assert lta_copy.status == S.LOST
    assert "missing" in lta_copy.failure_reason
    # the archive transfer goes back for a re-archive
    transfer = session.scalar(
        select(LongTermArchiveTransfer).where(LongTermArchiveTransfer.raw_data_package_id == pkg.id)
    )
    assert transfer.status == Status.PENDING
    assert transfer.retry_count == 0
    # nothing left to claim: the rule now refuses, with the reason
    assert matrix.process_deletion_possible_raw_data_files(session) == []
    reasons = {b.reason for b in d.explain_blocked(session, d.RULE_RDF_DELETION_POSSIBLE)}
    assert reasons == {"no PRESENT, verified copy of its package in any LTA"}
    # no buffer tar and no good archive copy left, every raw file on disk: re-package it
    assert packages_to_repackage(session, [topo.source.id]) == [pkg.id]
    assert mark_for_repackaging(session, [pkg.id]) == 1
    assert mark_for_repackaging(session, [pkg.id]) == 0  # conditional: once
    session.commit()
    session.refresh(pkg)
    assert pkg.status == Status.PENDING


def test_bad_archive_copy_keeps_every_holder_until_repaired(session, topo):
    pkg, _ = f.archived_package(topo)
    lta_copy = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id == topo.lta("cologne").id,
        )
    )
    lta_copy.status = S.BAD
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []
    assert matrix.find_deletable_raw_data_packages_at_lta_buffers(session) == []
    blocked = d.explain_blocked(session, d.RULE_RDP_SOURCE_BUFFER)
    assert [b.reason for b in blocked] == [
        "no PRESENT, verified copy in any LONG_TERM_ARCHIVE location"
    ]


def test_processing_file_that_is_the_last_copy_waits_for_the_archive_check(session, topo):
    pkg, _ = f.archived_package(topo)
    _delete_lta_buffer_copy(session, topo, pkg)
    f.stage(topo, [pkg], active=False)
    session.commit()
    # the source-buffer tar is still there: not the last copy, no check needed
    report = cycle(session, run_id="with-buffer-copy", location=topo.processing)
    rows = session.scalars(
        select(AuditLog).where(
            AuditLog.new_status == S.DELETED.value, AuditLog.run_id == "with-buffer-copy"
        )
    ).all()
    assert report.ok
    assert rows
    assert all(r.evidence["last_copy_outside_lta"] is False for r in rows)
    assert all("lta_verification" not in r.evidence for r in rows)


def test_processing_file_last_copy_kept_when_the_archive_copy_is_gone(session, topo):
    pkg, _ = f.archived_package(topo)
    _delete_lta_buffer_copy(session, topo, pkg)
    src = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id == topo.source_buffer.id,
        )
    )
    src.status = S.DELETED
    f.stage(topo, [pkg], active=False)
    session.commit()
    f.object_path(topo.lta("cologne"), pkg.relative_path).unlink()
    report = cycle(session, location=topo.processing)
    assert report.deleted == 0
    assert report.errors
    processing = session.scalars(
        select(RawDataFilePhysicalCopy).where(
            RawDataFilePhysicalCopy.data_location_id == topo.processing.id
        )
    ).all()
    assert processing
    assert {c.status for c in processing} == {S.PRESENT}


def test_transfer_package_that_holds_the_last_tar_is_checked(session, topo):
    pkg, dtp = f.archived_package(topo)
    for loc in (topo.source_buffer, topo.buffer("cologne")):
        copy = session.scalar(
            select(PhysicalCopy).where(
                PhysicalCopy.raw_data_package_id == pkg.id, PhysicalCopy.data_location_id == loc.id
            )
        )
        copy.status = S.DELETED
    session.commit()
    f.object_path(topo.lta("cologne"), pkg.relative_path).unlink()
    report = cycle(session, location=topo.source_buffer)
    assert report.deleted == 0
    assert f.object_path(topo.source_buffer, dtp.relative_path).exists()
    dtp_copy = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.data_transfer_package_id == dtp.id,
            PhysicalCopy.data_location_id == topo.source_buffer.id,
        )
    )
    assert dtp_copy.status == S.PRESENT


def test_an_archive_that_does_not_answer_marks_nothing(session, topo):
    pkg, _ = f.archived_package(topo)
    lta = topo.lta("cologne")
    evidence = LtaEvidence.cannot_verify(pkg, lta, OSError("timed out"))
    assert not evidence.definite_failure
    assert record_lta_check(session, pkg, lta, evidence) is None
    session.commit()
    copy = session.scalar(
        select(PhysicalCopy).where(
            PhysicalCopy.raw_data_package_id == pkg.id, PhysicalCopy.data_location_id == lta.id
        )
    )
    assert copy.status == S.PRESENT
    # and a check that looked and found other bytes does mark it, once
    bad = LtaEvidence(
        ok=False,
        exists=True,
        location="cologne/lta",
        key=pkg.relative_path,
        checked_at=utcnow(),
        detail="sha256 checksum mismatch",
    )
    assert record_lta_check(session, pkg, lta, bad) == S.BAD
    assert record_lta_check(session, pkg, lta, bad) is None
    session.commit()
    assert status_of(session, copy.id) == S.BAD
