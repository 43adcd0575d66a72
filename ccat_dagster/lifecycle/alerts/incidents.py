"""The durable state of the incidents (``alert_incident``): opened and updated from the conditions
of each evaluation, resolved when their condition is gone, and claimed for sending.

Every step is one set-based statement, so two processes evaluating the same site (two daemons, a
daemon and ``ccat run-until-idle``) agree: the upsert keeps one row per incident key, and a
claim is a conditional ``UPDATE ... RETURNING`` that only one of them wins (PostgreSQL re-checks
the condition on the row the other one updated; SQLite holds its write lock). A row is due for
an "open" message when it was never announced or its last message is older than the policy's
``alert_repeat_minutes``, and for a "resolved" message once its condition has been gone for
``alert_resolved_after_minutes``, if it had been announced. A condition back before that
continues the same incident (nothing is sent); one back after it is a new announcement. A claim
not given back within ``CLAIM_LEASE`` (a sender that died) is taken over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts.model import AlertKind, Condition
from ccat_ops_db.models import AlertIncident, table_of, utcnow
from ccat_ops_db.policy import Policy
from ccat_ops_db.session import dialect_insert

#: a claim older than this belongs to a sender that died; another process sends instead
CLAIM_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Timing:
    """How often an open incident is repeated, and how long a resolution must hold."""

    repeat: timedelta
    settle: timedelta

    @classmethod
    def of(cls, policy: Policy) -> Timing:
        return cls(
            repeat=timedelta(minutes=policy.alert_repeat_minutes),
            settle=timedelta(minutes=policy.alert_resolved_after_minutes),
        )


t = table_of(AlertIncident)


@dataclass(frozen=True)
class Sync:
    """What one evaluation changed: incident keys seen now and keys resolved by it."""

    open: list[str]
    resolved: list[str]


def upsert_conditions(
    session: Session, conditions: Sequence[Condition], *, now: datetime, timing: Timing
) -> None:
    """Open (or keep open, with the latest text) one incident per condition. An incident
    resolved for longer than ``timing.settle`` and seen again is reopened: announced again,
    ``since`` from now on; one resolved more recently just continues."""
    if not conditions:
        return
    rows = [
        {
            "key": c.key,
            "kind": c.kind.value,
            "site": c.site,
            "location": c.where,
            "summary": c.what,
            "first_action": c.first_action,
            "since": c.since or now,
            "last_seen_at": now,
            "notify_count": 0,
        }
        for c in {c.key: c for c in conditions}.values()
    ]
    stmt = dialect_insert(session, t).values(rows)
    new = stmt.excluded
    reopened = t.c.resolved_at <= now - timing.settle  # NULL (open): not reopened

    def when_reopened(value, kept):
        return sa.case((reopened, value), else_=kept)

    # every right-hand side reads the row as it was before this statement (both databases)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.key],
        set_={
            "site": new.site,
            "location": new.location,
            "summary": new.summary,
            "first_action": new.first_action,
            "last_seen_at": new.last_seen_at,
            "since": when_reopened(new.since, t.c.since),
            "notified_at": when_reopened(sa.null(), t.c.notified_at),
            "notify_count": when_reopened(0, t.c.notify_count),
            "resolved_notified_at": when_reopened(sa.null(), t.c.resolved_notified_at),
            "resolved_at": sa.null(),
        },
    )
    session.execute(stmt)


def resolve(session: Session, keys: Iterable[str], *, now: datetime) -> list[str]:
    """Resolve the open incidents among ``keys``; returns the keys it resolved."""
    keys = list(keys)
    if not keys:
        return []
    return list(
        session.scalars(
            sa.update(t)
            .where(t.c.key.in_(keys), t.c.resolved_at.is_(None))
            .values(resolved_at=now)
            .returning(t.c.key)
        )
    )


def sync_site(
    session: Session,
    site: str,
    conditions: Sequence[Condition],
    *,
    kinds: Sequence[AlertKind],
    timing: Timing,
    now: datetime | None = None,
) -> Sync:
    """Make the incidents of ``site`` of ``kinds`` what ``conditions`` says holds now: open the
    new ones, update the open ones, resolve the ones whose condition is gone. Caller commits."""
    now = now or utcnow()
    upsert_conditions(session, conditions, now=now, timing=timing)
    current = {c.key for c in conditions}
    still_open = session.scalars(
        sa.select(t.c.key).where(
            t.c.site == site,
            t.c.kind.in_([k.value for k in kinds]),
            t.c.resolved_at.is_(None),
        )
    ).all()
    gone = resolve(session, [k for k in still_open if k not in current], now=now)
    return Sync(open=sorted(current), resolved=gone)


def open_incidents(session: Session, site: str, kind: AlertKind) -> list[AlertIncident]:
    return list(
        session.scalars(
            sa.select(AlertIncident).where(
                AlertIncident.site == site,
                AlertIncident.kind == kind.value,
                AlertIncident.resolved_at.is_(None),
            )
        )
    )


def claim_due(
    session: Session,
    site: str,
    *,
    claimer: str,
    timing: Timing,
    now: datetime | None = None,
    keys: Sequence[str] | None = None,
) -> list[int]:
    """Claim the incidents of ``site`` (or only ``keys``) that are due for a message; returns
    the ids this caller won. Committed at once, so a twin process sees the claim."""
    now = now or utcnow()
    due_open = sa.and_(
        t.c.resolved_at.is_(None),
        sa.or_(t.c.notified_at.is_(None), t.c.notified_at <= now - timing.repeat),
    )
    due_resolved = sa.and_(
        t.c.resolved_at <= now - timing.settle,
        t.c.notified_at.is_not(None),
        t.c.resolved_notified_at.is_(None),
    )
    free = sa.or_(t.c.claimed_by.is_(None), t.c.claimed_at < now - CLAIM_LEASE)
    stmt = (
        sa.update(t)
        .where(t.c.site == site, free, sa.or_(due_open, due_resolved))
        .values(claimed_by=claimer, claimed_at=now)
        .returning(t.c.id)
    )
    if keys is not None:
        stmt = stmt.where(t.c.key.in_(list(keys)))
    ids = sorted(session.scalars(stmt))
    session.commit()
    return ids


def mark_delivered(
    session: Session, incident_id: int, *, claimer: str, resolved: bool, now: datetime
) -> None:
    """Record that the message (open, or ``resolved``) went out, and give the claim back."""
    values: dict = {"claimed_by": None, "claimed_at": None, "last_error": None}
    if resolved:
        values["resolved_notified_at"] = now
    else:
        values["notified_at"] = now
        values["notify_count"] = t.c.notify_count + 1
    session.execute(
        sa.update(t).where(t.c.id == incident_id, t.c.claimed_by == claimer).values(**values)
    )


def release(session: Session, incident_id: int, *, claimer: str, error: str) -> None:
    """Give the claim back after a failed delivery: the incident stays due and is sent by a
    later tick."""
    session.execute(
        sa.update(t)
        .where(t.c.id == incident_id, t.c.claimed_by == claimer)
        .values(claimed_by=None, claimed_at=None, last_error=error)
    )
