"""The conditions of one site that are incidents now, each from the ops DB in a few set-based
queries: FAILED RawDataPackages, archive copies that failed ``lta_presence``, buffer levels
CRITICAL and EMERGENCY, locations unavailable from the site longer than the policy's threshold,
the disk-pressure forecast, a stalled pipeline (:mod:`.stall`), fixity at rest and the
restore drill (:mod:`.fixity`), and locations whose consistency audit found too many dark or
lost objects to act on (the location looks wrong).

A condition belongs to the site that acts on it (whose code location sends it): FAILED packages
to the site of their SOURCE, an archive copy to the archive's site, a level or forecast to the
measured location's site, an unavailable location to the site that cannot reach it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts.fixity import (
    fixity_behind,
    fixity_mismatches,
    restore_drill_failed,
)
from ccat_dagster.lifecycle.alerts.model import AlertKind, Condition
from ccat_dagster.lifecycle.alerts.stall import stalled_pipeline
from ccat_dagster.lifecycle.capacity.availability import unavailable_locations
from ccat_dagster.lifecycle.capacity.buffer_policy import BufferLevel, latest_buffer_statuses
from ccat_dagster.lifecycle.capacity.forecast import forecast_locations, pressure_alert
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import (
    UNUSABLE_COPY_STATUSES,
    AuditCursor,
    DataLocation,
    DiskUsageSample,
    LocationType,
    PackageState,
    PhysicalCopy,
    RawDataPackage,
    Site,
    Status,
    StorageType,
    as_utc,
    utcnow,
)
from ccat_ops_db.policy import Policy

#: package names listed in one message; the rest are counted
NAMES_SHOWN = 10


def site_conditions(
    session: Session, site: str, *, now: datetime | None = None, policy: Policy | None = None
) -> list[Condition]:
    """Every incident of ``site`` (its short name) that holds now."""
    now = now or utcnow()
    policy = policy or get_policy(session)
    return [
        *failed_packages(session, site),
        *lta_presence_failures(session, site),
        *buffer_pressure(session, site, policy=policy),
        *disk_forecasts(session, site, policy=policy, now=now),
        *unavailable_too_long(session, site, policy=policy, now=now),
        *stalled_pipeline(session, site, policy=policy, now=now),
        *audit_anomalies(session, site),
        *fixity_mismatches(session, site, policy=policy, now=now),
        *fixity_behind(session, site, policy=policy),
        *restore_drill_failed(session, site),
    ]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def failed_packages(session: Session, site: str) -> list[Condition]:
    """FAILED RawDataPackages (packaging FAILED, or a transfer or archive step that used up
    its retries), one incident per SOURCE location they came from."""
    rows = session.execute(
        sa.select(DataLocation.name, RawDataPackage.name, RawDataPackage.updated_at)
        .join(DataLocation, DataLocation.id == RawDataPackage.source_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == site,
            sa.or_(
                RawDataPackage.status == Status.FAILED,
                RawDataPackage.state == PackageState.FAILED,
            ),
        )
        .order_by(DataLocation.name, RawDataPackage.updated_at, RawDataPackage.name)
    ).all()
    by_source: dict[str, tuple[list[str], datetime]] = {}
    for source, package, updated in rows:
        names, _ = by_source.setdefault(source, ([], as_utc(updated)))
        names.append(package)
    return [
        Condition(
            AlertKind.PACKAGES_FAILED,
            site,
            f"{site}/{source}",
            f"{len(names)} RawDataPackage(s) from {site}/{source} FAILED: {_names(names)}",
            since,
        )
        for source, (names, since) in by_source.items()
    ]


def lta_presence_failures(session: Session, site: str) -> list[Condition]:
    """Archive copies a live ``lta_presence`` check found missing (LOST) or with other bytes
    (BAD), one incident per LONG_TERM_ARCHIVE location; cleared when all are repaired."""
    rows = session.execute(
        sa.select(DataLocation.name, RawDataPackage.name, PhysicalCopy.updated_at)
        .join(PhysicalCopy, PhysicalCopy.raw_data_package_id == RawDataPackage.id)
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == site,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            PhysicalCopy.status.in_(UNUSABLE_COPY_STATUSES),
        )
        .order_by(DataLocation.name, PhysicalCopy.updated_at, RawDataPackage.name)
    ).all()
    by_archive: dict[str, tuple[list[str], datetime]] = {}
    for archive, package, updated in rows:
        names, _ = by_archive.setdefault(archive, ([], as_utc(updated)))
        names.append(package)
    return [
        Condition(
            AlertKind.LTA_PRESENCE_FAILED,
            site,
            f"{site}/{archive}",
            f"lta_presence failed for {len(names)} archive cop(ies) in {site}/{archive} "
            f"(missing or other bytes): {_names(names)}",
            since,
        )
        for archive, (names, since) in by_archive.items()
    ]


def _disk_locations(session: Session, site: str) -> list[DataLocation]:
    return list(
        session.scalars(
            sa.select(DataLocation)
            .join(Site, Site.id == DataLocation.site_id)
            .where(
                Site.short_name == site,
                DataLocation.active == sa.true(),
                DataLocation.storage_type == StorageType.DISK,
            )
            .order_by(DataLocation.name)
        )
    )


def _level_since(session: Session, location_id: int, threshold: float) -> datetime | None:
    """When the location's latest run of samples at or above ``threshold`` percent began."""
    below = (
        sa.select(sa.func.max(DiskUsageSample.measured_at))
        .where(
            DiskUsageSample.data_location_id == location_id,
            DiskUsageSample.percent < threshold,
        )
        .scalar_subquery()
    )
    first = session.scalar(
        sa.select(sa.func.min(DiskUsageSample.measured_at)).where(
            DiskUsageSample.data_location_id == location_id,
            DiskUsageSample.percent >= threshold,
            sa.or_(below.is_(None), DiskUsageSample.measured_at > below),
        )
    )
    return as_utc(first) if first is not None else None


