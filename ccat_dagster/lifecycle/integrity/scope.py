"""Which locations ``ccat verify`` looks at: every one, or those of some sites and locations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_ops_db.models import DataLocation, LocationType, Site, qualified_location_name

#: reading order: archives first (the copies every other check leans on), then the rest
_ORDER = {
    LocationType.LONG_TERM_ARCHIVE: 0,
    LocationType.BUFFER: 1,
    LocationType.SOURCE: 2,
    LocationType.PROCESSING: 3,
}


class VerifyScopeError(LookupError):
    """An unknown site or location was asked for; nothing was checked."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Scope:
    """The locations to check (ids and ``site/name``), in reading order."""

    location_ids: tuple[int, ...]
    ids: frozenset[int]
    names: dict[int, str]  # every location of the topology, id -> site/name
    lta_ids: frozenset[int]  # every LONG_TERM_ARCHIVE location of the topology
    #: False when the whole topology is checked
    limited: bool

    def __contains__(self, location_id: object) -> bool:
        return location_id in self.ids


def resolve_scope(
    session: Session, *, sites: Sequence[str] = (), locations: Sequence[str] = ()
) -> Scope:
    """Every location, or the union of the locations of ``sites`` (short names) and
    ``locations`` (``site/name`` or a unique name). Raises VerifyScopeError naming the known
    sites for an unknown site, and the location error for an unknown location."""
    rows = session.execute(
        sa.select(DataLocation.id, Site.short_name, DataLocation.name, DataLocation.location_type)
        .join(Site, Site.id == DataLocation.site_id)
        .order_by(DataLocation.id)
    ).all()
    names = {loc_id: qualified_location_name(site, name) for loc_id, site, name, _ in rows}
    types = {loc_id: loc_type for loc_id, _, _, loc_type in rows}
    known_sites = sorted({site for _, site, _, _ in rows})
    chosen: set[int] = set()
    for site in sites:
        if site not in known_sites:
            raise VerifyScopeError(
                f"unknown site {site!r}; known sites: {', '.join(known_sites) or '(none)'} "
                "(see `ccat list-locations`)"
            )
        chosen.update(loc_id for loc_id, s, _, _ in rows if s == site)
    for name in locations:
        chosen.add(resolve_location(session, name).id)
    limited = bool(sites or locations)
    ids = chosen if limited else set(names)
    ordered = tuple(sorted(ids, key=lambda i: (_ORDER.get(types[i], 9), names[i])))
    return Scope(
        location_ids=ordered,
        ids=frozenset(ordered),
        names=names,
        lta_ids=frozenset(i for i, t in types.items() if t == LocationType.LONG_TERM_ARCHIVE),
        limited=limited,
    )
