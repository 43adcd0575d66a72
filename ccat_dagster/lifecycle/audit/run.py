"""One audit run of one location: a slice scanned, the findings updated, the anomaly guard, the
confirmed findings acted on, the cursor moved on; and which locations are due.

Anomaly: when more than ``audit_anomaly_fraction`` of the slice's compared keys (objects listed
and audited plus expected copies not found) are dark or lost, the location itself looks wrong (a
wrong mount, a wrong bucket): nothing is recorded as a finding, nothing is acted on, the cursor
stays, and the cursor row keeps the reason, which is an alert (``lifecycle/alerts``) until a
slice of the location is normal again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.audit.findings import update_findings
from ccat_dagster.lifecycle.audit.lost import act_on_lost
from ccat_dagster.lifecycle.audit.quarantine import quarantine
from ccat_dagster.lifecycle.audit.scan import Slice, scan_slice
from ccat_dagster.lifecycle.common.locks import AUDIT, planner_lock, scope
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import PermanentStorageError
from ccat_ops_db.models import (
    AuditCursor,
    AuditFindingKind,
    DataLocation,
    LocationType,
    Site,
    as_utc,
    utcnow,
)
from ccat_ops_db.policy import Policy

#: the location types whose storage the audit compares with the catalogue (a PROCESSING
#: location is the scientists' working space)
AUDITED_TYPES = (LocationType.SOURCE, LocationType.BUFFER, LocationType.LONG_TERM_ARCHIVE)


@dataclass(frozen=True)
class AuditReport:
    location: str
    listed: int
    compared: int
    dark: int
    lost: int
    new: int
    closed: int
    confirmed: int
    acted: int
    quarantined: int
    cursor: str
    pass_number: int
    wrapped: bool
    anomaly: str | None
    errors: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.anomaly is None and self.dark == 0 and self.lost == 0 and not self.errors

    def summary(self) -> str:
        if self.anomaly:
            return self.anomaly
        return (
            f"{self.location}: {self.compared} object(s) compared, {self.dark} dark, "
            f"{self.lost} lost ({self.new} new, {self.confirmed} confirmed, {self.acted} "
            f"repaired, {self.quarantined} quarantined)"
        )


def cursor_of(session: Session, location: DataLocation) -> AuditCursor:
    """The location's cursor as the database holds it now (under the audit's lock; a copy this
    session loaded before may be a twin's stale one), created at the first audit."""
    cursor = session.get(AuditCursor, location.id, populate_existing=True)
    if cursor is None:
        cursor = AuditCursor(
            data_location_id=location.id,
            last_key="",
            pass_number=1,
            slice_objects=0,
            slice_dark=0,
            slice_lost=0,
        )
        session.add(cursor)
        session.flush()
    return cursor


def anomaly_of(location: DataLocation, scan: Slice, policy: Policy) -> str | None:
    bad = len(scan.dark) + len(scan.lost)
    if not scan.compared or bad / scan.compared <= policy.audit_anomaly_fraction:
        return None
    return (
        f"location {location.qualified_name} looks wrong: {bad} of {scan.compared} objects "
        f"dark or lost ({len(scan.dark)} dark, {len(scan.lost)} lost; more than "
        f"{policy.audit_anomaly_fraction:.1%}); wrong mount or bucket? nothing was acted on"
    )


def audit_location(
    session: Session,
    location: DataLocation,
    storage: Storage,
    *,
    now: datetime | None = None,
    run_id: str | None = None,
) -> AuditReport:
    """Audit the next slice of ``location`` and commit. Storage errors of the listing
    propagate before anything is recorded (``LocationUnavailableError``: the location does
    not answer, which proves nothing).

    Two audits of one location (the audit schedule's run and the ``consistency`` check that
    every run of a backfill executes) take turns on the location's planner lock: at once, both
    would create its cursor (one failing) and scan and act on the same slice. The lock is held
    for the slice's listing (on SQLite that is the database's write lock, one slice of at most
    ``audit_slice_objects`` keys)."""
    with planner_lock(session, scope(AUDIT, location.id), run_id=run_id):
        return _audit_slice(session, location, storage, now=now or utcnow(), run_id=run_id)


def _audit_slice(
    session: Session,
    location: DataLocation,
    storage: Storage,
    *,
    now: datetime,
    run_id: str | None,
) -> AuditReport:
    policy = get_policy(session)
    cursor = cursor_of(session, location)
    scan = scan_slice(
        session, location, storage, after=cursor.last_key, limit=policy.audit_slice_objects
    )
    cursor.slice_at = now
    cursor.slice_objects, cursor.slice_dark, cursor.slice_lost = (
        scan.compared,
        len(scan.dark),
        len(scan.lost),
    )
    anomaly = anomaly_of(location, scan, policy)
    if anomaly is not None:
        cursor.anomaly = anomaly
        cursor.anomaly_since = cursor.anomaly_since or now
        session.commit()
        return _report(location, scan, cursor, anomaly=anomaly)
    cursor.anomaly = cursor.anomaly_since = None
    update = update_findings(
        session,
        location,
        scan,
        now=now,
        confirm_after=timedelta(minutes=policy.audit_confirm_minutes),
    )
    acted = quarantined = 0
    errors: list[str] = []
    for finding in update.confirmed:
        try:
            if finding.kind == AuditFindingKind.LOST:
                acted += act_on_lost(session, finding, location, storage, now=now, run_id=run_id)
            else:
                quarantine(session, finding, storage, now=now, run_id=run_id)
                quarantined += 1
        except PermanentStorageError as exc:
            # stays OPEN: acted on by a later scan that still sees it
            errors.append(f"{finding.key}: {exc}")
    if not cursor.pass_started_at or cursor.last_key == "":
        cursor.pass_started_at = now
    cursor.last_key = scan.next_after
    if scan.wraps:
        cursor.pass_number += 1
        cursor.pass_finished_at = now
    session.commit()
    return _report(
        location,
        scan,
        cursor,
        new=len(update.new),
        closed=len(update.closed),
        confirmed=len(update.confirmed),
        acted=acted,
        quarantined=quarantined,
        errors=tuple(errors),
    )


def _report(
    location: DataLocation, scan: Slice, cursor: AuditCursor, *, anomaly=None, **counts
) -> AuditReport:
    values = {"new": 0, "closed": 0, "confirmed": 0, "acted": 0, "quarantined": 0, **counts}
    return AuditReport(
        location=location.qualified_name,
        listed=scan.listed,
        compared=scan.compared,
        dark=len(scan.dark),
        lost=len(scan.lost),
        cursor=cursor.last_key,
        pass_number=cursor.pass_number,
        wrapped=scan.wraps and anomaly is None,
        anomaly=anomaly,
        **values,
    )


def locations_due(
    session: Session, site: Site, *, now: datetime | None = None
) -> list[DataLocation]:
    """The site's active audited locations whose last slice is at least
    ``audit_interval_minutes`` old (or that were never audited), in priority order."""
    now = now or utcnow()
    interval = timedelta(minutes=get_policy(session).audit_interval_minutes)
    rows = session.execute(
        sa.select(DataLocation, AuditCursor.slice_at)
        .outerjoin(AuditCursor, AuditCursor.data_location_id == DataLocation.id)
        .where(
            DataLocation.site_id == site.id,
            DataLocation.active.is_(True),
            DataLocation.location_type.in_(AUDITED_TYPES),
        )
        .order_by(DataLocation.priority, DataLocation.id)
    ).all()
    return [loc for loc, at in rows if at is None or as_utc(at) <= now - interval]
