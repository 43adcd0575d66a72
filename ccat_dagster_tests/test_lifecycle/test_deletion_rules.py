"""Each row of the deletion matrix: a case where it allows deletion and every case where it must
refuse, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.executor import mark_raw_data_files_for_deletion
from ccat_dagster_tests import deletion_rules as matrix
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    LocationType,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    Status,
    utcnow,
)

S = PhysicalCopyStatus


@pytest.fixture
def topo2(session, tmp_path):
    t = f.make_topology(session, tmp_path, lta_sites=("cologne", "us"))
    session.commit()
    return t


def copy_ids(rows):
    return {r.copy_id for r in rows}


def copy_at(session, location, *, package=None, dtp=None, rdf=None) -> PhysicalCopy:
    q = select(PhysicalCopy).where(PhysicalCopy.data_location_id == location.id)
    if package is not None:
        q = q.where(PhysicalCopy.raw_data_package_id == package.id)
    if dtp is not None:
        q = q.where(PhysicalCopy.data_transfer_package_id == dtp.id)
    if rdf is not None:
        q = q.where(PhysicalCopy.raw_data_file_id == rdf.id)
    return session.scalars(q).one()


def blocked_reasons(session, rule, copy):
    return [b.reason for b in d.explain_blocked(session, rule) if b.copy_id == copy.id]


# --------------------------------------------------------------------------- RDP at SOURCE buffer


def test_source_buffer_package_deletable_once_archived_with_present_lta_copy(session, topo):
    pkg, _ = f.archived_package(topo)
    session.commit()
    src = copy_at(session, topo.source_buffer, package=pkg)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session)
    assert copy_ids(rows) == {src.id}
    assert rows[0].rule == d.RULE_RDP_SOURCE_BUFFER
    assert matrix.can_delete_raw_data_package_from_source_buffer(session, pkg, topo.source_buffer)


def test_source_copy_kept_until_package_archived(session, topo):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    f.transfer(topo, dtp, to_site="cologne")
    f.archive(topo, pkg, site="cologne")
    pkg.state = PackageState.TRANSFERRING  # LTA copy exists, but not ARCHIVED yet
    session.commit()
    src = copy_at(session, topo.source_buffer, package=pkg)
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []
    assert not matrix.can_delete_raw_data_package_from_source_buffer(
        session, pkg, topo.source_buffer
    )
    assert "not ARCHIVED" in blocked_reasons(session, d.RULE_RDP_SOURCE_BUFFER, src)[0]


def test_source_copy_kept_when_only_an_lta_site_buffer_has_it(session, topo):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    f.transfer(topo, dtp, to_site="cologne")  # unpacked at the Cologne buffer, not archived
    pkg.state = PackageState.ARCHIVED  # even a wrong state must not be enough
    session.commit()
    src = copy_at(session, topo.source_buffer, package=pkg)
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []
    assert "LONG_TERM_ARCHIVE" in blocked_reasons(session, d.RULE_RDP_SOURCE_BUFFER, src)[0]


@pytest.mark.parametrize(
    "lta_status",
    [S.DELETED, S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS, S.DELETION_FAILED, S.STAGED],
)
def test_source_copy_kept_when_lta_copy_is_not_present(session, topo, lta_status):
    pkg, _ = f.archived_package(topo)
    copy_at(session, topo.lta("cologne"), package=pkg).status = lta_status
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []


def test_source_copy_kept_when_lta_copy_not_verified(session, topo):
    pkg, _ = f.archived_package(topo)
    copy_at(session, topo.lta("cologne"), package=pkg).verified_at = None
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []


def test_finder_restricted_to_one_location(session, topo):
    f.archived_package(topo)
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(
        session, location=topo.source_buffer
    )
    assert not matrix.find_deletable_raw_data_packages_at_source_buffers(
        session, location=topo.source
    )
    assert not matrix.find_deletable_raw_data_packages_at_source_buffers(
        session, location=topo.buffer("cologne").id
    )


# --------------------------------------------------------------------------- RDP at LTA-site buffer


def test_lta_buffer_package_deletable_when_in_same_site_lta(session, topo2):
    pkg, dtp = f.archived_package(topo2)  # archived at cologne
    f.transfer(topo2, dtp, to_site="us", origin=topo2.buffer("cologne"), route_kind="secondary")
    session.commit()
    cologne = copy_at(session, topo2.buffer("cologne"), package=pkg)
    us = copy_at(session, topo2.buffer("us"), package=pkg)
    rows = matrix.find_deletable_raw_data_packages_at_lta_buffers(session)
    # The US buffer copy waits for the US archive even though Cologne's archive has it.
    assert copy_ids(rows) == {cologne.id}
    assert matrix.can_delete_raw_data_package_from_lta_buffer(session, pkg, topo2.buffer("cologne"))
    assert not matrix.can_delete_raw_data_package_from_lta_buffer(session, pkg, topo2.buffer("us"))
    assert "same site" in blocked_reasons(session, d.RULE_RDP_LTA_BUFFER, us)[0]
    f.archive(topo2, pkg, site="us")
    session.commit()
    assert copy_ids(matrix.find_deletable_raw_data_packages_at_lta_buffers(session)) == {
        cologne.id,
        us.id,
    }


def test_lta_buffer_package_kept_when_same_site_lta_copy_deleted(session, topo):
    pkg, _ = f.archived_package(topo)
    copy_at(session, topo.lta("cologne"), package=pkg).status = S.DELETED
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_lta_buffers(session) == []


# --------------------------------------------------------------------------- DTP at SOURCE buffer


def test_source_buffer_transfer_package_deletable_after_transfer_and_unpack(session, topo):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    f.transfer(topo, dtp, to_site="cologne")
    session.commit()
    src = copy_at(session, topo.source_buffer, dtp=dtp)
    assert copy_ids(matrix.find_deletable_data_transfer_packages_at_source_buffers(session)) == {
        src.id
    }
    assert matrix.can_delete_data_transfer_package_from_source_buffer(
        session, dtp, topo.source_buffer
    )


@pytest.mark.parametrize(
    ("status", "unpack"),
    [
        (Status.IN_PROGRESS, Status.PENDING),
        (Status.COMPLETED, Status.PENDING),
        (Status.COMPLETED, Status.FAILED),
        (Status.FAILED, Status.PENDING),
    ],
)
def test_source_buffer_transfer_package_kept_until_transferred_and_unpacked(
    session, topo, status, unpack
):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    f.transfer(topo, dtp, to_site="cologne", status=status, unpack_status=unpack)
    session.commit()
    src = copy_at(session, topo.source_buffer, dtp=dtp)
    assert matrix.find_deletable_data_transfer_packages_at_source_buffers(session) == []
    assert blocked_reasons(session, d.RULE_DTP_SOURCE_BUFFER, src)


def test_source_buffer_transfer_package_kept_while_another_transfer_from_it_is_pending(
    session, topo2
):
    pkg = f.file_raw_data_package(topo2)
    dtp = f.bundle(topo2, [pkg])
    f.transfer(topo2, dtp, to_site="cologne")
    f.transfer(topo2, dtp, to_site="us", status=Status.IN_PROGRESS, unpack_status=Status.PENDING)
    session.commit()
    src = copy_at(session, topo2.source_buffer, dtp=dtp)
    assert matrix.find_deletable_data_transfer_packages_at_source_buffers(session) == []
    assert "not yet COMPLETED" in blocked_reasons(session, d.RULE_DTP_SOURCE_BUFFER, src)[0]


def test_source_buffer_transfer_package_kept_with_no_transfer(session, topo):
    dtp = f.bundle(topo, [f.file_raw_data_package(topo)])
    session.commit()
    src = copy_at(session, topo.source_buffer, dtp=dtp)
    assert matrix.find_deletable_data_transfer_packages_at_source_buffers(session) == []
    assert "no COMPLETED" in blocked_reasons(session, d.RULE_DTP_SOURCE_BUFFER, src)[0]


# --------------------------------------------------------------------------- DTP at LTA-site buffer


def test_lta_buffer_transfer_package_kept_until_every_other_lta_site_has_it(session, topo2):
    pkg = f.file_raw_data_package(topo2)
    dtp = f.bundle(topo2, [pkg])
    f.transfer(topo2, dtp, to_site="cologne")
    session.commit()
    cologne = copy_at(session, topo2.buffer("cologne"), dtp=dtp)
    assert matrix.find_deletable_data_transfer_packages_at_lta_buffers(session) == []
    assert "every other" in blocked_reasons(session, d.RULE_DTP_LTA_BUFFER, cologne)[0]

    # Transferred but not unpacked at the US: still kept.
    secondary = f.transfer(
        topo2,
        dtp,
        to_site="us",
        origin=topo2.buffer("cologne"),
        route_kind="secondary",
        unpack_status=Status.IN_PROGRESS,
    )
    session.commit()
    us = copy_at(session, topo2.buffer("us"), dtp=dtp)
    # The US copy is not unpacked yet; Cologne's waits for that unpack.
    assert matrix.find_deletable_data_transfer_packages_at_lta_buffers(session) == []
    assert blocked_reasons(session, d.RULE_DTP_LTA_BUFFER, us) == [
        "not yet unpacked at this buffer"
    ]

    secondary.unpack_status = Status.COMPLETED
    session.commit()
    assert copy_ids(matrix.find_deletable_data_transfer_packages_at_lta_buffers(session)) == {
        cologne.id,
        us.id,
    }
    assert matrix.can_delete_data_transfer_package_from_lta_buffer(session, dtp, topo2.buffer("us"))


def test_lta_buffer_transfer_package_kept_until_unpacked_here(session, topo):
    pkg = f.file_raw_data_package(topo)
    dtp = f.bundle(topo, [pkg])
    f.transfer(topo, dtp, to_site="cologne", unpack_status=Status.IN_PROGRESS)
    session.commit()
    here = copy_at(session, topo.buffer("cologne"), dtp=dtp)
    assert matrix.find_deletable_data_transfer_packages_at_lta_buffers(session) == []
    assert blocked_reasons(session, d.RULE_DTP_LTA_BUFFER, here) == [
        "not yet unpacked at this buffer"
    ]


def test_lta_buffer_transfer_package_ignores_inactive_lta_sites(session, topo2):
    pkg = f.file_raw_data_package(topo2)
    dtp = f.bundle(topo2, [pkg])
    f.transfer(topo2, dtp, to_site="cologne")
    topo2.lta("us").active = False
    session.commit()
    assert copy_ids(matrix.find_deletable_data_transfer_packages_at_lta_buffers(session)) == {
        copy_at(session, topo2.buffer("cologne"), dtp=dtp).id
    }


# ------------------------------------------------------------------------ RawDataFile stage 1 + 2


def test_mark_raw_data_files_for_deletion_is_one_bulk_update_with_audit(session, topo):
    pkg, _ = f.archived_package(topo, n_files=3)
    other = f.file_raw_data_package(topo, n_files=2)
    session.commit()
    marked = mark_raw_data_files_for_deletion(session, [pkg.id], run_id="run-1")
    session.commit()
    assert len(marked) == 3
    statuses = {
        c.raw_data_file_id: c.status
        for c in session.scalars(
            select(PhysicalCopy).where(PhysicalCopy.data_location_id == topo.source.id)
        )
    }
    assert [statuses[r.id] for r in pkg.raw_data_files] == [S.DELETION_POSSIBLE] * 3
    assert [statuses[r.id] for r in other.raw_data_files] == [S.PRESENT] * 2
    audits = session.scalars(
        select(AuditLog).where(AuditLog.reason == d.RULE_MARK_DELETION_POSSIBLE)
    ).all()
    assert sorted(a.entity_id for a in audits) == sorted(marked)
    assert {a.run_id for a in audits} == {"run-1"}


def _marked_files(session, topo, *, minutes_ago: float):
    pkg, _ = f.archived_package(topo, n_files=2)
    session.commit()
    mark_raw_data_files_for_deletion(session, [pkg.id], now=f.minutes_ago(minutes_ago))
    session.commit()
    return pkg


def test_deletion_possible_files_wait_for_retention_period(session, topo):
    _marked_files(session, topo, minutes_ago=10)
    session.commit()
    assert matrix.process_deletion_possible_raw_data_files(session) == []
    blocked = d.explain_blocked(session, d.RULE_RDF_DELETION_POSSIBLE)
    assert len(blocked) == 2
    assert "retention period not over" in blocked[0].reason
    later = d.rule_context(session, now=utcnow() + timedelta(days=31))
    assert len(matrix.process_deletion_possible_raw_data_files(session, ctx=later)) == 2


def test_location_retention_override_applies(session, topo):
    _marked_files(session, topo, minutes_ago=10)
    session.get(DataLocation, topo.source.id).retention_period_minutes = 5
    session.commit()
    rows = matrix.process_deletion_possible_raw_data_files(session)
    assert len(rows) == 2
    assert {r.rule for r in rows} == {d.RULE_RDF_DELETION_POSSIBLE}


def test_deletion_possible_files_deleted_at_once_under_critical_pressure(session, topo):
    _marked_files(session, topo, minutes_ago=1)
    record_disk_usage(session, topo.source, used_bytes=80, total_bytes=100)  # WARNING
    session.commit()
    assert matrix.process_deletion_possible_raw_data_files(session) == []
    record_disk_usage(session, topo.source, used_bytes=90, total_bytes=100)  # CRITICAL
    session.commit()
    assert len(matrix.process_deletion_possible_raw_data_files(session)) == 2
    record_disk_usage(session, topo.source, used_bytes=50, total_bytes=100)  # pressure gone
    session.commit()
    assert matrix.process_deletion_possible_raw_data_files(session) == []


def test_present_source_files_never_deleted_by_stage_two(session, topo):
    f.archived_package(topo)
    record_disk_usage(session, topo.source, used_bytes=99, total_bytes=100)
    session.commit()
    later = d.rule_context(session, now=utcnow() + timedelta(days=365))
    assert matrix.process_deletion_possible_raw_data_files(session, ctx=later) == []


# --------------------------------------------------------------------------- PROCESSING


def test_processing_files_kept_while_active_staging_job_uses_them(session, topo):
    pkg, _ = f.archived_package(topo)
    job = f.stage(topo, [pkg], staged=False)
    session.commit()
    assert matrix.find_deletable_processing_raw_data_files(session) == []
    blocked = d.explain_blocked(session, d.RULE_RDF_PROCESSING)
    assert len(blocked) == 2
    assert "active StagingJob" in blocked[0].reason
    job.active = False
    session.commit()
    rows = matrix.find_deletable_processing_raw_data_files(session)
    assert len(rows) == 2
    assert {r.data_location_id for r in rows} == {topo.processing.id}


def test_processing_files_kept_by_an_active_job_past_its_retention(session, topo):
    pkg, _ = f.archived_package(topo)
    job = f.stage(topo, [pkg], staged=False, retention_minutes=60, created_at=f.minutes_ago(120))
    session.commit()
    assert matrix.find_deletable_processing_raw_data_files(session) == []
    job.active = False
    session.commit()
    assert len(matrix.find_deletable_processing_raw_data_files(session)) == 2


def test_processing_files_kept_by_any_one_live_job(session, topo):
    pkg, _ = f.archived_package(topo)
    f.stage(topo, [pkg], staged=False, active=False)
    f.stage(topo, [pkg], staged=False, retention_minutes=600, created_at=f.minutes_ago(5))
    session.commit()
    assert matrix.find_deletable_processing_raw_data_files(session) == []


def test_staged_files_and_package_copy_rule(session, topo):
    pkg, _ = f.archived_package(topo)
    job = f.stage(topo, [pkg], staged=True)
    session.commit()
    assert matrix.find_deletable_staged_raw_data_files_by_location(session) == []
    assert matrix.find_deletable_processing_raw_data_files(session) == []  # staged rule owns them
    assert d.find_closable_staged_raw_data_packages(session) == []
    job.active = False
    session.commit()
    rows = matrix.find_deletable_staged_raw_data_files_by_location(session)
    assert len(rows) == 2
    assert {r.rule for r in rows} == {d.RULE_RDF_STAGED}
    # The STAGED package copy closes only after its files are gone.
    assert d.find_closable_staged_raw_data_packages(session) == []
    for c in session.scalars(
        select(PhysicalCopy).where(PhysicalCopy.id.in_([r.copy_id for r in rows]))
    ):
        c.status = S.DELETED
    session.commit()
    closable = d.find_closable_staged_raw_data_packages(session)
    assert [c.entity_id for c in closable] == [pkg.id]


# --------------------------------------------------------------------------- LTA never


def test_no_finder_ever_returns_a_long_term_archive_copy(session, topo2):
    for _ in range(2):
        pkg, dtp = f.archived_package(topo2)
        f.transfer(topo2, dtp, to_site="us", origin=topo2.buffer("cologne"), route_kind="secondary")
        f.archive(topo2, pkg, site="us")
        f.stage(topo2, [pkg], active=False)
    lta_ids = {topo2.lta("cologne").id, topo2.lta("us").id}
    # Even LTA copies in states the rules look at elsewhere: DELETION_POSSIBLE, failed, stale.
    lta_copies = session.scalars(
        select(PhysicalCopy).where(PhysicalCopy.data_location_id.in_(lta_ids))
    ).all()
    lta_copies[0].status = S.DELETION_POSSIBLE
    lta_copies[1].status = S.DELETION_FAILED
    lta_copies[2].status = S.DELETION_SCHEDULED
    lta_copies[2].claimed_at = f.minutes_ago(10_000)
    for loc in lta_ids:
        record_disk_usage(session, session.get(DataLocation, loc), used_bytes=99, total_bytes=100)
    session.commit()
    ctx = d.rule_context(session, now=utcnow() + timedelta(days=3650))
    everything = [r for rule in d.RULE_ORDER for r in d.find_deletable(session, rule, ctx=ctx)]
    everything += d.find_closable_staged_raw_data_packages(session, ctx=ctx)
    assert everything, "the scenario must have deletable copies elsewhere"
    assert not {r.data_location_id for r in everything} & lta_ids
    for loc in lta_ids:
        for rule in d.RULE_ORDER:
            assert d.find_deletable(session, rule, location=loc, ctx=ctx) == []
    types = {session.get(DataLocation, r.data_location_id).location_type for r in everything}
    assert LocationType.LONG_TERM_ARCHIVE not in types


# --------------------------------------------------------------------------- statement building


def test_planning_again_builds_no_new_named_alias(session, topo2, monkeypatch):
    """The rules' named aliases are built once per process (``named_alias``): making every
    column proxy of a ``physical_copy`` alias again, a dozen per statement, was a tenth of an
    end-to-end run's CPU. The SQL is the same: an alias renders as its name."""
    import sqlalchemy as sa

    from ccat_dagster.lifecycle.deletion.plan import plan_deletions

    f.archived_package(topo2)
    session.commit()

    def outcome():
        plan = plan_deletions(session)
        return plan.deletable, plan.blocked, plan.staged_packages_to_close

    first = outcome()  # builds the aliases
    assert first[0] or first[1]
    built: list[str | None] = []
    real_alias = sa.Table.alias

    def counted(table, name=None, flat=False):
        built.append(name)
        return real_alias(table, name=name, flat=flat)

    monkeypatch.setattr(sa.Table, "alias", counted)
    assert outcome() == first
    assert built == []
