"""Replication between archives: every archived package gets a copy in every active archive.

An archive that joins later (a new LTA site, or a new LONG_TERM_ARCHIVE location at a site)
holds none of the packages archived before it, and most of their bundles and buffer copies are
long gone. The archive stage of its site backfills it: a package that has been archived
somewhere (state ARCHIVED, or a verified archive copy) and has *no* copy row at the archive
(BAD/LOST rows are repairs, :mod:`ccat_dagster.lifecycle.archive.repair`) is copied there from
the best verified copy elsewhere (:mod:`ccat_dagster.lifecycle.archive.sources`); the
``lta_presence`` check then makes it PRESENT with ``verified_at``, like every archive copy.
The same holds for a package whose tar reached the site's buffer and was found gone there
(LOST) before the site archived it, archived elsewhere or not: its bundle has arrived, so the
best copy left anywhere (another archive, another site's buffer) stands in for it.

Backfill never races the bundles. A package still on its way to the archive's site is left to
the normal path (secondary routes forward its bundle, the site's buffer gets its tar and first
archiving copies it from there): a package PRESENT at a buffer of the site, or whose bundle has
an unfinished DataTransfer to the site, or whose bundle sits unpacked in a buffer elsewhere and
has no DataTransfer to the site yet (the secondary planner will route it), is not backfilled.
A failed bundle transfer does not hold the package back: the archive copies stand in for it.

Rate limit: at most ``lta_backfill_max_per_run`` packages and ``lta_backfill_bytes_per_run``
bytes per run (at least one package, however large), oldest package first, and only after the
site's first archiving and repairs (``archive_candidates`` puts them last). The state is the ops
DB alone: a killed run leaves its LongTermArchiveTransfer IN_PROGRESS or PENDING, the archive
still has no copy row, and the next run takes the package again.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, exists, not_, or_, select
from sqlalchemy.orm import Session, aliased

from ccat_dagster.lifecycle.archive.sources import (
    Candidate,
    archive_transfer_failed,
    best_per_target,
    good_source,
    source_rank,
)
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackagePhysicalCopy,
    LocationType,
    PackageState,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
)

S = PhysicalCopyStatus


def _no_copy_row_at(lta: DataLocation) -> ColumnElement[bool]:
    held = aliased(RawDataPackagePhysicalCopy)
    return ~exists().where(
        held.raw_data_package_id == RawDataPackage.id, held.data_location_id == lta.id
    )


def archived_somewhere() -> ColumnElement[bool]:
    """The package is ARCHIVED, or has a verified PRESENT copy in some archive."""
    held = aliased(RawDataPackagePhysicalCopy)
    at = aliased(DataLocation)
    verified = exists().where(
        held.raw_data_package_id == RawDataPackage.id,
        held.status == S.PRESENT,
        held.verified_at.is_not(None),
        at.id == held.data_location_id,
        at.location_type == LocationType.LONG_TERM_ARCHIVE,
    )
    return or_(RawDataPackage.state == PackageState.ARCHIVED, verified)


def _at_site_buffer(site_id: int, status: PhysicalCopyStatus = S.PRESENT) -> ColumnElement[bool]:
    """The package tar is at a buffer of the site in ``status``. PRESENT: first archiving takes
    it. LOST: it reached the buffer and was found gone there before the site archived it, so
    its bundle has arrived and nothing more will come by the normal path."""
    held = aliased(RawDataPackagePhysicalCopy)
    at = aliased(DataLocation)
    return exists().where(
        held.raw_data_package_id == RawDataPackage.id,
        held.status == status,
        at.id == held.data_location_id,
        at.site_id == site_id,
        at.location_type == LocationType.BUFFER,
    )


def bundle_on_its_way(site_id: int) -> ColumnElement[bool]:
    """The package's bundle will still reach the site: a DataTransfer of it to the site is not
    finished (neither COMPLETED and unpacked nor FAILED), or it has none yet while the bundle
    lies unpacked in a buffer elsewhere (the secondary planner forwards it from there)."""
    bundle = RawDataPackage.data_transfer_package_id
    dt, dest = aliased(DataTransfer), aliased(DataLocation)
    to_site = [dt.data_transfer_package_id == bundle, dest.id == dt.destination_location_id]
    finished = or_(
        dt.status == Status.FAILED,
        dt.unpack_status == Status.FAILED,
        and_(dt.status == Status.COMPLETED, dt.unpack_status == Status.COMPLETED),
    )
    unfinished_to_site = exists().where(*to_site, dest.site_id == site_id, not_(finished))
    any_to_site = exists().where(*to_site, dest.site_id == site_id)
    arrived, kept = aliased(DataTransfer), aliased(DataTransferPackagePhysicalCopy)
    unpacked_elsewhere = exists().where(
        arrived.data_transfer_package_id == bundle,
        arrived.status == Status.COMPLETED,
        arrived.unpack_status == Status.COMPLETED,
        kept.data_transfer_package_id == bundle,
        kept.data_location_id == arrived.destination_location_id,
        kept.status == S.PRESENT,
    )
    return and_(
        bundle.is_not(None), or_(unfinished_to_site, and_(unpacked_elsewhere, ~any_to_site))
    )


def wants_backfill(lta: DataLocation) -> list[ColumnElement[bool]]:
    """The package should be copied into ``lta`` by backfill (see the module docstring)."""
    return [
        _no_copy_row_at(lta),
        ~archive_transfer_failed(lta),
        or_(archived_somewhere(), _at_site_buffer(lta.site_id, S.LOST)),
        ~_at_site_buffer(lta.site_id),
        ~bundle_on_its_way(lta.site_id),
    ]


def _lta_candidates(session: Session, site: Site, lta: DataLocation, limit: int) -> list[Candidate]:
    source = aliased(DataLocation)
    copy = aliased(RawDataPackagePhysicalCopy)
    has_source = exists().where(
        copy.raw_data_package_id == RawDataPackage.id,
        source.id == copy.data_location_id,
        *good_source(source, copy, lta),
    )
    ids = list(
        session.scalars(
            select(RawDataPackage.id)
            .where(*wants_backfill(lta), has_source)
            .order_by(RawDataPackage.id)
            .limit(limit)
        )
    )
    if not ids:
        return []
    archive = aliased(DataLocation)
    rows = session.execute(
        select(RawDataPackage, source, archive, source_rank(source, site))
        .join(copy, copy.raw_data_package_id == RawDataPackage.id)
        .join(source, source.id == copy.data_location_id)
        .join(archive, archive.id == lta.id)
        .where(RawDataPackage.id.in_(ids), *good_source(source, copy, archive))
    ).all()
    return best_per_target((p, s, a, rank) for p, s, a, rank in rows)


def backfill_candidates(
    session: Session, site: Site, *, max_packages: int, max_bytes: int
) -> list[Candidate]:
    """(package, source, lta) to backfill into this site's active archives, at most
    ``max_packages`` packages and ``max_bytes`` bytes (at least one package), oldest first."""
    ltas = session.scalars(
        select(DataLocation)
        .where(
            DataLocation.site_id == site.id,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            DataLocation.active.is_(True),
        )
        .order_by(DataLocation.priority, DataLocation.id)
    ).all()
    found = sorted(
        (c for lta in ltas for c in _lta_candidates(session, site, lta, max_packages)),
        key=lambda c: (c[0].id, c[2].priority, c[2].id),
    )
    taken: list[Candidate] = []
    packages: set[int] = set()
    size = 0
    for candidate in found:
        package = candidate[0]
        if package.id not in packages:
            more = package.size or 0
            if len(packages) >= max_packages or (packages and size + more > max_bytes):
                break
            packages.add(package.id)
            size += more
        taken.append(candidate)
    return taken
