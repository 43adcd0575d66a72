"""Buffer pressure: disk-usage samples, the level they mean, and what a site does about it.

Every measurement is a durable ``DiskUsageSample``
row and the level is recomputed from its percent with the policy in force, so changing the
thresholds takes effect at once. The escalation (docs/lifecycle.md: buffer levels)
is a pure function of the latest level: < warning normal; warning logged; critical -> fewer
parallel transfers and a cleanup of eligible data every ``critical_cleanup_interval_minutes``;
emergency -> a cleanup every ``emergency_cleanup_interval_minutes`` (shorter), new packaging
paused and an operator alerted. No level relaxes a deletion rule beyond the retention of
DELETION_POSSIBLE files: the last copy outside an archive waits for a verified archive copy at
every level. When pressure falls the limits go back on the next decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_ops_db.models import (
    DataLocation,
    DiskUsageSample,
    LocationType,
    Site,
    table_of,
    utcnow,
)


class BufferLevel(enum.IntEnum):
    """Ordered: NORMAL < WARNING < CRITICAL < EMERGENCY."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


def buffer_level(percent: float, policy: Policy) -> BufferLevel:
    """The level of a disk that is ``percent`` full under the policy's thresholds."""
    thresholds = policy.buffer_thresholds_percent
    if percent >= thresholds.emergency:
        return BufferLevel.EMERGENCY
    if percent >= thresholds.critical:
        return BufferLevel.CRITICAL
    if percent >= thresholds.warning:
        return BufferLevel.WARNING
    return BufferLevel.NORMAL


@dataclass(frozen=True)
class BufferStatus:
    """The latest measurement of one location."""

    data_location_id: int
    percent: float
    used_bytes: int
    total_bytes: int
    level: BufferLevel
    measured_at: datetime


def record_disk_usage(
    session: Session,
    location: DataLocation,
    *,
    used_bytes: int,
    total_bytes: int,
    policy: Policy | None = None,
    measured_at: datetime | None = None,
) -> BufferStatus:
    """Store one disk-usage sample of ``location`` and return its status (caller commits)."""
    if total_bytes <= 0 or used_bytes < 0:
        raise ValueError(
            f"disk usage of {location!r}: total_bytes must be > 0 and used_bytes >= 0 "
            f"(got used={used_bytes}, total={total_bytes}); check the storage's disk_usage()"
        )
    policy = policy or get_policy(session)
    percent = 100.0 * used_bytes / total_bytes
    level = buffer_level(percent, policy)
    measured_at = measured_at or utcnow()
    session.add(
        DiskUsageSample(
            data_location_id=location.id,
            measured_at=measured_at,
            used_bytes=used_bytes,
            total_bytes=total_bytes,
            percent=percent,
            level=level.name,
        )
    )
    session.flush()
    return BufferStatus(location.id, percent, used_bytes, total_bytes, level, measured_at)


def latest_buffer_statuses(
    session: Session,
    *,
    location_ids: list[int] | None = None,
    policy: Policy | None = None,
) -> dict[int, BufferStatus]:
    """The latest sample of every location (or of ``location_ids``), in one query."""
    policy = policy or get_policy(session)
    s = table_of(DiskUsageSample)
    latest = sa.select(
        s.c.data_location_id, sa.func.max(s.c.measured_at).label("measured_at")
    ).group_by(s.c.data_location_id)
    if location_ids is not None:
        latest = latest.where(s.c.data_location_id.in_(location_ids))
    latest = latest.subquery()
    stmt = (
        sa.select(
            s.c.data_location_id, s.c.percent, s.c.used_bytes, s.c.total_bytes, s.c.measured_at
        )
        .join(
            latest,
            sa.and_(
                latest.c.data_location_id == s.c.data_location_id,
                latest.c.measured_at == s.c.measured_at,
            ),
        )
        .order_by(s.c.id)  # same timestamp twice: the later row wins
    )
    return {
        loc: BufferStatus(loc, pct, used, total, buffer_level(pct, policy), at)
        for loc, pct, used, total, at in session.execute(stmt)
    }


