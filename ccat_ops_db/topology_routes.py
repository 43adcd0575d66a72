"""The ``routes`` section of the topology file: manual route overrides (DIRECT, RELAY, CUSTOM),
validated against the file's sites, and how a route reads (``ccat -> RELAY via hub -> us``).

Each route sends every bundle made at its ``origin`` site somewhere else than the round-robin
would (docs/lifecycle.md: routes). ``validate_routes`` checks each route on its own and then
the rules across routes (one active route per origin, no relay loops); every message names the
route (``routes[1] (ccat -> RELAY via hub -> us)``) and what to fix. An active route that
names an inactive site (or location) is refused, not skipped: a route that silently does
nothing would send the data round-robin against the operator's intent. Writing the rows:
:mod:`ccat_ops_db.topology_routes_apply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

from ccat_ops_db.models import LocationType, RouteType
from ccat_ops_db.topology_schema import LocationSpec, SiteSpec
from ccat_ops_db.validators import boolean, fail, identifier, messages

#: a key every route must have: missing, its validator says what to write
_REQUIRED: Any = Field(default=None, validate_default=True)
_TYPES = ", ".join(t.value for t in RouteType)


def _route_type(value: Any) -> Any:
    types = {t.value: t for t in RouteType}
    if value not in types:
        fail(f"unknown route type {value!r}; use one of: {_TYPES}")
    return types[value]


def _optional_site(what: str) -> Any:
    check = identifier(f"{what} (a site short_name)")
    return lambda value: value if value is None else check(value)


def _location_ref(value: Any) -> Any:
    """``name`` (a location of the destination site) or ``site/name``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        fail(f"location must be a location name of the destination site, got {value!r}")
    for part in value.split("/", 1):
        identifier("location")(part)
    return value


class RouteSpec(BaseModel):
    """One entry of ``routes``: bundles of ``origin`` go to ``destination`` (DIRECT: its primary
    buffer; CUSTOM: its buffer ``location``; RELAY: first to the primary buffer of ``relay``)."""

    model_config = ConfigDict(extra="forbid")
    _where: str = PrivateAttr(default="")

    origin: Annotated[str, BeforeValidator(identifier("origin (a site short_name)"))] = _REQUIRED
    type: Annotated[RouteType, BeforeValidator(_route_type)] = _REQUIRED
    destination: Annotated[str, BeforeValidator(identifier("destination (a site short_name)"))] = (
        _REQUIRED
    )
    relay: Annotated[str | None, BeforeValidator(_optional_site("relay"))] = None
    location: Annotated[str | None, BeforeValidator(_location_ref)] = None
    active: Annotated[bool, BeforeValidator(boolean("active"))] = True

    @property
    def where(self) -> str:
        return self._where

    @property
    def location_name(self) -> str | None:
        """The destination location's name (without a ``site/`` prefix)."""
        return None if self.location is None else self.location.rsplit("/", 1)[-1]

    @property
    def key(self) -> tuple[str, str, str, str | None, str | None]:
        """What identifies a route across applies (``active`` is its state, not its identity)."""
        return (self.origin, self.type.value, self.destination, self.relay, self.location_name)

    def describe(self) -> str:
        return describe(self.origin, self.type, self.destination, self.relay, self.location_name)


ROUTE_KEYS: tuple[str, ...] = tuple(RouteSpec.model_fields)


def describe(
    origin: str,
    route_type: RouteType,
    destination: str,
    relay: str | None = None,
    location: str | None = None,
) -> str:
    """How a route reads: ``ccat -> DIRECT -> us``, ``ccat -> RELAY via hub -> us``,
    ``ccat -> CUSTOM -> us/intake``."""
    if route_type is RouteType.RELAY:
        return f"{origin} -> RELAY via {relay} -> {destination}"
    if route_type is RouteType.CUSTOM:
        return f"{origin} -> CUSTOM -> {destination}/{location}"
    return f"{origin} -> {route_type.value} -> {destination}"


# --------------------------------------------------------------------------- one route


