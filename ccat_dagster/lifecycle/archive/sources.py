"""Which copy an archive copy is made from, and which archives of a site want one.

Shared by the archive stage's planners (:mod:`ccat_dagster.lifecycle.archive.stage`: first
archiving and repair; :mod:`ccat_dagster.lifecycle.archive.backfill`: replication into an
archive that lacks a package). A source is a PRESENT package tar at an active BUFFER, or a
PRESENT copy in another LONG_TERM_ARCHIVE that has passed its ``lta_presence`` check
(``verified_at`` set). The best source of a (package, archive) is one at the archive's own site,
then another archive, then any other buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, or_
from sqlalchemy.orm import aliased

from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    LongTermArchiveTransfer,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
)

#: (package, source, archive)
Candidate = tuple[RawDataPackage, DataLocation, DataLocation]


def site_ltas(site: Site) -> tuple[Any, ColumnElement[bool]]:
    """An alias of DataLocation and the condition that it is an active archive of ``site``."""
    lta = aliased(DataLocation)
    return lta, and_(
        lta.site_id == site.id,
        lta.location_type == LocationType.LONG_TERM_ARCHIVE,
        lta.active.is_(True),
    )


def not_in_lta_and_not_failed(lta: Any) -> list[ColumnElement[bool]]:
    """The package has no PRESENT copy in ``lta`` and its archive transfer there has not
    failed for good (FAILED waits for an operator: ``ccat retry``)."""
    held = aliased(RawDataPackagePhysicalCopy)
    in_lta = exists().where(
        held.raw_data_package_id == RawDataPackage.id,
        held.data_location_id == lta.id,
        held.status == PhysicalCopyStatus.PRESENT,
    )
    return [~in_lta, ~archive_transfer_failed(lta)]


def archive_transfer_failed(lta: Any) -> ColumnElement[bool]:
    return exists().where(
        LongTermArchiveTransfer.raw_data_package_id == RawDataPackage.id,
        LongTermArchiveTransfer.destination_location_id == lta.id,
        LongTermArchiveTransfer.status == Status.FAILED,
    )


def good_source(source: Any, copy: Any, lta: Any) -> list[ColumnElement[bool]]:
    """``copy`` (of the package, at ``source``) may be copied into ``lta``."""
    return [
        copy.status == PhysicalCopyStatus.PRESENT,
        source.id != lta.id,
        source.active.is_(True),
        source.location_type.in_([LocationType.BUFFER, LocationType.LONG_TERM_ARCHIVE]),
        # an archive copy is a source only once verified there
        or_(source.location_type == LocationType.BUFFER, copy.verified_at.is_not(None)),
    ]


def source_rank(source: Any, site: Site) -> ColumnElement[int]:
    """1: at the archive's own site; 2: another archive; 3: another site's buffer."""
    return case(
        (source.site_id == site.id, 1),
        (source.location_type == LocationType.LONG_TERM_ARCHIVE, 2),
        else_=3,
    )


def best_per_target(rows: Iterable[tuple[RawDataPackage, DataLocation, DataLocation, int]]):
    """The best source of every (package, archive), by package id, then archive priority."""
    ordered = sorted(rows, key=lambda r: (r[0].id, r[2].priority, r[2].id, r[3], r[1].id))
    seen: set[tuple[int, int]] = set()
    result: list[Candidate] = []
    for package, src, archive, _ in ordered:
        if (package.id, archive.id) not in seen:
            seen.add((package.id, archive.id))
            result.append((package, src, archive))
    return result
