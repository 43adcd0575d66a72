"""A read-only snapshot of the topology in the ops DB, taken when a code location loads.

Assets are generated from it, so adding a site or an LTA is a topology change plus a reload of
the code locations, not a code change. A deactivated location that still holds copies the
deletion rules look at is *draining*: it has no stage, asset or pool any more, but its site's
cleanup keeps a deletion step for it until it is empty, so it can be retired (and the SOURCE
files whose release waits for its package copies are released).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.integrity.holdings import HOLDING_STATUSES
from ccat_ops_db.config import ops_db_url
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    PhysicalCopy,
    Site,
    location_pool_prefix,
    qualified_location_name,
)
from ccat_ops_db.session import session_factory


@dataclass(frozen=True)
class LocationView:
    site: str
    name: str
    location_type: LocationType
    priority: int
    storage: str
    #: how new files are detected at a SOURCE (None: manual filing only)
    ingest: IngestSpec | None = None

    @property
    def is_buffer(self) -> bool:
        return self.location_type == LocationType.BUFFER

    @property
    def qualified_name(self) -> str:
        """``{site}/{location}``, as ``DataLocation.qualified_name``."""
        return qualified_location_name(self.site, self.name)

    @property
    def pool_prefix(self) -> str:
        """``{site}_{location}``, as ``DataLocation.pool_prefix``."""
        return location_pool_prefix(self.site, self.name)


@dataclass(frozen=True)
class SiteView:
    short_name: str
    name: str
    #: the active locations
    locations: tuple[LocationView, ...]
    #: deactivated locations still holding copies to clean (never a LONG_TERM_ARCHIVE)
    draining: tuple[LocationView, ...] = ()

    def of_type(self, location_type: LocationType) -> list[LocationView]:
        return [loc for loc in self.locations if loc.location_type == location_type]

    @property
    def is_source(self) -> bool:
        return bool(self.of_type(LocationType.SOURCE))

    @property
    def is_lta(self) -> bool:
        return bool(self.of_type(LocationType.LONG_TERM_ARCHIVE))


class UnknownSiteError(LookupError):
    """A site name that names no active site of the ops DB."""

    def __str__(self) -> str:  # LookupError would repr() a single argument (quotes).
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TopologySnapshot:
    #: the active sites (an inactive site has no code location)
    sites: tuple[SiteView, ...]
    #: short names of the sites the ops DB holds as inactive, to name them in errors
    inactive_sites: tuple[str, ...] = ()

    def site(self, short_name: str) -> SiteView:
        for site in self.sites:
            if site.short_name == short_name:
                return site
        active = ", ".join(s.short_name for s in self.sites) or "none"
        if short_name in self.inactive_sites:
            why = (
                f"site {short_name!r} is inactive in the ops DB (active sites: {active}); set "
                "active: true on it in the topology and run `ccat topology apply FILE`, or "
                "remove its code location from the workspace"
            )
        else:
            why = (
                f"site {short_name!r} is not in the topology of the ops DB (active sites: "
                f"{active}); name one of those, or add the site to the topology and run "
                "`ccat topology apply FILE`"
            )
        raise UnknownSiteError(why)

    @property
    def source_sites(self) -> list[SiteView]:
        return [s for s in self.sites if s.is_source]

    @property
    def lta_sites(self) -> list[SiteView]:
        return [s for s in self.sites if s.is_lta]


class TopologyUnavailableError(RuntimeError):
    """The topology cannot be read from the ops DB."""


class TopologyEmptyError(TopologyUnavailableError):
    """The ops DB is reachable but holds no topology yet: no database file, no schema or no
    sites. A first start, not a fault; the code locations load a placeholder saying what to do
    (``ccat_dagster.defs.setup``)."""


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite ops DB whose file does not exist (None for any other URL). Asked
    first so that loading a code location never creates an empty database file."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if Path(parsed.database).exists() else parsed.database


def _view(site: Site, loc: DataLocation) -> LocationView:
    return LocationView(
        site=site.short_name,
        name=loc.name,
        location_type=loc.location_type,
        priority=loc.priority,
        storage=loc.storage_type.value,
        ingest=IngestSpec.model_validate(loc.ingest) if loc.ingest else None,
    )


def _holding_copies(session: Session) -> set[int]:
    """Ids of the inactive locations (not archives) with copies left to clean, in one query."""
    return set(
        session.scalars(
            select(PhysicalCopy.data_location_id)
            .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
            .where(
                DataLocation.active.is_(False),
                DataLocation.location_type != LocationType.LONG_TERM_ARCHIVE,
                PhysicalCopy.status.in_(HOLDING_STATUSES),
            )
            .distinct()
        )
    )


def load_topology_snapshot(url: str | None = None) -> TopologySnapshot:
    """Active sites and their active locations (and the draining ones: deactivated, still
    holding copies) from the ops DB, with a clear error when there are none. An inactive site
    is left out: nothing of it is loaded, and the other sites' assets do not depend on it."""
    url = url or ops_db_url()
    missing = _missing_sqlite_file(url)
    if missing:
        raise TopologyEmptyError(
            f"there is no ops DB at {missing} yet: run `ccat topology apply FILE` (or `make "
            "demo`) to create it, then reload the code locations"
        )
    try:
        with session_factory(url)() as session:
            if not inspect(session.connection()).has_table(Site.__tablename__):
                raise TopologyEmptyError(
                    "the ops DB has no schema yet: run `ccat topology apply FILE` (or `ccat db "
                    "upgrade` first), then reload the code locations"
                )
            sites = session.scalars(select(Site).order_by(Site.short_name)).all()
            draining = _holding_copies(session)
            views = tuple(
                SiteView(
                    short_name=site.short_name,
                    name=site.name,
                    locations=tuple(
                        _view(site, loc) for loc in sorted(site.locations, key=_order) if loc.active
                    ),
                    draining=tuple(
                        _view(site, loc)
                        for loc in sorted(site.locations, key=_order)
                        if not loc.active and loc.id in draining
                    ),
                )
                for site in sites
                if site.active
            )
            inactive = tuple(site.short_name for site in sites if not site.active)
    except SQLAlchemyError as exc:
        raise TopologyUnavailableError(
            f"cannot read the topology from the ops DB ({exc.__class__.__name__}: {exc}); "
            "check CCAT_OPS_DB_URL, then run `ccat db upgrade` and `ccat topology apply FILE`"
        ) from exc
    if not views:
        raise TopologyEmptyError(
            "the ops DB has no active sites yet: run `ccat topology apply FILE` before loading the "
            "Dagster code locations"
        )
    return TopologySnapshot(sites=views, inactive_sites=inactive)


def _order(location: DataLocation) -> tuple[int, str]:
    return (location.priority, location.name)
