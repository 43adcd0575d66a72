"""Finding sites and data locations: primary buffers with failover, SOURCE and LTA sites, names.

A location is usable when it and its site are active. Among several active BUFFERs of a site the
one with the lowest priority number is the primary (docs/lifecycle.md: routes); deactivating
it makes the next one primary without any other change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ccat_dagster.lifecycle.common.names import Placed, site_pools
from ccat_dagster.lifecycle.common.operations import operations_for_type
from ccat_ops_db.models import (
    DataLocation,
    DataTransferRoute,
    DiskDataLocation,
    LocationType,
    S3DataLocation,
    Site,
)
from ccat_ops_db.topology_routes_apply import describe_row


class LocationError(LookupError):
    """A location name that matches no location, or more than one."""

    def __str__(self) -> str:  # LookupError would repr() a single argument (quotes).
        return str(self.args[0]) if self.args else ""


def _active_locations(site: Site, location_type: LocationType) -> list[DataLocation]:
    return [
        loc
        for loc in site.locations
        if loc.active and site.active and loc.location_type is location_type
    ]


def get_primary_buffer_for_site(session: Session, site: Site) -> DataLocation | None:
    """The active BUFFER of ``site`` with the lowest priority number (ties: oldest), or None."""
    return session.scalars(
        select(DataLocation)
        .join(Site)
        .where(
            DataLocation.site_id == site.id,
            DataLocation.location_type == LocationType.BUFFER,
            DataLocation.active.is_(True),
            Site.active.is_(True),
        )
        .order_by(DataLocation.priority, DataLocation.id)
        .limit(1)
    ).first()


def _sites_with(session: Session, location_type: LocationType) -> list[Site]:
    return list(
        session.scalars(
            select(Site)
            .where(
                Site.active.is_(True),
                Site.locations.any(
                    (DataLocation.location_type == location_type) & DataLocation.active.is_(True)
                ),
            )
            .options(selectinload(Site.locations))
            .order_by(Site.id)
        )
    )


def get_sites_with_source_locations(session: Session) -> list[Site]:
    """Active sites that have an active SOURCE location (where instruments write data)."""
    return _sites_with(session, LocationType.SOURCE)


def lta_sites(session: Session) -> list[Site]:
    """Active sites that have an active LONG_TERM_ARCHIVE location, in a stable order (by id)."""
    return _sites_with(session, LocationType.LONG_TERM_ARCHIVE)


def is_source_site(site: Site) -> bool:
    return bool(_active_locations(site, LocationType.SOURCE))


def is_lta_site(site: Site) -> bool:
    return bool(_active_locations(site, LocationType.LONG_TERM_ARCHIVE))


def resolve_location(session: Session, name: str) -> DataLocation:
    """The location called ``site/name``, or ``name`` alone when only one site has it.

    Inactive locations resolve too (an operator may need to inspect or drain them); callers
    that must not use them check ``location.active``.
    """
    all_locations = session.scalars(
        select(DataLocation).join(Site).order_by(Site.short_name, DataLocation.name)
    ).all()
    known = ", ".join(loc.qualified_name for loc in all_locations) or "(none)"
    if "/" in name:
        site_name, _, location_name = name.partition("/")
        matches = [
            loc
            for loc in all_locations
            if loc.site.short_name == site_name and loc.name == location_name
        ]
    else:
        matches = [loc for loc in all_locations if loc.name == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LocationError(
            f"unknown location {name!r}; known locations: {known} "
            "(see `ccat list-locations`; add new ones with `ccat topology apply`)"
        )
    candidates = ", ".join(loc.qualified_name for loc in matches)
    raise LocationError(
        f"location name {name!r} is ambiguous: {candidates}; write it as site/name, "
        f"e.g. {matches[0].qualified_name}"
    )


def describe_storage(location: DataLocation) -> str:
    """One-line storage description, e.g. ``disk ccat@archive.example:22:/srv/buffer``."""
    if isinstance(location, DiskDataLocation):
        if location.host:
            user = f"{location.user}@" if location.user else ""
            port = f":{location.port}" if location.port else ""
            return f"disk {user}{location.host}{port}:{location.path}"
        return f"disk {location.path}"
    if isinstance(location, S3DataLocation):
        prefix = f"/{location.prefix.strip('/')}" if location.prefix else ""
        endpoint = f" ({location.endpoint_url})" if location.endpoint_url else ""
        return f"s3://{location.bucket}{prefix}{endpoint}"
    return location.storage_type.value


@dataclass(frozen=True)
class LocationInfo:
    """What ``ccat list-locations`` shows for one location."""

    site: str
    location: str
    location_type: str
    storage: str
    priority: int
    active: bool
    #: (operation, pool name) of each pool a Dagster op uses at this location, in matrix order
    pools: tuple[tuple[str, str], ...]
    #: (observer site, since (ISO), reason) for each site it is unavailable from
    unavailable: tuple[tuple[str, str, str], ...] = ()
    #: the route overrides from this location's site, e.g. ``ccat -> RELAY via hub -> us``
    #: (an inactive one ends with `` (inactive)``)
    routes: tuple[str, ...] = ()


_TYPE_ORDER = list(LocationType)  # SOURCE, BUFFER, LONG_TERM_ARCHIVE, PROCESSING: the data flow


def _pipeline_order(location: DataLocation) -> tuple[int, int, int]:
    return (_TYPE_ORDER.index(location.location_type), location.priority, location.id)


def describe_locations(session: Session) -> list[LocationInfo]:
    """Every site and location (active or not) with the operations that run there in a pool
    of their own (``lifecycle.common.names``: the pools the Dagster ops use), and the sites it is
    unavailable from."""
    from ccat_dagster.lifecycle.capacity.availability import unavailable_locations

    down: dict[int, list[tuple[str, str, str]]] = {}
    for u in unavailable_locations(session):
        down.setdefault(u.location_id, []).append((u.observer, u.since.isoformat(), u.reason))
    sites: Sequence[Site] = session.scalars(
        select(Site).options(selectinload(Site.locations)).order_by(Site.id)
    ).all()
    routes: dict[int, list[str]] = {}
    for route in session.scalars(select(DataTransferRoute).order_by(DataTransferRoute.id)):
        text = describe_row(route) + ("" if route.active else " (inactive)")
        routes.setdefault(route.origin_site_id, []).append(text)
    rows = []
    for site in sites:
        # the pools the site's Dagster ops use (its code location loads its active locations)
        # a DataLocation is Placed; pyright does not see Mapped[...] columns as plain attributes
        active = cast("list[Placed]", [loc for loc in site.locations if loc.active])
        pools = site_pools(active)
        for loc in sorted(site.locations, key=_pipeline_order):
            ops = [op for op in operations_for_type(loc.location_type) if (loc.name, op) in pools]
            rows.append(
                LocationInfo(
                    site=site.short_name,
                    location=loc.name,
                    location_type=loc.location_type.value,
                    storage=describe_storage(loc),
                    priority=loc.priority,
                    active=loc.active and site.active,
                    pools=tuple((op.value, pools[(loc.name, op)]) for op in ops),
                    unavailable=tuple(down.get(loc.id, ())),
                    routes=tuple(routes.get(site.id, ())),
                )
            )
    return rows
