"""Writing the topology's ``routes`` as DataTransferRoute rows, and reading them back.

A route is identified by (origin, type, destination, relay, location); ``active`` is its state.
Applying creates the rows the file adds, sets ``active`` where it differs and deactivates the
active rows the file no longer lists -- never deletes one: the transfers it routed and the audit
log refer to it. Re-applying the same file issues no write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db.models import DataLocation, DataTransferRoute, RouteType, Site
from ccat_ops_db.topology_routes import RouteSpec, describe

RouteKey = tuple[str, str, str, str | None, str | None]


@dataclass
class RouteChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)


def _key(row: DataTransferRoute) -> RouteKey:
    relay = row.relay_site.short_name if row.relay_site is not None else None
    location = row.destination_location.name if row.destination_location is not None else None
    return (
        row.origin_site.short_name,
        row.route_type.value,
        row.destination_site.short_name,
        relay,
        location,
    )


def describe_row(row: DataTransferRoute) -> str:
    """``ccat -> RELAY via hub -> us`` for a stored route."""
    origin, _, destination, relay, location = _key(row)
    return describe(origin, row.route_type, destination, relay, location)


def _all_routes(session: Session) -> list[DataTransferRoute]:
    return list(session.scalars(select(DataTransferRoute).order_by(DataTransferRoute.id)))


def apply_routes(session: Session, routes: Sequence[RouteSpec]) -> RouteChanges:
    """Make the DataTransferRoute rows match ``routes`` (validated; their sites already exist
    in the session, flushed)."""
    changes = RouteChanges()
    rows = {_key(row): row for row in _all_routes(session)}
    sites = {s.short_name: s for s in session.scalars(select(Site))}
    for spec in routes:
        row = rows.pop(spec.key, None)
        if row is None:
            session.add(_new_row(spec, sites))
            state = "" if spec.active else " (inactive)"
            changes.created.append(f"route {spec.describe()}{state}")
        elif row.active != spec.active:
            row.active = spec.active
            changes.updated.append(
                f"route {spec.describe()}: active {not spec.active!r} -> {spec.active!r}"
            )
    for row in rows.values():
        if row.active:
            row.active = False
            changes.deactivated.append(f"route {describe_row(row)} (not in the topology)")
    return changes


def _new_row(spec: RouteSpec, sites: dict[str, Site]) -> DataTransferRoute:
    destination = sites[spec.destination]
    location: DataLocation | None = None
    if spec.type is RouteType.CUSTOM:
        location = next(loc for loc in destination.locations if loc.name == spec.location_name)
    return DataTransferRoute(
        route_type=spec.type,
        origin_site=sites[spec.origin],
        destination_site=destination,
        relay_site=sites[spec.relay] if spec.relay else None,
        destination_location=location,
        active=spec.active,
    )


def show_routes(session: Session) -> list[dict[str, Any]]:
    """Every stored route in the topology format (inactive ones with ``active: false``)."""
    out = []
    for row in _all_routes(session):
        origin, route_type, destination, relay, location = _key(row)
        entry: dict[str, Any] = {"origin": origin, "type": route_type, "destination": destination}
        if relay is not None:
            entry["relay"] = relay
        if location is not None:
            entry["location"] = location
        if not row.active:
            entry["active"] = False
        out.append(entry)
    return out