def latest_buffer_status(
    session: Session, location: DataLocation, *, policy: Policy | None = None
) -> BufferStatus | None:
    """The latest status of ``location``; None when it was never measured."""
    return latest_buffer_statuses(session, location_ids=[location.id], policy=policy).get(
        location.id
    )


def should_delete_based_on_buffer_status(
    location: DataLocation | LocationType, buffer_status: BufferStatus | None
) -> bool:
    """Whether DELETION_POSSIBLE data at ``location`` is deleted now, without waiting for the
    retention period: only at SOURCE and BUFFER locations whose latest level is CRITICAL or
    EMERGENCY. An unmeasured location waits (no evidence of pressure)."""
    location_type = location if isinstance(location, LocationType) else location.location_type
    if location_type not in (LocationType.SOURCE, LocationType.BUFFER) or buffer_status is None:
        return False
    return buffer_status.level >= BufferLevel.CRITICAL


@dataclass(frozen=True)
class BufferAction:
    """What a site does at its current pressure (the worst level of its BUFFER locations)."""

    site: str
    level: BufferLevel
    max_parallel_transfers: int
    run_cleanup_now: bool
    #: how often the buffer monitor requests a cleanup at this level (None: only the schedule)
    cleanup_interval_minutes: int | None
    pause_packaging: bool
    alert: str | None


def buffer_action(
    level: BufferLevel, policy: Policy, *, site: str, detail: str = ""
) -> BufferAction:
    """The escalation for ``level``; a pure function, so limits return when pressure falls."""
    critical = level >= BufferLevel.CRITICAL
    alert = None
    if level == BufferLevel.EMERGENCY:
        alert = (
            f"site {site}: buffer EMERGENCY {detail}- new packaging paused, transfers limited to "
            f"{policy.max_critical_transfers}, cleanup every "
            f"{policy.emergency_cleanup_interval_minutes} min; free space or add capacity now"
        )
    elif level == BufferLevel.CRITICAL:
        alert = (
            f"site {site}: buffer CRITICAL {detail}- transfers limited to "
            f"{policy.max_critical_transfers}, cleanup every "
            f"{policy.critical_cleanup_interval_minutes} min"
        )
    elif level == BufferLevel.WARNING:
        alert = f"site {site}: buffer WARNING {detail}- add capacity before it becomes critical"
    return BufferAction(
        site=site,
        level=level,
        max_parallel_transfers=(
            policy.max_critical_transfers if critical else policy.max_normal_transfers
        ),
        run_cleanup_now=critical,
        cleanup_interval_minutes=(
            policy.emergency_cleanup_interval_minutes
            if level == BufferLevel.EMERGENCY
            else policy.critical_cleanup_interval_minutes
            if critical
            else None
        ),
        pause_packaging=level == BufferLevel.EMERGENCY,
        alert=alert,
    )


def decide_buffer_actions(
    session: Session, *, policy: Policy | None = None
) -> dict[str, BufferAction]:
    """The BufferAction of every active site with an active BUFFER, keyed by site short_name."""
    policy = policy or get_policy(session)
    buffers = session.execute(
        sa.select(DataLocation.id, DataLocation.name, Site.short_name)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            DataLocation.location_type == LocationType.BUFFER,
            DataLocation.active == sa.true(),
            Site.active == sa.true(),
        )
    ).all()
    statuses = latest_buffer_statuses(session, location_ids=[b.id for b in buffers], policy=policy)
    worst: dict[str, tuple[BufferLevel, str]] = {}
    for loc_id, name, site in buffers:
        status = statuses.get(loc_id)
        level = status.level if status else BufferLevel.NORMAL
        detail = f"({name} {status.percent:.1f}%) " if status else ""
        if site not in worst or level > worst[site][0]:
            worst[site] = (level, detail)
    return {
        site: buffer_action(level, policy, site=site, detail=detail)
        for site, (level, detail) in worst.items()
    }
