"""Findings over scans: a difference seen for the first time is recorded OPEN; a later scan of
the same key range that sees it again at least ``audit_confirm_minutes`` after the first makes
it actionable; one that does not see it closes it (GONE: the object came back, a write in
flight finished and the catalogue learned it, the copy changed status)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.audit.scan import Slice
from ccat_ops_db.models import (
    AuditFinding,
    AuditFindingKind,
    AuditFindingState,
    DataLocation,
    as_utc,
)

K, F = AuditFindingKind, AuditFindingState


@dataclass
class Update:
    new: list[AuditFinding] = field(default_factory=list)
    closed: list[AuditFinding] = field(default_factory=list)
    #: seen again after the confirmation interval: to be acted on
    confirmed: list[AuditFinding] = field(default_factory=list)


def in_range(key: str, after: str, upto: str | None) -> bool:
    return key > after and (upto is None or key <= upto)


def open_findings(session: Session, location: DataLocation, scan: Slice) -> list[AuditFinding]:
    rows = session.scalars(
        sa.select(AuditFinding).where(
            AuditFinding.data_location_id == location.id, AuditFinding.state == F.OPEN
        )
    )
    return [f for f in rows if in_range(f.key, scan.after, scan.upto)]


def _seen(finding: AuditFinding, scan: Slice) -> bool:
    return finding.key in (scan.dark if finding.kind == K.DARK else scan.lost)


def update_findings(
    session: Session,
    location: DataLocation,
    scan: Slice,
    *,
    now: datetime,
    confirm_after: timedelta,
) -> Update:
    """Bring the findings of the slice's key range up to date with what it saw (flushed, the
    caller commits)."""
    out = Update()
    pending = {(f.kind, f.key): f for f in open_findings(session, location, scan)}
    for finding in pending.values():
        if not _seen(finding, scan):
            finding.state = F.GONE
            finding.detail = f"not seen again at {now.isoformat()}"
            out.closed.append(finding)
            continue
        finding.last_seen = now
        if finding.kind == K.LOST:
            finding.size = scan.lost[finding.key].size
        if now - as_utc(finding.first_seen) >= confirm_after:
            finding.confirmed_at = now
            out.confirmed.append(finding)
    for key, size in scan.dark.items():
        if (K.DARK, key) not in pending:
            out.new.append(_new(location, key, K.DARK, now, size=size))
    for key, lost in scan.lost.items():
        if (K.LOST, key) not in pending:
            out.new.append(
                _new(
                    location,
                    key,
                    K.LOST,
                    now,
                    size=lost.size,
                    expected_size=lost.copy.size,
                    physical_copy_id=lost.copy.copy_id,
                )
            )
    session.add_all(out.new)
    session.flush()
    return out


def _new(location: DataLocation, key: str, kind: AuditFindingKind, now: datetime, **values):
    return AuditFinding(
        data_location_id=location.id,
        key=key,
        kind=kind,
        state=F.OPEN,
        first_seen=now,
        last_seen=now,
        **values,
    )
