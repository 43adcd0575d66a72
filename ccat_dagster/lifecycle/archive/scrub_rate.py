"""The scrub's rate limit per archive: what one run may read, and whether the rate keeps up.

Every archive is read at most ``policy.lta_reverify_rate(location)`` bytes per second (0 =
unlimited; ``lta_reverify_bytes_per_second``, overridable per location by
``lta_reverify_bytes_per_second_by_location``). The reads themselves are throttled
(:mod:`ccat_dagster.storage.throttle`); this module sizes each run so that its bytes stay within
rate x ``lta_reverify_run_minutes`` (at least one copy, so a package larger than that budget is
still read, in a longer run), and tells whether the rate can re-read everything the archive holds
within ``lta_reverify_interval_minutes``. If it cannot, copies are re-read later than the
interval promises: the ``fixity_behind`` alert says so, with the rate that would keep up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
)
from ccat_ops_db.policy import Policy


def run_budget_bytes(policy: Policy, location: str) -> int | None:
    """Bytes one scrub run may read at ``location`` ("site/location"); None = unlimited."""
    rate = policy.lta_reverify_rate(location)
    return rate * policy.lta_reverify_run_minutes * 60 if rate > 0 else None


def within_budget(
    due: Iterable[tuple[int, int, str, int]], policy: Policy
) -> list[tuple[int, int]]:
    """(package id, location id) of the copies one run reads, from ``due`` (package id,
    location id, "site/location", size) in the order they are due: per location, until the
    next copy would exceed the run's budget; the first copy of each location always fits."""
    used: dict[int, int] = {}
    full: set[int] = set()
    out = []
    for package_id, location_id, name, size in due:
        if location_id in full:
            continue
        budget = run_budget_bytes(policy, name)
        spent = used.get(location_id)
        if budget is not None and spent is not None and spent + size > budget:
            full.add(location_id)  # oldest first: nothing after it jumps the queue
            continue
        used[location_id] = (spent or 0) + size
        out.append((package_id, location_id))
    return out


@dataclass(frozen=True)
class ScrubCoverage:
    """Can the scrub re-read all of one archive within the interval at its rate?"""

    location: str
    archived_bytes: int
    bytes_per_second: int
    interval_minutes: int

    @property
    def seconds_needed(self) -> float:
        """Reading everything once at the rate (0 when unlimited)."""
        return self.archived_bytes / self.bytes_per_second if self.bytes_per_second else 0.0

    @property
    def keeps_up(self) -> bool:
        return self.seconds_needed <= self.interval_minutes * 60

    @property
    def rate_needed(self) -> int:
        """The smallest rate (bytes/s) that re-reads the archive within the interval."""
        return math.ceil(self.archived_bytes / (self.interval_minutes * 60))

    def describe(self) -> str:
        days = self.seconds_needed / 86_400
        return (
            f"{self.location}: re-reading its {self.archived_bytes} archived bytes at "
            f"{self.bytes_per_second} bytes/s takes {days:.1f} days, longer than "
            f"lta_reverify_interval_minutes ({self.interval_minutes}); copies are re-verified "
            f"late. Raise the rate to at least {self.rate_needed} bytes/s "
            "(lta_reverify_bytes_per_second or its per-location override) or the interval"
        )


def scrub_coverage(
    session: Session, site: str, *, policy: Policy | None = None
) -> list[ScrubCoverage]:
    """One coverage per active LONG_TERM_ARCHIVE of ``site`` (short name) with a rate limit:
    the bytes of its PRESENT package copies against rate x interval (one query)."""
    policy = policy or get_policy(session)
    copy = RawDataPackagePhysicalCopy
    archived = (
        sa.select(sa.func.coalesce(sa.func.sum(RawDataPackage.size), 0))
        .join(copy, copy.raw_data_package_id == RawDataPackage.id)
        .where(copy.data_location_id == DataLocation.id, copy.status == PhysicalCopyStatus.PRESENT)
        .correlate(DataLocation)
        .scalar_subquery()
    )
    rows = session.execute(
        sa.select(Site.short_name, DataLocation.name, archived)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == site,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            DataLocation.active.is_(True),
        )
        .order_by(DataLocation.name)
    ).all()
    out = []
    for site_name, name, size in rows:
        location = f"{site_name}/{name}"
        rate = policy.lta_reverify_rate(location)
        if rate > 0:
            out.append(
                ScrubCoverage(location, int(size), rate, policy.lta_reverify_interval_minutes)
            )
    return out
