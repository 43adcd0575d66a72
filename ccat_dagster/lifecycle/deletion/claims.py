"""Claiming copies for deletion so two cleanup runs never delete or count the same copy twice.

States (docs/lifecycle.md: physical copy status): PRESENT (or DELETION_POSSIBLE for raw-file copies)
-> DELETION_SCHEDULED -> DELETION_IN_PROGRESS -> DELETED, or DELETION_FAILED, retried by later
cycles until the policy's ``max_retries`` and then left DELETION_FAILED and reported. A claim sets
``claimed_by`` (the run id) and ``claimed_at``. On PostgreSQL the claim locks candidate rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` and then updates them; on SQLite (which serializes writers) it
is one conditional ``UPDATE ... WHERE id IN (...) AND <still claimable> RETURNING id``. Either way
only the returned ids belong to the claimer. A claim older than the stale timeout (a crashed run) is
claimable again; so is, at once, a claim whose run is known dead (``release_claims_of_dead_runs``).
Every status change is audited in bulk with the rule name as reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.common.policy import Policy
from ccat_dagster.lifecycle.deletion.rules import (
    DeletableCopy,
    RuleContext,
    dl_t,
    pc_t,
    retry_or_stale,
)
from ccat_ops_db.audit import audit_many
from ccat_ops_db.models import CopyType, LocationType, PhysicalCopyStatus, utcnow

S = PhysicalCopyStatus
_CLAIMED = (S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS)


def _claimable(ctx: RuleContext) -> sa.ColumnElement[bool]:
    return sa.or_(pc_t.c.status.in_([S.PRESENT, S.DELETION_POSSIBLE]), retry_or_stale(pc_t, ctx))


def _audit_rows(
    copies: Sequence[DeletableCopy],
    *,
    old: Any,
    new: PhysicalCopyStatus,
    run_id: str,
    evidence: dict[int, dict[str, Any]] | None = None,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "entity_type": "physical_copy",
            "entity_id": c.copy_id,
            "data_location_id": c.data_location_id,
            "old_status": old if old is not None else c.status,
            "new_status": new,
            "reason": reason or c.rule,
            "run_id": run_id,
            "evidence": {"rule": c.rule, "key": c.key, **((evidence or {}).get(c.copy_id) or {})},
        }
        for c in copies
    ]


def claim_for_deletion(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    run_id: str,
    ctx: RuleContext,
) -> list[DeletableCopy]:
    """Claim ``copies`` for run ``run_id``: DELETION_SCHEDULED, claimed_by/claimed_at set.

    Returns only the copies this call claimed (others were taken by a concurrent run or changed
    since they were found). The caller commits, which makes the claim visible to other runs.
    """
    by_id = {c.copy_id: c for c in copies}
    claimed: list[DeletableCopy] = []
    postgres = session.get_bind().dialect.name == "postgresql"
    for chunk in chunks(list(by_id)):
        ids: Sequence[int] = chunk
        if postgres:
            ids = session.scalars(
                sa.select(pc_t.c.id)
                .where(pc_t.c.id.in_(chunk), _claimable(ctx))
                .with_for_update(skip_locked=True)
            ).all()
            if not ids:
                continue
        got = session.scalars(
            sa.update(pc_t)
            .where(pc_t.c.id.in_(ids), _claimable(ctx))
            .values(status=S.DELETION_SCHEDULED, claimed_by=run_id, claimed_at=ctx.now)
            .returning(pc_t.c.id)
        ).all()
        claimed.extend(by_id[i] for i in got)
    audit_many(
        session,
        _audit_rows(claimed, old=None, new=S.DELETION_SCHEDULED, run_id=run_id),
    )
    return sorted(claimed, key=lambda c: c.copy_id)


def _move(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    run_id: str,
    old: PhysicalCopyStatus,
    new: PhysicalCopyStatus,
    values: dict[str, Any],
    evidence: dict[int, dict[str, Any]] | None = None,
) -> list[DeletableCopy]:
    by_id = {c.copy_id: c for c in copies}
    moved: list[DeletableCopy] = []
    for chunk in chunks(list(by_id)):
        got = session.scalars(
            sa.update(pc_t)
            .where(pc_t.c.id.in_(chunk), pc_t.c.claimed_by == run_id, pc_t.c.status == old)
            .values(status=new, **values)
            .returning(pc_t.c.id)
        ).all()
        moved.extend(by_id[i] for i in got)
    audit_many(session, _audit_rows(moved, old=old, new=new, run_id=run_id, evidence=evidence))
    return moved


def mark_in_progress(
    session: Session, copies: Sequence[DeletableCopy], *, run_id: str
) -> list[DeletableCopy]:
    """DELETION_SCHEDULED -> DELETION_IN_PROGRESS for copies claimed by ``run_id``."""
    return _move(
        session,
        copies,
        run_id=run_id,
        old=S.DELETION_SCHEDULED,
        new=S.DELETION_IN_PROGRESS,
        values={"claimed_at": utcnow()},
    )


def mark_deleted(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    run_id: str,
    evidence: dict[int, dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[DeletableCopy]:
    """DELETION_IN_PROGRESS -> DELETED (deleted_at set, failure cleared); ``evidence`` per copy
    id goes into the audit row (e.g. the live LTA verification)."""
    return _move(
        session,
        copies,
        run_id=run_id,
        old=S.DELETION_IN_PROGRESS,
        new=S.DELETED,
        values={"deleted_at": now or utcnow(), "failure_reason": None},
        evidence=evidence,
    )


def mark_failed(
    session: Session,
    failures: Sequence[tuple[DeletableCopy, str]],
    *,
    run_id: str,
    policy: Policy,
) -> list[tuple[DeletableCopy, int, bool]]:
    """DELETION_IN_PROGRESS -> DELETION_FAILED with retry_count + 1 and the reason (one
    executemany). Returns (copy, retry_count, permanent): permanent once retries are used up."""
    if not failures:
        return []
    params = [{"b_id": c.copy_id, "b_reason": reason[:4000]} for c, reason in failures]
    session.execute(
        sa.update(pc_t)
        .where(
            pc_t.c.id == sa.bindparam("b_id"),
            pc_t.c.claimed_by == run_id,
            pc_t.c.status == S.DELETION_IN_PROGRESS,
        )
        .values(
            status=S.DELETION_FAILED,
            failure_reason=sa.bindparam("b_reason"),
            retry_count=pc_t.c.retry_count + 1,
        )
        .execution_options(synchronize_session=False),
        params,
    )
    ids = [c.copy_id for c, _ in failures]
    counts: dict[int, int] = {}
    for chunk in chunks(ids):
        counts.update(
            session.execute(
                sa.select(pc_t.c.id, pc_t.c.retry_count).where(
                    pc_t.c.id.in_(chunk), pc_t.c.status == S.DELETION_FAILED
                )
            ).all()
        )
    result = [
        (c, counts[c.copy_id], counts[c.copy_id] >= policy.max_retries)
        for c, _ in failures
        if c.copy_id in counts
    ]
    audit_many(
        session,
        [
            {
                "entity_type": "physical_copy",
                "entity_id": c.copy_id,
                "data_location_id": c.data_location_id,
                "old_status": S.DELETION_IN_PROGRESS,
                "new_status": S.DELETION_FAILED,
                "reason": c.rule,
                "run_id": run_id,
                "evidence": {
                    "level": "ERROR",
                    "error": reason,
                    "retry_count": count,
                    "permanent": permanent,
                    "key": c.key,
                },
            }
            for (c, reason), (_, count, permanent) in zip(failures, result, strict=False)
        ],
    )
    return result


def status_before_claim(copy_type: CopyType, location_type: LocationType) -> PhysicalCopyStatus:
    """Where a released claim goes back to: raw-file copies at SOURCE/BUFFER were
    DELETION_POSSIBLE (stage 2 of the two-stage deletion); every other copy was PRESENT."""
    if copy_type == CopyType.RAW_DATA_FILE and location_type in (
        LocationType.SOURCE,
        LocationType.BUFFER,
    ):
        return S.DELETION_POSSIBLE
    return S.PRESENT


def release_claims(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    run_id: str,
    to_status: PhysicalCopyStatus,
    reason: str,
    evidence: dict[int, dict[str, Any]] | None = None,
) -> list[DeletableCopy]:
    """Give claimed copies back (nothing was deleted): status ``to_status``, claim cleared,
    ``failure_reason`` set to ``reason``. Used when a live LTA re-verification fails."""
    by_id = {c.copy_id: c for c in copies}
    released: list[DeletableCopy] = []
    for chunk in chunks(list(by_id)):
        got = session.scalars(
            sa.update(pc_t)
            .where(
                pc_t.c.id.in_(chunk),
                pc_t.c.claimed_by == run_id,
                pc_t.c.status.in_([S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS]),
            )
            .values(status=to_status, claimed_by=None, claimed_at=None, failure_reason=reason)
            .returning(pc_t.c.id)
        ).all()
        released.extend(by_id[i] for i in got)
    audit_many(
        session,
        [
            {
                "entity_type": "physical_copy",
                "entity_id": c.copy_id,
                "data_location_id": c.data_location_id,
                "old_status": S.DELETION_SCHEDULED,
                "new_status": to_status,
                "reason": f"{c.rule}: {reason}",
                "run_id": run_id,
                "evidence": (evidence or {}).get(c.copy_id),
            }
            for c in released
        ],
    )
    return released


@dataclass(frozen=True)
class ReleasedClaims:
    """What ``release_claims_of_dead_runs`` did: copies given back, and IN_PROGRESS copies left
    claimed but claimable again at once."""

    returned: int = 0
    abandoned: int = 0

    def __bool__(self) -> bool:
        return bool(self.returned or self.abandoned)


def give_back(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    run_id: str,
    location_type: LocationType,
    reason: str,
    evidence: dict[int, dict[str, Any]] | None = None,
) -> list[DeletableCopy]:
    """:func:`release_claims` of copies at one location (or locations of one type), each back to
    the status it had before its claim (:func:`status_before_claim`)."""
    released: list[DeletableCopy] = []
    for copy_type in sorted({c.copy_type for c in copies}, key=lambda t: t.value):
        released += release_claims(
            session,
            [c for c in copies if c.copy_type == copy_type],
            run_id=run_id,
            to_status=status_before_claim(copy_type, location_type),
            reason=reason,
            evidence=evidence,
        )
    return released


def release_claims_of_dead_runs(
    session: Session, run_ids: Sequence[str], *, reason: str
) -> ReleasedClaims:
    """Release at once the deletion claims held by runs known to be dead (no process any more),
    instead of waiting for the stale-claim timeout.

    A DELETION_SCHEDULED copy was not touched in storage yet: it goes back to its pre-claim
    status (``status_before_claim``). A DELETION_IN_PROGRESS copy may already be gone from
    storage, so it never becomes PRESENT again (the safety checks would count it as a live
    copy): it stays DELETION_IN_PROGRESS with ``claimed_by`` NULL, which the rules treat as an
    abandoned claim, and the next cleanup re-verifies and finishes it. Both audited with the dead
    run's id. The caller commits.
    """
    run_ids = sorted(set(run_ids))
    if not run_ids:
        return ReleasedClaims()
    rows = []
    for chunk in chunks(run_ids):
        rows += session.execute(
            sa.select(
                pc_t.c.id,
                pc_t.c.type,
                pc_t.c.data_location_id,
                dl_t.c.location_type,
                pc_t.c.status,
                pc_t.c.claimed_by,
            )
            .join(dl_t, dl_t.c.id == pc_t.c.data_location_id)
            .where(pc_t.c.claimed_by.in_(chunk), pc_t.c.status.in_(_CLAIMED))
        ).all()
    by_id = {r.id: r for r in rows}
    targets: dict[tuple[PhysicalCopyStatus, PhysicalCopyStatus], list[int]] = {}
    for r in rows:
        new = (
            status_before_claim(r.type, r.location_type)
            if r.status == S.DELETION_SCHEDULED
            else S.DELETION_IN_PROGRESS
        )
        targets.setdefault((r.status, new), []).append(r.id)
    changed: list[tuple[int, PhysicalCopyStatus, PhysicalCopyStatus]] = []
    for (old, new), ids in targets.items():
        values: dict[str, Any] = {"claimed_by": None}
        if old == S.DELETION_SCHEDULED:
            values.update(status=new, claimed_at=None)
        for chunk in chunks(ids):
            got = session.scalars(
                sa.update(pc_t)
                .where(pc_t.c.id.in_(chunk), pc_t.c.status == old, pc_t.c.claimed_by.in_(run_ids))
                .values(**values)
                .returning(pc_t.c.id)
            ).all()
            changed += [(i, old, new) for i in got]
    audit_many(
        session,
        [
            {
                "entity_type": "physical_copy",
                "entity_id": copy_id,
                "data_location_id": by_id[copy_id].data_location_id,
                "old_status": old,
                "new_status": new,
                "reason": (
                    f"claim released: {reason}"
                    if old == S.DELETION_SCHEDULED
                    else f"claim abandoned, claimable again at once: {reason}"
                ),
                "run_id": by_id[copy_id].claimed_by,
                "evidence": {"dead_run": by_id[copy_id].claimed_by},
            }
            for copy_id, old, new in changed
        ],
    )
    return ReleasedClaims(
        returned=sum(1 for _, old, _ in changed if old == S.DELETION_SCHEDULED),
        abandoned=sum(1 for _, old, _ in changed if old == S.DELETION_IN_PROGRESS),
    )


def find_permanent_deletion_failures(
    session: Session,
    *,
    policy: Policy,
    location_id: int | None = None,
) -> list[tuple[int, int, CopyType, int, str | None]]:
    """Copies whose deletion failed ``max_retries`` times: (copy id, location id, type,
    retry_count, failure_reason). They stay DELETION_FAILED until an operator acts."""
    stmt = sa.select(
        pc_t.c.id, pc_t.c.data_location_id, pc_t.c.type, pc_t.c.retry_count, pc_t.c.failure_reason
    ).where(pc_t.c.status == S.DELETION_FAILED, pc_t.c.retry_count >= policy.max_retries)
    if location_id is not None:
        stmt = stmt.where(pc_t.c.data_location_id == location_id)
    return [tuple(r) for r in session.execute(stmt.order_by(pc_t.c.id))]
