"""A read-only snapshot of the topology in the ops DB, taken when a code location loads.

Assets are generated from it, so adding a site or an LTA is a topology change plus a reload of
the code locations, not a code change. A deactivated location that still holds copies the
deletion rules look at is *draining*: it has no stage, asset or pool any more, but its site's
cleanup keeps a deletion step for it until it is empty, so it can be retired (and the SOURCE
files whose release waits for its package copies are released).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
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


@dataclass(frozen=True)
class TopologySnapshot:
    sites: tuple[SiteView, ...]

    def site(self, short_name: str) -> SiteView:
        for site in self.sites:
            if site.short_name == short_name:
                return site
        known = ", ".join(s.short_name for s in self.sites) or "none"
        raise LookupError(
            f"site {short_name!r} is not in the topology of the ops DB (known: {known}); "
            "apply a topology that defines it with `ccat topology apply FILE`"
        )

    @property
    def source_sites(self) -> list[SiteView]:
        return [s for s in self.sites if s.is_source]

    @property
    def lta_sites(self) -> list[SiteView]:
        return [s for s in self.sites if s.is_lta]


class TopologyUnavailableError(RuntimeError):
    pass


#: the copy statuses the deletion rules still act on (a location holding only DELETED, BAD or
#: LOST copies has nothing left to clean)
_TO_CLEAN = (
    PhysicalCopyStatus.PRESENT,
    PhysicalCopyStatus.STAGED,
    PhysicalCopyStatus.DELETION_POSSIBLE,
    PhysicalCopyStatus.DELETION_SCHEDULED,
    PhysicalCopyStatus.DELETION_IN_PROGRESS,
    PhysicalCopyStatus.DELETION_FAILED,
)


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
                PhysicalCopy.status.in_(_TO_CLEAN),
            )
            .distinct()
        )
    )


def load_topology_snapshot(url: str | None = None) -> TopologySnapshot:
    """Active sites and locations (and the draining ones) from the ops DB, with a clear error
    when there are none."""
    try:
        with session_factory(url)() as session:
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
            )
    except SQLAlchemyError as exc:
        raise TopologyUnavailableError(
            f"cannot read the topology from the ops DB ({exc.__class__.__name__}: {exc}); "
            "check CCAT_OPS_DB_URL, then run `ccat db upgrade` and `ccat topology apply FILE`"
        ) from exc
    if not views:
        raise TopologyUnavailableError(
            "the ops DB has no sites yet: run `ccat topology apply FILE` before loading the "
            "Dagster code locations"
        )
    return TopologySnapshot(sites=views)


def _order(location: DataLocation) -> tuple[int, str]:
    return (location.priority, location.name)
