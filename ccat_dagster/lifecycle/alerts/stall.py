"""A stalled pipeline: a site has work pending and none of it has moved for
``alert_stall_minutes``.

Work pending at a site: its RawDataPackages to package (by their SOURCE), DataTransferPackages
to build and DataTransfers to send (by their origin), DataTransfers to unpack (by their
destination) and LongTermArchiveTransfers to run (by their origin, the LTA site's buffer), in
PENDING, SCHEDULED or IN_PROGRESS. Progress: the newest change among those rows of the site
(their ``updated_at``, or ``finished_at``, ``started_at``, ``created_at``) and any audited
status change at one of its locations within the window (unpacking has no timestamp of its
own). A stall is what the per-item failures do not show: a daemon that is down, sensors
switched off, runs queued that never start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts.model import AlertKind, Condition
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LongTermArchiveTransfer,
    RawDataPackage,
    Site,
    Status,
    as_utc,
)
from ccat_ops_db.policy import Policy

OPEN = (Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS)


def _site_locations(site: str):
    return (
        sa.select(DataLocation.id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(Site.short_name == site)
        .scalar_subquery()
    )


def _pending(session: Session, site: str) -> int:
    here = _site_locations(site)
    counts = [
        sa.select(sa.func.count()).where(
            RawDataPackage.source_location_id.in_(here), RawDataPackage.status.in_(OPEN)
        ),
        sa.select(sa.func.count()).where(
            DataTransferPackage.origin_location_id.in_(here),
            DataTransferPackage.status.in_(OPEN),
        ),
        sa.select(sa.func.count()).where(
            DataTransfer.origin_location_id.in_(here), DataTransfer.status.in_(OPEN)
        ),
        sa.select(sa.func.count()).where(
            DataTransfer.destination_location_id.in_(here),
            DataTransfer.status == Status.COMPLETED,
            DataTransfer.unpack_status.in_(OPEN),
        ),
        sa.select(sa.func.count()).where(
            LongTermArchiveTransfer.origin_location_id.in_(here),
            LongTermArchiveTransfer.status.in_(OPEN),
        ),
    ]
    return sum(session.scalar(stmt) or 0 for stmt in counts)


def last_progress(session: Session, site: str) -> datetime | None:
    """The newest change to the site's work, or None when it never had any."""
    here = _site_locations(site)
    newest = [
        sa.select(sa.func.max(RawDataPackage.updated_at)).where(
            RawDataPackage.source_location_id.in_(here)
        ),
        sa.select(sa.func.max(DataTransferPackage.updated_at)).where(
            DataTransferPackage.origin_location_id.in_(here)
        ),
        sa.select(
            sa.func.max(
                sa.func.coalesce(
                    DataTransfer.finished_at, DataTransfer.started_at, DataTransfer.created_at
                )
            )
        ).where(
            sa.or_(
                DataTransfer.origin_location_id.in_(here),
                DataTransfer.destination_location_id.in_(here),
            )
        ),
        sa.select(
            sa.func.max(
                sa.func.coalesce(
                    LongTermArchiveTransfer.finished_at,
                    LongTermArchiveTransfer.started_at,
                    LongTermArchiveTransfer.created_at,
                )
            )
        ).where(LongTermArchiveTransfer.origin_location_id.in_(here)),
    ]
    times = [as_utc(t) for t in (session.scalar(stmt) for stmt in newest) if t is not None]
    return max(times) if times else None


def audited_since(session: Session, site: str, since: datetime) -> bool:
    """Whether a status change at a location of ``site`` was audited after ``since`` (one
    look at the newest audit rows: ``created_at`` is indexed)."""
    found = session.scalar(
        sa.select(AuditLog.id)
        .where(AuditLog.created_at > since, AuditLog.data_location_id.in_(_site_locations(site)))
        .limit(1)
    )
    return found is not None


def stalled_pipeline(
    session: Session, site: str, *, policy: Policy, now: datetime
) -> list[Condition]:
    """The stall of ``site``, if any (a list: no condition or one)."""
    pending = _pending(session, site)
    if not pending:
        return []
    progress = last_progress(session, site)
    limit = now - timedelta(minutes=policy.alert_stall_minutes)
    if (progress is not None and progress > limit) or audited_since(session, site, limit):
        return []
    moved = f"since {progress:%Y-%m-%d %H:%M}Z" if progress else "ever"
    return [
        Condition(
            AlertKind.PIPELINE_STALLED,
            site,
            site,
            f"pipeline at {site} stalled: {pending} item(s) pending and nothing moved {moved} "
            f"(more than {policy.alert_stall_minutes} min)",
            progress,
        )
    ]