def _where(index: int, raw: Any) -> str:
    if isinstance(raw, dict):
        try:
            text = describe(
                str(raw.get("origin")),
                RouteType(raw.get("type")),
                str(raw.get("destination")),
                raw.get("relay"),
                str(raw.get("location", "")).rsplit("/", 1)[-1] or None,
            )
            return f"routes[{index}] ({text})"
        except ValueError:
            pass
    return f"routes[{index}]"


def _parse(index: int, raw: Any) -> tuple[RouteSpec | None, list[str]]:
    where = _where(index, raw)
    if not isinstance(raw, dict):
        return None, [f"{where}: a route must be a mapping with origin, type and destination"]
    try:
        route = RouteSpec.model_validate(raw)
    except ValidationError as exc:
        return None, messages(
            exc.errors(),
            where=lambda loc: where,
            keys_of=lambda loc: ROUTE_KEYS,
            not_a_mapping=lambda loc: "a route must be a mapping with origin, type and destination",
        )
    route._where = where
    return route, []


def _has(site: SiteSpec, location_type: LocationType) -> bool:
    return any(loc.active and loc.type is location_type for loc in site.locations)


def _shape(route: RouteSpec) -> list[str]:
    """The keys each type needs, and only those."""
    errors = []
    if route.type is RouteType.RELAY and route.relay is None:
        errors.append("a RELAY route needs relay: <site short_name> (the intermediate site)")
    if route.type is not RouteType.RELAY and route.relay is not None:
        errors.append("relay is only for RELAY routes; remove it or use type: RELAY")
    if route.type is RouteType.CUSTOM and route.location is None:
        errors.append("a CUSTOM route needs location: <a BUFFER of the destination site>")
    if route.type is not RouteType.CUSTOM and route.location is not None:
        errors.append("location is only for CUSTOM routes; remove it or use type: CUSTOM")
    return errors


def _known(route: RouteSpec, sites: dict[str, SiteSpec]) -> list[str]:
    known = ", ".join(sorted(sites)) or "none"
    errors = []
    for role in ("origin", "destination", "relay"):
        name = getattr(route, role)
        if name is not None and name not in sites:
            errors.append(f"{role} {name!r} is not a site of the topology (sites: {known})")
    return errors


def _custom_location(
    route: RouteSpec, sites: dict[str, SiteSpec]
) -> tuple[LocationSpec | None, list[str]]:
    assert route.location is not None
    site_name, _, name = route.location.rpartition("/")
    if site_name and site_name != route.destination:
        return None, [
            f"location {route.location!r} is at site {site_name!r}, not at the destination "
            f"{route.destination!r}; name a BUFFER of {route.destination!r} or change the "
            "destination"
        ]
    site = sites[route.destination]
    loc = next((loc for loc in site.locations if loc.name == name), None)
    if loc is None:
        names = ", ".join(loc.name for loc in site.locations)
        return None, [
            f"location {name!r} is not a location of site {route.destination!r} "
            f"(its locations: {names})"
        ]
    return loc, []


def _check_active(route: RouteSpec, sites: dict[str, SiteSpec]) -> list[str]:
    """The rules of an active route whose sites are all known."""
    origin, destination = sites[route.origin], sites[route.destination]
    relay = sites[route.relay] if route.relay else None
    errors = []
    for role, site in (("origin", origin), ("destination", destination), ("relay", relay)):
        if site is not None and not site.active:
            errors.append(
                f"{role} site {site.short_name!r} is inactive; activate it, or set active: false "
                "on the route (an active route to an inactive site is refused, not skipped)"
            )
    if errors:
        return errors
    if not _has(origin, LocationType.SOURCE):
        errors.append(
            f"origin {route.origin!r} has no active SOURCE location, so it makes no bundles and "
            "the route would never apply; route from the site where the data originates"
        )
    if route.destination == route.origin:
        errors.append("destination is the origin itself; name another site")
    if not _has(destination, LocationType.LONG_TERM_ARCHIVE):
        errors.append(
            f"destination {route.destination!r} has no active LONG_TERM_ARCHIVE: bundles are "
            "unpacked and archived only at archive sites, so the data would never be archived; "
            "route to an archive site"
        )
    if route.type is not RouteType.CUSTOM and not _has(destination, LocationType.BUFFER):
        errors.append(
            f"destination {route.destination!r} has no active BUFFER to receive the bundles; "
            "add or activate one"
        )
    if relay is not None:
        if route.relay in (route.origin, route.destination):
            role = "origin" if route.relay == route.origin else "destination"
            errors.append(
                f"relay {route.relay!r} is the route's {role} (a loop); relay through a third site"
            )
        elif not _has(relay, LocationType.BUFFER):
            errors.append(
                f"relay site {route.relay!r} has no active BUFFER to pass the bundles through; "
                "add or activate one there"
            )
    if route.type is RouteType.CUSTOM:
        loc, problems = _custom_location(route, sites)
        errors += problems
        if loc is not None and loc.type is not LocationType.BUFFER:
            errors.append(
                f"location {route.destination}/{loc.name} is a {loc.type.value}, not a BUFFER: "
                "bundles are received and unpacked in a buffer and archived from there; name a "
                f"BUFFER of {route.destination!r}"
            )
        elif loc is not None and not loc.active:
            errors.append(
                f"location {route.destination}/{loc.name} is inactive; activate it or name "
                "another BUFFER"
            )
    return errors