def buffer_pressure(session: Session, site: str, *, policy: Policy) -> list[Condition]:
    """Disk locations whose latest sample is CRITICAL or EMERGENCY. At EMERGENCY both hold, so
    the CRITICAL incident stays open while the emergency one comes and goes."""
    locations = _disk_locations(session, site)
    statuses = latest_buffer_statuses(
        session, location_ids=[loc.id for loc in locations], policy=policy
    )
    thresholds = policy.buffer_thresholds_percent
    out: list[Condition] = []
    for location in locations:
        status = statuses.get(location.id)
        if status is None or status.level < BufferLevel.CRITICAL:
            continue
        levels = [(AlertKind.BUFFER_CRITICAL, "CRITICAL", thresholds.critical)]
        if status.level >= BufferLevel.EMERGENCY:
            levels.append((AlertKind.BUFFER_EMERGENCY, "EMERGENCY", thresholds.emergency))
        for kind, name, threshold in levels:
            out.append(
                Condition(
                    kind,
                    site,
                    location.qualified_name,
                    f"{location.qualified_name} is {status.percent:.1f}% full: buffer {name} "
                    f"(threshold {threshold:g}%)",
                    _level_since(session, location.id, threshold),
                )
            )
    return out


def disk_forecasts(
    session: Session, site: str, *, policy: Policy, now: datetime
) -> list[Condition]:
    """Locations that reach their critical level within ``disk_forecast_alert_hours`` at the
    present fill rate (``capacity.forecast.pressure_alert``)."""
    locations = _disk_locations(session, site)
    out: list[Condition] = []
    for location, ahead in zip(
        locations, forecast_locations(session, locations, policy=policy, now=now), strict=True
    ):
        text = pressure_alert(ahead, policy)
        if text is not None:
            out.append(Condition(AlertKind.DISK_FORECAST, site, location.qualified_name, text))
    return out


def unavailable_too_long(
    session: Session, site: str, *, policy: Policy, now: datetime
) -> list[Condition]:
    """Locations unavailable from ``site`` for longer than
    ``alert_location_unavailable_minutes``: shorter outages are the probes' business."""
    limit = now - timedelta(minutes=policy.alert_location_unavailable_minutes)
    return [
        Condition(
            AlertKind.LOCATION_UNAVAILABLE,
            site,
            f"{row.location} from {site}",
            f"{row.location} ({row.location_type}) does not answer from {site}: {row.reason} "
            f"({row.consecutive_failures} failed probe(s))",
            row.since,
        )
        for row in unavailable_locations(session, observer=site)
        if row.since <= limit
    ]


def audit_anomalies(session: Session, site: str) -> list[Condition]:
    """Locations whose latest consistency-audit slice found too many dark or lost objects to
    be believed (``lifecycle/audit/run.py``): the location itself looks wrong."""
    rows = session.execute(
        sa.select(DataLocation, AuditCursor.anomaly, AuditCursor.anomaly_since)
        .join(AuditCursor, AuditCursor.data_location_id == DataLocation.id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == site,
            DataLocation.active == sa.true(),
            AuditCursor.anomaly.is_not(None),
        )
        .order_by(DataLocation.name)
    ).all()
    return [
        Condition(
            AlertKind.LOCATION_LOOKS_WRONG,
            site,
            location.qualified_name,
            text or "",
            as_utc(since) if since is not None else None,
        )
        for location, text, since in rows
    ]
