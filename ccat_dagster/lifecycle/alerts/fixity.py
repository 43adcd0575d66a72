"""The alerts of fixity at rest and of the restore drill, from the ops DB.

- ``fixity_mismatch``: a live check (the scrub, a deletion's ``lta_presence``, a failed
  restore) marked an archive copy of the site BAD or LOST within the last
  ``alert_repeat_minutes``. It stays an incident for that window even when the archive stage
  repaired the copy minutes later (while the copy is BAD, ``lta_presence_failed`` holds too):
  bytes that rotted at rest are news even once repaired.
- ``fixity_behind``: an archive's scrub rate cannot re-read all it holds within
  ``lta_reverify_interval_minutes`` (:mod:`ccat_dagster.lifecycle.archive.scrub_rate`).
- ``restore_drill_failed``: the site's latest restore drill failed; resolved by the next one
  that passes (:mod:`ccat_dagster.lifecycle.staging.drill`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts.model import AlertKind, Condition
from ccat_dagster.lifecycle.archive.repair import RULE_LTA_COPY_UNUSABLE
from ccat_dagster.lifecycle.archive.scrub_rate import scrub_coverage
from ccat_dagster.lifecycle.staging import drill
from ccat_ops_db.models import (
    UNUSABLE_COPY_STATUSES,
    AuditLog,
    DataLocation,
    LocationType,
    Site,
    as_utc,
)
from ccat_ops_db.policy import Policy


def fixity_mismatches(
    session: Session, site: str, *, policy: Policy, now: datetime
) -> list[Condition]:
    """One incident per archive of ``site`` with copies marked BAD or LOST recently."""
    window = now - timedelta(minutes=policy.alert_repeat_minutes)
    rows = session.execute(
        sa.select(DataLocation.name, sa.func.count(), sa.func.min(AuditLog.created_at))
        .join(DataLocation, DataLocation.id == AuditLog.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == site,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            AuditLog.entity_type == "physical_copy",
            AuditLog.new_status.in_([s.value for s in UNUSABLE_COPY_STATUSES]),
            AuditLog.reason.like(f"{RULE_LTA_COPY_UNUSABLE}:%"),
            AuditLog.created_at >= window,
        )
        .group_by(DataLocation.name)
        .order_by(DataLocation.name)
    ).all()
    return [
        Condition(
            AlertKind.FIXITY_MISMATCH,
            site,
            f"{site}/{archive}",
            f"{n} archive cop(ies) in {site}/{archive} found with other bytes or missing in the "
            f"last {policy.alert_repeat_minutes} minutes; marked BAD/LOST and re-archived from "
            "a good copy (`ccat status`, the lta_presence check of the archive's asset)",
            as_utc(first),
        )
        for archive, n, first in rows
    ]


def fixity_behind(session: Session, site: str, *, policy: Policy) -> list[Condition]:
    return [
        Condition(AlertKind.FIXITY_BEHIND, site, c.location, c.describe())
        for c in scrub_coverage(session, site, policy=policy)
        if not c.keeps_up
    ]


def restore_drill_failed(session: Session, site: str) -> list[Condition]:
    site_row = session.scalar(sa.select(Site).where(Site.short_name == site))
    last = drill.last_drill(session, site_row) if site_row is not None else None
    if last is None or last.new_status != drill.FAILED:
        return []
    location = session.get(DataLocation, last.data_location_id)
    where = location.qualified_name if location is not None else site
    return [
        Condition(
            AlertKind.RESTORE_DRILL_FAILED,
            site,
            where,
            f"the restore drill to {where} failed: {last.reason}",
            as_utc(last.created_at),
        )
    ]
