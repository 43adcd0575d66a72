"""The sites-and-locations topology: load the YAML, validate all of it, apply it idempotently.

The YAML format is the contract of docs/configuration.md (``sites`` with their ``locations`` and a
``storage`` each, ``routes``: manual route overrides, and a ``policy`` section). Validation (the
pydantic models of :mod:`ccat_ops_db.topology_schema`, :mod:`ccat_ops_db.topology_routes` and
:mod:`ccat_ops_db.policy`) collects every problem before
anything is written and raises them together as one :class:`TopologyError` that names each entry
(``sites[1].locations[2] (cologne/lta)``) and the fix. Applying is one transaction that only
touches what differs: re-applying the same file issues no UPDATE; a location or site missing from
the file is deactivated, never deleted, because copies and history still point at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    PhysicalCopy,
    PolicySetting,
    RawDataFile,
    S3DataLocation,
    Site,
    StorageType,
    TapeDataLocation,
)
from ccat_ops_db.policy import POLICY_DEFAULTS, THRESHOLD_KEYS, validate_policy
from ccat_ops_db.topology_routes import ROUTE_KEYS, RouteSpec, validate_routes
from ccat_ops_db.topology_routes_apply import apply_routes, show_routes
from ccat_ops_db.topology_schema import (
    INGEST_KEYS,
    LOCATION_KEYS,
    SITE_KEYS,
    STORAGE_KEYS,
    TOP_LEVEL_KEYS,
    LocationSpec,
    SiteSpec,
    check_sites,
    validate_site,
)
from ccat_ops_db.validators import SAFE_IDENTIFIER, unknown_key

__all__ = [
    "INGEST_KEYS",
    "LOCATION_KEYS",
    "POLICY_DEFAULTS",
    "ROUTE_KEYS",
    "SAFE_IDENTIFIER",
    "SITE_KEYS",
    "STORAGE_KEYS",
    "THRESHOLD_KEYS",
    "TOP_LEVEL_KEYS",
    "ApplySummary",
    "LocationSpec",
    "RouteSpec",
    "SiteSpec",
    "Topology",
    "TopologyError",
    "apply_topology",
    "dump_topology",
    "load_topology",
    "parse_topology",
    "show_topology",
]

STORAGE_MODELS: dict[StorageType, type[DataLocation]] = {
    StorageType.DISK: DiskDataLocation,
    StorageType.S3: S3DataLocation,
    StorageType.TAPE: TapeDataLocation,
}

_RENAME_HINT = "add a new location with the new settings and set active: false on the old one"


class TopologyError(ValueError):
    """Every problem of a topology at once; nothing was written."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        where = f" {source}" if source else ""
        header = (
            f"invalid topology{where}: {len(errors)} problem(s); nothing was changed "
            "(fix them and apply again)"
        )
        super().__init__("\n".join([header, *(f"  - {e}" for e in errors)]))


@dataclass(frozen=True)
class Topology:
    sites: tuple[SiteSpec, ...]
    # Validated policy keys as given in the file (thresholds completed with their defaults).
    policy: dict[str, Any]
    # Manual route overrides (DIRECT, RELAY, CUSTOM), validated against ``sites``.
    routes: tuple[RouteSpec, ...] = ()


