"""Claims: a copy belongs to one cleanup run at a time, concurrent cycles delete each copy
exactly once, stale claims are taken over, every transition is audited."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier
from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster.lifecycle.common.policy import Policy
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.claims import (
    ReleasedClaims,
    claim_for_deletion,
    mark_deleted,
    mark_failed,
    mark_in_progress,
    release_claims,
    release_claims_of_dead_runs,
)
from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle
from ccat_dagster.lifecycle.deletion.executor import mark_raw_data_files_for_deletion
from ccat_dagster_tests import deletion_rules as matrix
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import AuditLog, PhysicalCopy, PhysicalCopyStatus, utcnow
from ccat_ops_db.session import make_engine

S = PhysicalCopyStatus


def statuses(session, ids):
    session.expire_all()
    return {
        c.id: c.status
        for c in session.scalars(select(PhysicalCopy).where(PhysicalCopy.id.in_(ids)))
    }


def test_claim_moves_to_scheduled_and_second_claim_gets_nothing(session, topo):
    for _ in range(3):
        f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    first = claim_for_deletion(session, rows, run_id="a", ctx=ctx)
    session.commit()
    second = claim_for_deletion(session, rows, run_id="b", ctx=ctx)
    session.commit()
    assert len(first) == 3
    assert second == []
    copies = session.scalars(
        select(PhysicalCopy).where(PhysicalCopy.id.in_([r.copy_id for r in rows]))
    )
    for c in copies:
        assert (c.status, c.claimed_by) == (S.DELETION_SCHEDULED, "a")
        assert c.claimed_at is not None
    audits = session.scalars(
        select(AuditLog).where(AuditLog.new_status == S.DELETION_SCHEDULED.value)
    ).all()
    assert len(audits) == 3
    assert {(a.old_status, a.reason, a.run_id) for a in audits} == {
        ("PRESENT", d.RULE_RDP_SOURCE_BUFFER, "a")
    }


def test_claim_skips_copies_that_changed_since_they_were_found(session, topo):
    f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    session.get(PhysicalCopy, rows[0].copy_id).status = S.DELETED
    session.commit()
    assert claim_for_deletion(session, rows, run_id="a", ctx=ctx) == []


def test_transitions_only_for_the_claiming_run(session, topo):
    f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    claimed = claim_for_deletion(session, rows, run_id="a", ctx=ctx)
    assert mark_in_progress(session, claimed, run_id="b") == []
    assert mark_in_progress(session, claimed, run_id="a") == claimed
    assert mark_deleted(session, claimed, run_id="b") == []
    assert mark_deleted(session, claimed, run_id="a") == claimed
    session.commit()
    assert statuses(session, [rows[0].copy_id]) == {rows[0].copy_id: S.DELETED}


def test_failed_deletion_counts_retries_until_permanent(session, topo):
    f.archived_package(topo)
    session.commit()
    policy = Policy(max_retries=2)
    results = []
    for attempt in range(3):
        ctx = d.rule_context(session, policy=policy)
        rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
        if not rows:
            break
        claimed = mark_in_progress(
            session,
            claim_for_deletion(session, rows, run_id=f"r{attempt}", ctx=ctx),
            run_id=f"r{attempt}",
        )
        results += mark_failed(
            session, [(claimed[0], "disk on fire")], run_id=f"r{attempt}", policy=policy
        )
        session.commit()
    assert [(count, permanent) for _, count, permanent in results] == [(1, False), (2, True)]
    copy = session.get(PhysicalCopy, results[0][0].copy_id)
    assert copy.status == S.DELETION_FAILED
    assert copy.failure_reason == "disk on fire"


def test_released_claim_returns_to_present(session, topo):
    f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    claimed = claim_for_deletion(session, rows, run_id="a", ctx=ctx)
    release_claims(session, claimed, run_id="a", to_status=S.PRESENT, reason="lta gone")
    session.commit()
    copy = session.get(PhysicalCopy, rows[0].copy_id)
    assert (copy.status, copy.claimed_by, copy.failure_reason) == (S.PRESENT, None, "lta gone")


def test_stale_claim_is_claimable_again(session, topo):
    f.archived_package(topo)
    session.commit()
    ctx = d.rule_context(session)
    rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    claim_for_deletion(session, rows, run_id="crashed", ctx=ctx)
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []
    later = d.rule_context(session, now=utcnow() + d.DEFAULT_STALE_CLAIM_AFTER + timedelta(1))
    stale = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=later)
    assert [r.status for r in stale] == [S.DELETION_SCHEDULED]
    assert claim_for_deletion(session, stale, run_id="next", ctx=later) == stale


def test_postgres_claim_skips_rows_locked_by_another_run(fresh_postgres_url, tmp_path):
    """FOR UPDATE SKIP LOCKED is the PostgreSQL path (SQLite serializes writers), so this test
    runs on PostgreSQL only."""
    engine = make_engine(fresh_postgres_url)
    session = Session(engine, expire_on_commit=False)
    topo = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    session.commit()
    for _ in range(4):
        f.archived_package(topo)
    session.commit()
    with Session(engine) as a, Session(engine) as b:
        ctx = d.rule_context(a)
        rows = matrix.find_deletable_raw_data_packages_at_source_buffers(a, ctx=ctx)
        got_a = claim_for_deletion(a, rows[:2], run_id="a", ctx=ctx)  # not committed: locked
        got_b = claim_for_deletion(b, rows, run_id="b", ctx=ctx)  # must not block or steal
        b.commit()
        a.commit()
    assert {r.copy_id for r in got_a} == {r.copy_id for r in rows[:2]}
    assert {r.copy_id for r in got_b} == {r.copy_id for r in rows[2:]}
    session.close()
    engine.dispose()


def test_concurrent_cleanup_cycles_delete_each_copy_exactly_once(engine, session, topo):
    for _ in range(12):
        f.archived_package(topo, n_files=1)
    # Critical pressure at the SOURCE: the raw files go in the same cycle, so both runs race
    # for every kind of copy.
    record_disk_usage(session, topo.source, used_bytes=99, total_bytes=100)
    session.commit()
    verify = make_storage_lta_verifier(f.local_storage_for)
    barrier = threading.Barrier(2)
    reports, errors = {}, []

    def worker(run_id: str) -> None:
        try:
            with Session(engine, expire_on_commit=False) as s:
                barrier.wait()
                reports[run_id] = run_cleanup_cycle(
                    s,
                    storage_for=f.local_storage_for,
                    verify_lta_copy=verify,
                    run_id=run_id,
                    batch_size=2,
                )
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    session.expire_all()
    deleted_rows = session.scalars(
        select(PhysicalCopy.id).where(PhysicalCopy.status == S.DELETED)
    ).all()
    # 12 packages x (source RDP, Cologne RDP, source DTP, Cologne DTP, 1 raw file) = 60 copies.
    assert len(deleted_rows) == 60
    per_copy = Counter(
        session.scalars(
            select(AuditLog.entity_id).where(
                AuditLog.entity_type == "physical_copy", AuditLog.new_status == S.DELETED.value
            )
        ).all()
    )
    assert set(per_copy) == set(deleted_rows)
    assert set(per_copy.values()) == {1}
    assert sum(r.deleted for r in reports.values()) == 60
    assert not set(reports["run-a"].deleted_copy_ids) & set(reports["run-b"].deleted_copy_ids)
    marked = session.scalar(
        select(func.count())
        .select_from(AuditLog)
        .where(AuditLog.new_status == S.DELETION_POSSIBLE.value)
    )
    assert marked == 12
    assert not any(f.object_path(topo.source_buffer, "packages").glob("*.tar"))


def test_claims_of_a_dead_run_are_released_at_once(session, topo):
    """Scheduled copies go back to their pre-claim status, IN_PROGRESS ones stay claimed but are
    claimable at once (never PRESENT again: the object may be gone); other runs keep theirs."""
    pkg, _ = f.archived_package(topo, n_files=2)
    other, _ = f.archived_package(topo, n_files=1)
    mark_raw_data_files_for_deletion(session, [pkg.id], now=f.minutes_ago(60 * 24 * 31))
    session.commit()
    ctx = d.rule_context(session)
    package_rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
    mine = [r for r in package_rows if r.entity_id == pkg.id]
    theirs = [r for r in package_rows if r.entity_id == other.id]
    files = matrix.process_deletion_possible_raw_data_files(session, ctx=ctx)
    assert len(files) == 2
    assert mine
    assert theirs
    claim_for_deletion(session, mine + files, run_id="dead", ctx=ctx)
    claim_for_deletion(session, theirs, run_id="alive", ctx=ctx)
    session.commit()
    in_progress = mark_in_progress(session, files[:1], run_id="dead")
    session.commit()
    assert matrix.find_deletable_raw_data_packages_at_source_buffers(session) == []

    released = release_claims_of_dead_runs(session, ["dead"], reason="run dead: process gone")
    session.commit()

    assert (released.returned, released.abandoned) == (2, 1)
    session.expire_all()
    pkg_copy = session.get(PhysicalCopy, mine[0].copy_id)
    assert (pkg_copy.status, pkg_copy.claimed_by, pkg_copy.claimed_at) == (S.PRESENT, None, None)
    scheduled_file = session.get(PhysicalCopy, files[1].copy_id)
    assert (scheduled_file.status, scheduled_file.claimed_by) == (S.DELETION_POSSIBLE, None)
    abandoned = session.get(PhysicalCopy, in_progress[0].copy_id)
    assert (abandoned.status, abandoned.claimed_by) == (S.DELETION_IN_PROGRESS, None)
    assert session.get(PhysicalCopy, theirs[0].copy_id).claimed_by == "alive"
    # claimable again now, not after the stale timeout
    again = matrix.process_deletion_possible_raw_data_files(session)
    assert {r.copy_id for r in again} >= {abandoned.id}
    assert claim_for_deletion(session, again, run_id="next", ctx=d.rule_context(session))
    audits = session.scalars(
        select(AuditLog).where(AuditLog.run_id == "dead", AuditLog.reason.like("claim %"))
    ).all()
    assert sorted((a.old_status, a.new_status) for a in audits) == sorted(
        [
            ("DELETION_SCHEDULED", "PRESENT"),
            ("DELETION_SCHEDULED", "DELETION_POSSIBLE"),
            ("DELETION_IN_PROGRESS", "DELETION_IN_PROGRESS"),
        ]
    )
    assert release_claims_of_dead_runs(session, ["dead"], reason="again") == ReleasedClaims()