def _check(route: RouteSpec, sites: dict[str, SiteSpec]) -> list[str]:
    errors = _shape(route) or _known(route, sites)
    if not errors and route.type is RouteType.CUSTOM:
        errors = _custom_location(route, sites)[1]
    if not errors and route.active:
        errors = _check_active(route, sites)
    return [f"{route.where}: {e}" for e in errors]


# --------------------------------------------------------------------------- across routes


def _edges(route: RouteSpec) -> list[tuple[str, str]]:
    if route.relay is not None:
        return [(route.origin, route.relay), (route.relay, route.destination)]
    return [(route.origin, route.destination)]


def _loops(routes: Sequence[RouteSpec]) -> list[str]:
    """Active routes whose hops form a cycle (e.g. two routes relaying into each other)."""
    graph: dict[str, list[tuple[str, RouteSpec]]] = {}
    for route in routes:
        for a, b in _edges(route):
            graph.setdefault(a, []).append((b, route))
    errors: list[str] = []
    reported: set[frozenset[str]] = set()

    def walk(node: str, path: list[str], used: list[RouteSpec]) -> None:
        for nxt, route in graph.get(node, []):
            if nxt in path:
                involved = [*used[path.index(nxt) :], route]
                ids = frozenset(r.where for r in involved)
                if ids not in reported:
                    reported.add(ids)
                    cycle = " -> ".join([*path[path.index(nxt) :], nxt])
                    names = " and ".join(sorted(ids))
                    errors.append(
                        f"{names}: the routes form a loop ({cycle}); bundles would circle "
                        "between these sites; deactivate or change one of them"
                    )
                continue
            walk(nxt, [*path, nxt], [*used, route])

    for start in sorted(graph):
        walk(start, [start], [])
    return errors


def _across(routes: Sequence[RouteSpec]) -> list[str]:
    errors = []
    seen: dict[tuple[Any, ...], str] = {}
    active_from: dict[str, str] = {}
    for route in routes:
        if route.key in seen:
            errors.append(f"{route.where}: the same route as {seen[route.key]}; remove one")
            continue
        seen[route.key] = route.where
        if not route.active:
            continue
        if route.origin in active_from:
            errors.append(
                f"{route.where}: origin {route.origin!r} already has an active route "
                f"({active_from[route.origin]}); which one applies would be ambiguous, so keep "
                "one active (set active: false on the other)"
            )
            continue
        active_from[route.origin] = route.where
    return errors + _loops([r for r in routes if r.active])


def validate_routes(raw: Any, sites: Sequence[SiteSpec]) -> tuple[list[RouteSpec], list[str]]:
    """The ``routes`` section (None: no routes) against the file's (valid) sites."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], ["routes: must be a list of routes (origin, type, destination, ...)"]
    by_name = {site.short_name: site for site in sites}
    routes: list[RouteSpec] = []
    errors: list[str] = []
    for index, entry in enumerate(raw):
        route, problems = _parse(index, entry)
        if route is None:
            errors += problems
            continue
        problems = _check(route, by_name)
        errors += problems
        if not problems:
            routes.append(route)
    return routes, errors + _across(routes)
