"""Periodic re-verification of archive copies (the scrub): bytes rot at rest.

Every PRESENT copy of a RawDataPackage in an active LONG_TERM_ARCHIVE is read back in full and
checksummed once per ``policy.lta_reverify_interval_minutes`` (30 days by default), oldest check
first, each archive read at most at its rate (``lta_reverify_bytes_per_second``; one run's bytes
bounded by :mod:`.scrub_rate`). A pass refreshes the copy's ``verified_at``; a definite failure
(object missing, size or checksum wrong) marks the copy BAD or LOST and sends the package back to
the archive stage, which re-archives it from a good copy
(:func:`ccat_dagster.lifecycle.archive.repair.record_lta_check`) and checks the new copy at once
(``lta_presence``, ``verified_at`` set again); a storage that cannot be read proves nothing and
changes nothing. Without it, a corrupted archive copy would be found only when a deletion relies
on it, or by ``ccat verify``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.scrub_rate import within_budget
from ccat_dagster.lifecycle.archive.verification import LtaEvidence, verify_lta_copy
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import LocationUnavailableError, StorageError
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    qualified_location_name,
    utcnow,
)


def _due(session: Session, site: Site, *, now: datetime | None, limit: int):
    interval = timedelta(minutes=get_policy(session).lta_reverify_interval_minutes)
    cutoff = (now or utcnow()) - interval
    copy = RawDataPackagePhysicalCopy
    return session.execute(
        select(copy.raw_data_package_id, copy.data_location_id, DataLocation.name, copy.size)
        .join(DataLocation, DataLocation.id == copy.data_location_id)
        .where(
            DataLocation.site_id == site.id,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            DataLocation.active.is_(True),
            copy.status == PhysicalCopyStatus.PRESENT,
            or_(copy.verified_at.is_(None), copy.verified_at <= cutoff),
        )
        .order_by(copy.verified_at.is_not(None), copy.verified_at, copy.id)
        .limit(limit)
    ).all()


def copies_due_for_reverification(
    session: Session, site: Site, *, now: datetime | None = None, limit: int = 1000
) -> list[tuple[int, int]]:
    """(package id, archive location id) of this site's archive copies whose last check is older
    than the interval (or that were never checked), oldest first."""
    rows = _due(session, site, now=now, limit=limit)
    return [(int(package_id), location_id) for package_id, location_id, _, _ in rows if package_id]


def next_reverification_batch(
    session: Session, site: Site, *, now: datetime | None = None, limit: int = 1000
) -> list[tuple[int, int]]:
    """The copies of :func:`copies_due_for_reverification` that one scrub run reads: oldest
    first, per archive within its run budget (rate x ``lta_reverify_run_minutes``)."""
    rows = _due(session, site, now=now, limit=limit)
    due = [
        (int(pid), lid, qualified_location_name(site.short_name, name), int(size or 0))
        for pid, lid, name, size in rows
        if pid
    ]
    return within_budget(due, get_policy(session))


def reverify_lta_copy(
    session: Session,
    package: RawDataPackage,
    lta: DataLocation,
    storage: Storage,
    *,
    run_id: str | None = None,
) -> LtaEvidence:
    """Read the archive copy back in full, at most at the archive's scrub rate, and record the
    outcome (committed).
    ``LocationUnavailableError`` propagates: the archive does not answer, nothing is known."""
    rate = get_policy(session).lta_reverify_rate(lta.qualified_name)
    try:
        evidence = verify_lta_copy(
            storage, package, prefer_stored_checksum=False, bytes_per_second=rate
        )
    except LocationUnavailableError:
        raise
    except StorageError as exc:
        evidence = LtaEvidence.cannot_verify(package, lta, exc)
    record_lta_check(session, package, lta, evidence, run_id=run_id)
    session.commit()
    return evidence