@dataclass
class ApplySummary:
    """What ``apply_topology`` changed, one human-readable entry per site/location/policy key."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deactivated or self.policy)

    def lines(self) -> list[str]:
        if not self.changed:
            return ["no changes: the database already matches the topology"]
        out = [f"created {e}" for e in self.created]
        out += [f"updated {e}" for e in self.updated]
        out += [f"deactivated {e}" for e in self.deactivated]
        out += [f"policy {e}" for e in self.policy]
        return out


# --------------------------------------------------------------------------- loading


def load_topology(source: str | Path) -> dict[str, Any]:
    """The raw mapping of a topology YAML file (not yet validated)."""
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError([f"cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError([f"{path} is not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise TopologyError([f"{path} must be a mapping with a 'sites' list (and 'policy')"])
    return data


def parse_topology(data: Mapping[str, Any], source: str | None = None) -> Topology:
    """Validate a raw topology mapping completely; raise one TopologyError listing every problem."""
    if not isinstance(data, Mapping):
        raise TopologyError(["the topology must be a mapping with a 'sites' list"], source)
    errors = [
        f"topology: {unknown_key(k, TOP_LEVEL_KEYS)}" for k in data if k not in TOP_LEVEL_KEYS
    ]
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, list) or not raw_sites:
        errors.append("sites: must be a non-empty list of sites")
        raw_sites = []
    sites: list[SiteSpec] = []
    for index, raw_site in enumerate(raw_sites):
        site, problems = validate_site(index, raw_site)
        errors += problems
        if site is not None:
            sites.append(site)
    policy, problems = validate_policy(data.get("policy"))
    errors += problems
    errors += check_sites(sites, complete=not errors)
    routes, problems = validate_routes(data.get("routes"), sites)
    errors += problems
    if errors:
        raise TopologyError(errors, source)
    return Topology(sites=tuple(sites), policy=policy, routes=tuple(routes))


# --------------------------------------------------------------------------- applying


def _as_topology(
    topology: Topology | Mapping[str, Any] | str | Path,
) -> tuple[Topology, str | None]:
    if isinstance(topology, Topology):
        return topology, None
    if isinstance(topology, str | Path):
        return parse_topology(load_topology(topology), source=str(topology)), str(topology)
    return parse_topology(topology), None


def _load_sites(session: Session) -> dict[str, Site]:
    sites = session.scalars(select(Site).options(selectinload(Site.locations))).all()
    return {site.short_name: site for site in sites}


def _holds_data(session: Session, location: DataLocation) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(RawDataFile.source_location_id == location.id)
                | exists().where(PhysicalCopy.data_location_id == location.id)
            )
        )
    )


def _check_against_database(
    session: Session, topology: Topology, existing: dict[str, Site], source: str | None
) -> None:
    errors: list[str] = []
    for spec in topology.sites:
        site = existing.get(spec.short_name)
        if site is None:
            continue
        by_name = {loc.name: loc for loc in site.locations}
        for loc_spec in spec.locations:
            loc = by_name.get(loc_spec.name)
            if loc is None:
                continue
            if loc.storage_type is not loc_spec.storage.kind:
                errors.append(
                    f"{loc_spec.where}: storage kind cannot change from "
                    f"{loc.storage_type.value} to {loc_spec.storage.kind.value} (copies there "
                    f"were recorded on the old storage); {_RENAME_HINT}"
                )
            if loc.location_type is not loc_spec.location_type and _holds_data(session, loc):
                errors.append(
                    f"{loc_spec.where}: type cannot change from {loc.location_type.value} to "
                    f"{loc_spec.location_type.value} because the location already holds data "
                    f"(its deletion rules would change under it); {_RENAME_HINT}"
                )
    # Site names are unique in the database, including sites the file no longer lists.
    in_file = {spec.short_name for spec in topology.sites}
    others = {site.name: short for short, site in existing.items() if short not in in_file}
    for spec in topology.sites:
        if spec.name in others:
            errors.append(
                f"{spec.where}: site name {spec.name!r} is used by site {others[spec.name]!r} in "
                "the database (deactivated, not deleted); choose another name"
            )
    if errors:
        raise TopologyError(errors, source)


def _sync(obj: Any, values: dict[str, Any]) -> list[str]:
    """Set only the attributes that differ (so an unchanged row gets no UPDATE); describe them."""
    changes = []
    for attr, value in values.items():
        old = getattr(obj, attr)
        if old != value:
            setattr(obj, attr, value)
            shown = [v.value if hasattr(v, "value") else v for v in (old, value)]
            changes.append(f"{attr} {shown[0]!r} -> {shown[1]!r}")
    return changes


def _location_values(spec: LocationSpec) -> dict[str, Any]:
    return {
        "location_type": spec.location_type,
        "priority": spec.priority,
        "active": spec.active,
        "retention_period_minutes": spec.retention_period_minutes,
        "ingest": spec.ingest.model_dump() if spec.ingest else None,
        **spec.storage.settings,
    }


def apply_topology(
    session: Session, topology: Topology | Mapping[str, Any] | str | Path
) -> ApplySummary:
    """Make the database match ``topology`` (a parsed Topology, a mapping or a YAML path).

    Validates everything first (file and database) and raises TopologyError before writing
    anything. Runs in the caller's transaction and flushes; the caller commits. Idempotent.
    """
    parsed, source = _as_topology(topology)
    existing = _load_sites(session)
    _check_against_database(session, parsed, existing, source)
    summary = ApplySummary()
    for spec in parsed.sites:
        _apply_site(session, spec, existing.get(spec.short_name), summary)
    in_file = {spec.short_name for spec in parsed.sites}
    for short, site in existing.items():
        if short in in_file:
            continue
        if site.active:
            site.active = False
            summary.deactivated.append(f"site {short} (not in the topology)")
        for loc in site.locations:
            if loc.active:
                loc.active = False
                summary.deactivated.append(f"{short}/{loc.name} (its site is not in the topology)")
    session.flush()  # new sites get their ids before routes refer to them
    routes = apply_routes(session, parsed.routes)
    summary.created += routes.created
    summary.updated += routes.updated
    summary.deactivated += routes.deactivated
    _apply_policy(session, parsed.policy, summary)
    session.flush()
    return summary


def _apply_site(session: Session, spec: SiteSpec, site: Site | None, summary: ApplySummary) -> None:
    site_values = {"name": spec.name, "location": spec.location, "active": spec.active}
    if site is None:
        site = Site(short_name=spec.short_name, **site_values)
        session.add(site)
        summary.created.append(f"site {spec.short_name}")
        by_name: dict[str, DataLocation] = {}
    else:
        changes = _sync(site, site_values)
        if changes:
            summary.updated.append(f"site {spec.short_name}: {', '.join(changes)}")
        by_name = {loc.name: loc for loc in site.locations}
    for loc_spec in spec.locations:
        qualified = f"{spec.short_name}/{loc_spec.name}"
        loc = by_name.get(loc_spec.name)
        if loc is None:
            model = STORAGE_MODELS[loc_spec.storage.kind]
            session.add(model(site=site, name=loc_spec.name, **_location_values(loc_spec)))
            summary.created.append(
                f"{qualified} ({loc_spec.location_type.value}, {loc_spec.storage.kind.value})"
            )
            continue
        changes = _sync(loc, _location_values(loc_spec))
        if changes:
            summary.updated.append(f"{qualified}: {', '.join(changes)}")
    listed = {loc_spec.name for loc_spec in spec.locations}
    for name, loc in by_name.items():
        if name not in listed and loc.active:
            loc.active = False
            summary.deactivated.append(f"{spec.short_name}/{name} (not in the topology)")


def _apply_policy(session: Session, policy: dict[str, Any], summary: ApplySummary) -> None:
    rows = {
        row.key: row
        for row in session.scalars(
            select(PolicySetting).where(PolicySetting.key.in_(list(POLICY_DEFAULTS)))
        )
    }
    for key, value in policy.items():
        row = rows.get(key)
        if row is None:
            session.add(PolicySetting(key=key, value=value))
            summary.policy.append(f"{key} set to {value!r}")
        elif row.value != value:
            summary.policy.append(f"{key} {row.value!r} -> {value!r}")
            row.value = value
    for key, row in rows.items():
        if key not in policy:
            # The file is the whole truth: a key removed from it falls back to its default.
            session.delete(row)
            summary.policy.append(f"{key} reset to default {POLICY_DEFAULTS[key]!r}")


# --------------------------------------------------------------------------- showing


def _location_as_dict(loc: DataLocation) -> dict[str, Any]:
    storage: dict[str, Any] = {"kind": loc.storage_type.value}
    for key in STORAGE_KEYS[loc.storage_type]:
        if key != "kind" and getattr(loc, key) is not None:
            storage[key] = getattr(loc, key)
    out: dict[str, Any] = {
        "name": loc.name,
        "type": loc.location_type.value,
        "priority": loc.priority,
        "active": loc.active,
    }
    if loc.retention_period_minutes is not None:
        out["retention_period_minutes"] = loc.retention_period_minutes
    out["storage"] = storage
    if loc.ingest is not None:
        out["ingest"] = {k: v for k, v in loc.ingest.items() if v is not None}
    return out


def show_topology(session: Session) -> dict[str, Any]:
    """The topology stored in the database, in the YAML format (re-applying it changes nothing)."""
    sites = session.scalars(
        select(Site).options(selectinload(Site.locations)).order_by(Site.id)
    ).all()
    out_sites = []
    for site in sites:
        entry: dict[str, Any] = {"short_name": site.short_name, "name": site.name}
        if site.location is not None:
            entry["location"] = site.location
        if not site.active:
            entry["active"] = False
        entry["locations"] = [
            _location_as_dict(loc) for loc in sorted(site.locations, key=lambda x: x.id)
        ]
        out_sites.append(entry)
    policy = {
        row.key: row.value
        for row in session.scalars(select(PolicySetting).order_by(PolicySetting.key))
        if row.key in POLICY_DEFAULTS
    }
    result: dict[str, Any] = {"sites": out_sites}
    routes = show_routes(session)
    if routes:
        result["routes"] = routes
    if policy:
        result["policy"] = policy
    return result


def dump_topology(topology: Mapping[str, Any]) -> str:
    """YAML text of a topology mapping, keys in contract order."""
    return yaml.safe_dump(dict(topology), sort_keys=False, default_flow_style=False)
