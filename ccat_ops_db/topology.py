"""The sites-and-locations topology: load the YAML, validate all of it, apply it idempotently.

The YAML format is the contract of docs/configuration.md (``sites`` with their ``locations`` and a
``storage`` each, plus a ``policy`` section). Validation collects every problem before anything is
written and raises them together as one :class:`TopologyError` that names each entry
(``sites[1].locations[2] (cologne/lta)``) and the fix. Applying is one transaction that only
touches what differs: re-applying the same file issues no UPDATE; a location or site missing from
the file is deactivated, never deleted, because copies and history still point at it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    PhysicalCopy,
    PolicySetting,
    RawDataFile,
    S3DataLocation,
    Site,
    StorageType,
    TapeDataLocation,
)

# Site and location names go into asset keys, pool names and package paths.
SAFE_IDENTIFIER = re.compile(r"^[a-z0-9_]+$")

TOP_LEVEL_KEYS = ("sites", "policy")
SITE_KEYS = ("short_name", "name", "location", "active", "locations")
LOCATION_KEYS = ("name", "type", "priority", "active", "retention_period_minutes", "storage")
STORAGE_KEYS: dict[StorageType, tuple[str, ...]] = {
    StorageType.DISK: ("kind", "path", "host", "port", "user", "known_hosts"),
    StorageType.S3: ("kind", "bucket", "endpoint_url", "prefix", "region"),
    StorageType.TAPE: ("kind", "library"),
}
STORAGE_MODELS: dict[StorageType, type[DataLocation]] = {
    StorageType.DISK: DiskDataLocation,
    StorageType.S3: S3DataLocation,
    StorageType.TAPE: TapeDataLocation,
}
THRESHOLD_KEYS = ("warning", "critical", "emergency")

# Keys and defaults of the ``policy`` section; ccat_dagster.lifecycle.policy.Policy mirrors them
# (a test keeps the two in step; this layer must not import the one above).
POLICY_DEFAULTS: dict[str, Any] = {
    "data_transfer_package_max_bytes": 100_000_000_000,
    "data_transfer_package_max_wait_minutes": 60,
    "retention_period_minutes": 43_200,
    "buffer_thresholds_percent": {"warning": 70, "critical": 85, "emergency": 95},
    "max_normal_transfers": 5,
    "max_critical_transfers": 1,
    "max_retries": 3,
}
# Smallest allowed value of each integer policy key.
_POLICY_INT_MINIMUM = {
    "data_transfer_package_max_bytes": 1,
    "data_transfer_package_max_wait_minutes": 0,
    "retention_period_minutes": 0,
    "max_normal_transfers": 1,
    "max_critical_transfers": 1,
    "max_retries": 0,
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


# --------------------------------------------------------------------------- parsed form


@dataclass(frozen=True)
class StorageSpec:
    kind: StorageType
    # Every column of the storage model except ``kind``; keys absent from the file are None.
    settings: dict[str, Any]


@dataclass(frozen=True)
class LocationSpec:
    name: str
    location_type: LocationType
    priority: int
    active: bool
    retention_period_minutes: int | None
    storage: StorageSpec
    where: str


@dataclass(frozen=True)
class SiteSpec:
    short_name: str
    name: str
    location: str | None
    active: bool
    locations: tuple[LocationSpec, ...]
    where: str


@dataclass(frozen=True)
class Topology:
    sites: tuple[SiteSpec, ...]
    # Validated policy keys as given in the file (thresholds completed with their defaults).
    policy: dict[str, Any]


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


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_keys(where: str, mapping: Mapping, allowed: Iterable[str], errors: list[str]) -> None:
    allowed = tuple(allowed)
    for key in mapping:
        if key in allowed:
            continue
        guess = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        errors.append(f"{where}: unknown key {key!r}; {hint}allowed: {', '.join(allowed)}")


def _check_identifier(where: str, what: str, value: Any, errors: list[str]) -> bool:
    if not isinstance(value, str) or not value:
        errors.append(f"{where}: {what} is missing; give a name of [a-z0-9_]")
        return False
    if not SAFE_IDENTIFIER.match(value):
        suggestion = re.sub(r"[^a-z0-9_]", "_", value.lower())
        errors.append(
            f"{where}: {what} {value!r} is not a safe identifier (only a-z, 0-9 and _, since it "
            f"goes into asset keys and pool names); e.g. {suggestion!r}"
        )
        return False
    return True


def _optional_str(where: str, key: str, value: Any, errors: list[str]) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        errors.append(f"{where}: {key} must be a non-empty string, got {value!r}")


def _parse_storage(where: str, raw: Any, errors: list[str]) -> StorageSpec | None:
    if not isinstance(raw, dict):
        errors.append(
            f"{where}: storage is missing or not a mapping; e.g. "
            "storage: {kind: disk, path: /data/buffer} or {kind: s3, bucket: ccat-lta}"
        )
        return None
    kinds = {k.value: k for k in StorageType}
    kind = kinds.get(raw.get("kind"))
    if kind is None:
        errors.append(
            f"{where}: unknown storage kind {raw.get('kind')!r}; use one of: {', '.join(kinds)}"
        )
        return None
    _check_keys(f"{where}.storage", raw, STORAGE_KEYS[kind], errors)
    settings = {k: raw.get(k) for k in STORAGE_KEYS[kind] if k != "kind"}
    for key, value in settings.items():
        if key != "port":
            _optional_str(where, f"storage.{key}", value, errors)
    if kind is StorageType.DISK:
        path = settings["path"]
        if not path:
            errors.append(f"{where}: disk storage needs a path, e.g. path: /data/buffer")
        elif isinstance(path, str) and not PurePosixPath(path).is_absolute():
            errors.append(f"{where}: disk path {path!r} must be absolute (start with /)")
        port = settings["port"]
        if port is not None and not (_is_int(port) and 0 < port < 65536):
            errors.append(f"{where}: storage.port must be a TCP port (1-65535), got {port!r}")
    elif kind is StorageType.S3 and not settings["bucket"]:
        errors.append(f"{where}: s3 storage needs a bucket, e.g. bucket: ccat-lta")
    return StorageSpec(kind=kind, settings=settings)


def _parse_location(where: str, raw: Any, errors: list[str]) -> LocationSpec | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: a location must be a mapping with name, type and storage")
        return None
    _check_keys(where, raw, LOCATION_KEYS, errors)
    ok = _check_identifier(where, "location name", raw.get("name"), errors)
    types = {t.value: t for t in LocationType}
    location_type = types.get(raw.get("type"))
    if location_type is None:
        errors.append(
            f"{where}: unknown location type {raw.get('type')!r}; use one of: {', '.join(types)}"
        )
    priority = raw.get("priority", 1)
    if not (_is_int(priority) and priority >= 0):
        errors.append(
            f"{where}: priority must be a whole number >= 0 (1 = first), got {priority!r}"
        )
    active = raw.get("active", True)
    if not isinstance(active, bool):
        errors.append(f"{where}: active must be true or false, got {active!r}")
    retention = raw.get("retention_period_minutes")
    if retention is not None and not (_is_int(retention) and retention >= 0):
        errors.append(f"{where}: retention_period_minutes must be minutes >= 0, got {retention!r}")
    storage = _parse_storage(where, raw.get("storage"), errors)
    if (
        location_type is LocationType.SOURCE
        and storage is not None
        and storage.kind is not StorageType.DISK
    ):
        errors.append(
            f"{where}: a SOURCE location must be on disk storage (instruments write files "
            f"there and they are registered from the filesystem), not {storage.kind.value}"
        )
    if not ok or location_type is None or storage is None:
        return None
    return LocationSpec(
        name=raw["name"],
        location_type=location_type,
        priority=priority,
        active=active,
        retention_period_minutes=retention,
        storage=storage,
        where=where,
    )


def _parse_site(index: int, raw: Any, errors: list[str]) -> SiteSpec | None:
    short = raw.get("short_name") if isinstance(raw, dict) else None
    where = f"sites[{index}]" + (f" ({short})" if isinstance(short, str) else "")
    if not isinstance(raw, dict):
        errors.append(f"{where}: a site must be a mapping with short_name, name and locations")
        return None
    _check_keys(where, raw, SITE_KEYS, errors)
    ok = _check_identifier(where, "short_name", short, errors)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(
            f"{where}: name (the full site name, e.g. 'University of Cologne') is missing"
        )
        ok = False
    _optional_str(where, "location", raw.get("location"), errors)
    active = raw.get("active", True)
    if not isinstance(active, bool):
        errors.append(f"{where}: active must be true or false, got {active!r}")
    raw_locations = raw.get("locations")
    if not isinstance(raw_locations, list) or not raw_locations:
        errors.append(f"{where}: locations must be a non-empty list")
        raw_locations = []
    locations: list[LocationSpec] = []
    seen: dict[str, int] = {}
    for j, raw_location in enumerate(raw_locations):
        lname = raw_location.get("name") if isinstance(raw_location, dict) else None
        lwhere = f"sites[{index}].locations[{j}]" + (
            f" ({short}/{lname})" if isinstance(lname, str) else ""
        )
        spec = _parse_location(lwhere, raw_location, errors)
        if spec is None:
            continue
        if spec.name in seen:
            errors.append(
                f"{lwhere}: duplicate location name {spec.name!r} in site {short!r} (also "
                f"locations[{seen[spec.name]}]); give each location of a site its own name"
            )
            continue
        seen[spec.name] = j
        locations.append(spec)
    if active is False:
        for spec in locations:
            if spec.active:
                errors.append(
                    f"{spec.where}: site {short!r} is inactive (active: false) but this location "
                    "is active; set active: false on the location too"
                )
    if not ok:
        return None
    return SiteSpec(
        short_name=short,
        name=name.strip(),
        location=raw.get("location"),
        active=active is not False,
        locations=tuple(locations),
        where=where,
    )


def _parse_policy(raw: Any, errors: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append("policy: must be a mapping, e.g. policy: {max_normal_transfers: 5}")
        return {}
    _check_keys("policy", raw, POLICY_DEFAULTS, errors)
    policy: dict[str, Any] = {}
    for key, minimum in _POLICY_INT_MINIMUM.items():
        if key not in raw:
            continue
        value = raw[key]
        if not (_is_int(value) and value >= minimum):
            errors.append(f"policy.{key}: must be a whole number >= {minimum}, got {value!r}")
        else:
            policy[key] = value
    normal = policy.get("max_normal_transfers", POLICY_DEFAULTS["max_normal_transfers"])
    critical = policy.get("max_critical_transfers", POLICY_DEFAULTS["max_critical_transfers"])
    if critical > normal:
        errors.append(
            f"policy: max_critical_transfers ({critical}) must not exceed max_normal_transfers "
            f"({normal}): a full buffer must slow transfers down, not speed them up"
        )
    if "buffer_thresholds_percent" in raw:
        thresholds = _parse_thresholds(raw["buffer_thresholds_percent"], errors)
        if thresholds is not None:
            policy["buffer_thresholds_percent"] = thresholds
    return policy


def _parse_thresholds(raw: Any, errors: list[str]) -> dict[str, float] | None:
    where = "policy.buffer_thresholds_percent"
    if not isinstance(raw, dict):
        errors.append(
            f"{where}: must be a mapping, e.g. {{warning: 70, critical: 85, emergency: 95}}"
        )
        return None
    n_errors = len(errors)
    _check_keys(where, raw, THRESHOLD_KEYS, errors)
    merged = {**POLICY_DEFAULTS["buffer_thresholds_percent"], **raw}
    for key in THRESHOLD_KEYS:
        if not _is_number(merged[key]):
            errors.append(f"{where}.{key}: must be a number (percent), got {merged[key]!r}")
    if len(errors) > n_errors:
        return None
    w, c, e = (merged[k] for k in THRESHOLD_KEYS)
    if not 0 < w < c < e <= 100:
        errors.append(
            f"{where}: need 0 < warning < critical < emergency <= 100, got warning={w}, "
            f"critical={c}, emergency={e}"
        )
        return None
    return {k: merged[k] for k in THRESHOLD_KEYS}


def parse_topology(data: Mapping[str, Any], source: str | None = None) -> Topology:
    """Validate a raw topology mapping completely; raise one TopologyError listing every problem."""
    errors: list[str] = []
    if not isinstance(data, Mapping):
        raise TopologyError(["the topology must be a mapping with a 'sites' list"], source)
    _check_keys("topology", data, TOP_LEVEL_KEYS, errors)
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, list) or not raw_sites:
        errors.append("sites: must be a non-empty list of sites")
        raw_sites = []
    sites: list[SiteSpec] = []
    short_names: dict[str, int] = {}
    names: dict[str, int] = {}
    for i, raw_site in enumerate(raw_sites):
        spec = _parse_site(i, raw_site, errors)
        if spec is None:
            continue
        if spec.short_name in short_names:
            errors.append(
                f"{spec.where}: duplicate site short_name {spec.short_name!r} (also "
                f"sites[{short_names[spec.short_name]}]); merge the two entries"
            )
            continue
        if spec.name in names:
            errors.append(
                f"{spec.where}: site name {spec.name!r} is already used by "
                f"sites[{names[spec.name]}]; site names must be unique"
            )
            continue
        short_names[spec.short_name] = i
        names[spec.name] = i
        sites.append(spec)
    policy = _parse_policy(data.get("policy"), errors)
    _check_whole_topology(sites, errors, complete=not errors)
    if errors:
        raise TopologyError(errors, source)
    return Topology(sites=tuple(sites), policy=policy)


def _check_whole_topology(sites: list[SiteSpec], errors: list[str], complete: bool) -> None:
    prefixes: dict[str, str] = {}
    for site in sites:
        for loc in site.locations:
            # Pool names are "{site}_{location}_{operation}": two entries must not share a prefix.
            prefix = f"{site.short_name}_{loc.name}"
            if prefix in prefixes:
                errors.append(
                    f"{loc.where}: its pool names ({prefix}_...) collide with those of "
                    f"{prefixes[prefix]}; rename one of the two"
                )
            prefixes[prefix] = loc.where
        active = [loc for loc in site.locations if loc.active]
        has_source = any(loc.location_type is LocationType.SOURCE for loc in active)
        has_buffer = any(loc.location_type is LocationType.BUFFER for loc in active)
        if site.active and has_source and not has_buffer:
            errors.append(
                f"{site.where}: has an active SOURCE location but no active BUFFER; raw data "
                "packages are built into a buffer, so add one (type: BUFFER) or activate one"
            )
    # Only meaningful when every site parsed; otherwise a typo elsewhere would cause a false alarm.
    if complete and not any(
        loc.location_type is LocationType.LONG_TERM_ARCHIVE and loc.active
        for site in sites
        if site.active
        for loc in site.locations
    ):
        errors.append(
            "sites: no active LONG_TERM_ARCHIVE location anywhere; data could never be archived "
            "(and so never safely deleted); add one (type: LONG_TERM_ARCHIVE)"
        )


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
    if policy:
        result["policy"] = policy
    return result


def dump_topology(topology: Mapping[str, Any]) -> str:
    """YAML text of a topology mapping, keys in contract order."""
    return yaml.safe_dump(dict(topology), sort_keys=False, default_flow_style=False)
