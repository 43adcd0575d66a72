"""The topology file's sites, locations and storages as pydantic models, with the rules that span
entries (unique names, pool names, a buffer for every source, an archive somewhere).

``validate_sites`` validates each site on its own and the cross-entry rules over the sites that
are valid, so one run reports every problem; each message names the entry
(``sites[1].locations[2] (cologne/lta)``) and the fix. What the keys mean: docs/configuration.md.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    model_validator,
)

from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import LocationType, StorageType
from ccat_ops_db.validators import (
    boolean,
    fail,
    identifier,
    is_int,
    messages,
    optional_text,
    optional_whole_number,
    whole_number,
)

_CONFIG = ConfigDict(extra="forbid")
_RequiredText = Field(default=None, validate_default=True)


def _text(what: str) -> Any:
    return BeforeValidator(optional_text(what))


# --------------------------------------------------------------------------- storage


def _disk_path(value: Any) -> Any:
    if value is None or value == "":
        fail("disk storage needs a path, e.g. path: /data/buffer")
    optional_text("storage.path")(value)
    if not PurePosixPath(value).is_absolute():
        fail(f"disk path {value!r} must be absolute (start with /)")
    return value


def _port(value: Any) -> Any:
    if value is not None and not (is_int(value) and 0 < value < 65536):
        fail(f"storage.port must be a TCP port (1-65535), got {value!r}")
    return value


def _bucket(value: Any) -> Any:
    if value is None or value == "":
        fail("s3 storage needs a bucket, e.g. bucket: ccat-lta")
    return optional_text("storage.bucket")(value)


class _Storage(BaseModel):
    model_config = _CONFIG
    #: which model validates a storage mapping is chosen by its kind (the discriminator below)
    kind: StorageType

    @property
    def settings(self) -> dict[str, Any]:
        """Every column of the storage model except ``kind``; keys absent from the file: None."""
        return self.model_dump(exclude={"kind"})


class DiskStorage(_Storage):
    path: Annotated[str, BeforeValidator(_disk_path)] = _RequiredText
    host: Annotated[str | None, _text("storage.host")] = None
    port: Annotated[int | None, BeforeValidator(_port)] = None
    user: Annotated[str | None, _text("storage.user")] = None
    known_hosts: Annotated[str | None, _text("storage.known_hosts")] = None


class S3Storage(_Storage):
    bucket: Annotated[str, BeforeValidator(_bucket)] = _RequiredText
    endpoint_url: Annotated[str | None, _text("storage.endpoint_url")] = None
    prefix: Annotated[str | None, _text("storage.prefix")] = None
    region: Annotated[str | None, _text("storage.region")] = None


class TapeStorage(_Storage):
    library: Annotated[str | None, _text("storage.library")] = None


STORAGE_CLASSES: dict[StorageType, type[_Storage]] = {
    StorageType.DISK: DiskStorage,
    StorageType.S3: S3Storage,
    StorageType.TAPE: TapeStorage,
}
STORAGE_KEYS: dict[StorageType, tuple[str, ...]] = {
    kind: tuple(cls.model_fields) for kind, cls in STORAGE_CLASSES.items()
}


def _storage(value: Any) -> Any:
    if not isinstance(value, dict):
        fail(
            "storage is missing or not a mapping; e.g. "
            "storage: {kind: disk, path: /data/buffer} or {kind: s3, bucket: ccat-lta}"
        )
    if value.get("kind") not in {k.value for k in StorageType}:
        fail(
            f"unknown storage kind {value.get('kind')!r}; use one of: "
            f"{', '.join(k.value for k in StorageType)}"
        )
    return value


def _kind(value: Any) -> str:
    return str(value.get("kind")) if isinstance(value, dict) else value.kind.value


Storage = Annotated[
    Annotated[
        Annotated[DiskStorage, Tag(StorageType.DISK.value)]
        | Annotated[S3Storage, Tag(StorageType.S3.value)]
        | Annotated[TapeStorage, Tag(StorageType.TAPE.value)],
        Discriminator(_kind),
    ],
    BeforeValidator(_storage),
]


# --------------------------------------------------------------------------- locations, sites


def _location_type(value: Any) -> Any:
    types = {t.value: t for t in LocationType}
    if value not in types:
        fail(f"unknown location type {value!r}; use one of: {', '.join(types)}")
    return types[value]


class _Entry(BaseModel):
    model_config = _CONFIG
    _where: str = PrivateAttr(default="")

    @property
    def where(self) -> str:
        """The entry in the file, e.g. ``sites[1].locations[2] (cologne/lta)``."""
        return self._where


class LocationSpec(_Entry):
    name: Annotated[str, BeforeValidator(identifier("location name"))] = _RequiredText
    type: Annotated[LocationType, BeforeValidator(_location_type)] = _RequiredText
    priority: Annotated[
        int,
        BeforeValidator(
            whole_number(0, "priority must be a whole number >= 0 (1 = first), got {value}")
        ),
    ] = 1
    active: Annotated[bool, BeforeValidator(boolean("active"))] = True
    retention_period_minutes: Annotated[
        int | None,
        BeforeValidator(
            optional_whole_number(0, "retention_period_minutes must be minutes >= 0, got {value}")
        ),
    ] = None
    storage: Storage = _RequiredText
    ingest: IngestSpec | None = None

    @property
    def location_type(self) -> LocationType:
        return self.type

    @model_validator(mode="after")
    def _source_on_disk(self) -> LocationSpec:
        if self.type is LocationType.SOURCE and self.storage.kind is not StorageType.DISK:
            fail(
                "a SOURCE location must be on disk storage (instruments write files there and "
                f"they are registered from the filesystem), not {self.storage.kind.value}"
            )
        if self.ingest is not None and self.type is not LocationType.SOURCE:
            fail(
                f"ingest is set on a {self.type.value} location; new raw data files are detected "
                "only at SOURCE locations, so remove the ingest key here"
            )
        return self


def _site_name(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        fail("name (the full site name, e.g. 'University of Cologne') is missing")
    return value.strip()


def _locations(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        fail("locations must be a non-empty list")
    return value


class SiteSpec(_Entry):
    short_name: Annotated[str, BeforeValidator(identifier("short_name"))] = _RequiredText
    name: Annotated[str, BeforeValidator(_site_name)] = _RequiredText
    location: Annotated[str | None, _text("location")] = None
    active: Annotated[bool, BeforeValidator(boolean("active"))] = True
    locations: Annotated[list[LocationSpec], BeforeValidator(_locations)] = _RequiredText


TOP_LEVEL_KEYS = ("sites", "routes", "policy")
SITE_KEYS: tuple[str, ...] = tuple(SiteSpec.model_fields)
LOCATION_KEYS: tuple[str, ...] = tuple(LocationSpec.model_fields)
INGEST_KEYS: tuple[str, ...] = tuple(IngestSpec.model_fields)


# --------------------------------------------------------------------------- validation


def _site_where(index: int, raw: Any) -> str:
    short = raw.get("short_name") if isinstance(raw, dict) else None
    return f"sites[{index}]" + (f" ({short})" if isinstance(short, str) else "")


def _location_where(index: int, raw_site: Any, j: int) -> str:
    short = raw_site.get("short_name")
    raw = raw_site.get("locations")[j]
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"sites[{index}].locations[{j}]" + (
        f" ({short}/{name})" if isinstance(name, str) else ""
    )


def _site_messages(index: int, raw: dict[str, Any], exc: ValidationError) -> list[str]:
    def where(loc: tuple[Any, ...]) -> str:
        if len(loc) >= 2 and loc[0] == "locations" and isinstance(loc[1], int):
            entry = _location_where(index, raw, loc[1])
            # an unknown key inside the storage mapping: its container is "<location>.storage"
            return f"{entry}.storage" if loc[2:3] == ("storage",) and len(loc) == 4 else entry
        return _site_where(index, raw)

    def keys_of(loc: tuple[Any, ...]) -> tuple[str, ...]:
        if len(loc) == 4 and loc[2] == "storage":
            return STORAGE_KEYS[StorageType(loc[3])]
        if loc[2:] == ("ingest",):
            return INGEST_KEYS
        return LOCATION_KEYS if loc[:1] == ("locations",) else SITE_KEYS

    def not_a_mapping(loc: tuple[Any, ...]) -> str:
        if loc[2:3] == ("ingest",):
            return "ingest must be a mapping with pattern (and ready, marker, settle_seconds)"
        if loc[:1] == ("locations",):
            return "a location must be a mapping with name, type and storage"
        return "a site must be a mapping with short_name, name and locations"

    return messages(exc.errors(), where=where, keys_of=keys_of, not_a_mapping=not_a_mapping)


def validate_site(index: int, raw: Any) -> tuple[SiteSpec | None, list[str]]:
    """One site entry: the validated site, or None and the messages of its problems."""
    if not isinstance(raw, dict):
        where = _site_where(index, raw)
        return None, [f"{where}: a site must be a mapping with short_name, name and locations"]
    try:
        site = SiteSpec.model_validate(raw)
    except ValidationError as exc:
        return None, _site_messages(index, raw, exc)
    site._where = _site_where(index, raw)
    for j, location in enumerate(site.locations):
        location._where = _location_where(index, raw, j)
    return site, _check_site(site)


def _check_site(site: SiteSpec) -> list[str]:
    errors = []
    seen: dict[str, int] = {}
    for j, loc in enumerate(site.locations):
        if loc.name in seen:
            errors.append(
                f"{loc.where}: duplicate location name {loc.name!r} in site {site.short_name!r} "
                f"(also locations[{seen[loc.name]}]); give each location of a site its own name"
            )
        seen.setdefault(loc.name, j)
        if not site.active and loc.active:
            errors.append(
                f"{loc.where}: site {site.short_name!r} is inactive (active: false) but this "
                "location is active; set active: false on the location too"
            )
    active = {loc.type for loc in site.locations if loc.active}
    if site.active and LocationType.SOURCE in active and LocationType.BUFFER not in active:
        errors.append(
            f"{site.where}: has an active SOURCE location but no active BUFFER; raw data "
            "packages are built into a buffer, so add one (type: BUFFER) or activate one"
        )
    return errors


def check_sites(sites: list[SiteSpec], *, complete: bool) -> list[str]:
    """Rules across sites, over the valid ones; ``complete``: every entry of the file is valid
    (only then is a missing archive a real finding, not the echo of a typo elsewhere)."""
    errors = []
    short_names: dict[str, str] = {}
    names: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for site in sites:
        index = site.where.split(" ")[0]
        if site.short_name in short_names:
            errors.append(
                f"{site.where}: duplicate site short_name {site.short_name!r} (also "
                f"{short_names[site.short_name]}); merge the two entries"
            )
            continue
        if site.name in names:
            errors.append(
                f"{site.where}: site name {site.name!r} is already used by "
                f"{names[site.name]}; site names must be unique"
            )
            continue
        short_names[site.short_name] = names[site.name] = index
        seen: set[str] = set()
        for loc in site.locations:
            if loc.name in seen:
                continue  # a duplicate location name, reported by validate_site
            seen.add(loc.name)
            # Pool names are "{site}_{location}_{operation}": two entries must not share a prefix.
            prefix = f"{site.short_name}_{loc.name}"
            if prefix in prefixes:
                errors.append(
                    f"{loc.where}: its pool names ({prefix}_...) collide with those of "
                    f"{prefixes[prefix]}; rename one of the two"
                )
            prefixes.setdefault(prefix, loc.where)
    if complete and not any(
        loc.type is LocationType.LONG_TERM_ARCHIVE and loc.active
        for site in sites
        if site.active
        for loc in site.locations
    ):
        errors.append(
            "sites: no active LONG_TERM_ARCHIVE location anywhere; data could never be archived "
            "(and so never safely deleted); add one (type: LONG_TERM_ARCHIVE)"
        )
    return errors
