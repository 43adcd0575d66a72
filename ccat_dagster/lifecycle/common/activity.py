"""Whether a site or a location is still active in the ops DB, asked at the moment work starts.

A code location builds its sensors and jobs from the topology as it was when it loaded; after
``ccat topology apply`` deactivates a site or a location, those definitions keep ticking until
the code location is reloaded (and a run queued before may still start). The ops DB is the system
of record, so every sensor and stage run asks it again here before it starts work into or from a
location: nothing new starts at a location the topology has switched off. What stays there is
left to the deletion rules; nothing here deletes or changes anything.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ccat_ops_db.models import DataLocation, Site, qualified_location_name

_HOW_TO_REACTIVATE = "set active: true on it in the topology and run `ccat topology apply FILE`"


def why_inactive(session: Session, site: str, location: str | None = None) -> str | None:
    """Why site ``site`` (and its location ``location``, when given) must not get new work now:
    missing from the ops DB or inactive. None when it may."""
    row = session.scalar(select(Site).where(Site.short_name == site))
    if row is None:
        return f"site {site} is not in the ops DB any more"
    if not row.active:
        return f"site {site} is inactive in the ops DB ({_HOW_TO_REACTIVATE})"
    if location is None:
        return None
    where = qualified_location_name(site, location)
    loc = next((loc for loc in row.locations if loc.name == location), None)
    if loc is None:
        return f"location {where} is not in the ops DB any more"
    if not loc.active:
        return f"location {where} is inactive in the ops DB ({_HOW_TO_REACTIVATE})"
    return None


def inactive_location_ids(session: Session) -> dict[int, str]:
    """``{location id: qualified name}`` of every location that is inactive itself or whose
    site is (few rows: the retired part of the topology)."""
    rows = session.execute(
        select(DataLocation.id, Site.short_name, DataLocation.name)
        .join(Site, Site.id == DataLocation.site_id)
        .where(or_(DataLocation.active.is_(False), Site.active.is_(False)))
    ).all()
    return {lid: qualified_location_name(site, name) for lid, site, name in rows}


def inactive_among(
    inactive: dict[int, str],
    *,
    reads: Collection[int] = (),
    writes: Collection[int] = (),
    any_of_reads: Collection[int] = (),
) -> list[str]:
    """The names of the inactive locations that stop a piece of work: every location it reads
    or writes must be active, and of alternatives (``any_of_reads``) at least one."""
    stopping = [inactive[lid] for lid in (*reads, *writes) if lid in inactive]
    if any_of_reads and all(lid in inactive for lid in any_of_reads):
        stopping += [inactive[lid] for lid in any_of_reads]
    return sorted(set(stopping))
