"""A per-stage summary of the pipeline from the ops DB: what the demo and ``ccat status`` print
(rendered by :mod:`ccat_dagster.cli._summary`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.repair import unusable_lta_copies
from ccat_dagster.lifecycle.capacity.availability import UnavailableLocation, unavailable_locations
from ccat_dagster.lifecycle.ingest.lost_files import lost_files_by_package
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    IngestFinding,
    LongTermArchiveTransfer,
    PhysicalCopy,
    RawDataFile,
    RawDataPackage,
    Site,
)


@dataclass
class PipelineSummary:
    files: tuple[int, int] = (0, 0)  # count, bytes
    packages_by_state: dict[str, int] = field(default_factory=dict)
    packages_by_status: dict[str, int] = field(default_factory=dict)
    bundles_by_status: dict[str, int] = field(default_factory=dict)
    transfers: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    archive_transfers: dict[str, int] = field(default_factory=dict)
    # (location, copy type, status) -> (count, bytes)
    copies: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    # (package, archive location, BAD|LOST, reason): archive copies that failed a live check
    unusable_lta_copies: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    #: locations that do not answer from some site: work needing them waits (not FAILED)
    unavailable: list[UnavailableLocation] = field(default_factory=list)
    # (package, obs unit x module, files lost, files in all, what became of it + reasons)
    lost_files: list[tuple[str, str, int, int, str]] = field(default_factory=list)
    #: (SOURCE, kind, file, message): files an ingest sensor saw and did not file
    ingest_findings: list[tuple[str, str, str, str]] = field(default_factory=list)


def pipeline_summary(session: Session) -> PipelineSummary:
    """Counts per stage, set-based (a handful of GROUP BY queries)."""
    s = PipelineSummary(unavailable=unavailable_locations(session))
    files, size = session.execute(
        select(func.count(), func.coalesce(func.sum(RawDataFile.size), 0))
    ).one()
    s.files = (int(files), int(size or 0))
    s.packages_by_state = {
        k.value: n
        for k, n in session.execute(
            select(RawDataPackage.state, func.count()).group_by(RawDataPackage.state)
        )
    }
    s.packages_by_status = {
        k.value: n
        for k, n in session.execute(
            select(RawDataPackage.status, func.count()).group_by(RawDataPackage.status)
        )
    }
    s.bundles_by_status = {
        k.value: n
        for k, n in session.execute(
            select(DataTransferPackage.status, func.count()).group_by(DataTransferPackage.status)
        )
    }
    dest = (Site.short_name + "/" + DataLocation.name).label("dest")
    s.transfers = [
        (route, d, st.value, un.value, n)
        for route, d, st, un, n in session.execute(
            select(
                DataTransfer.route_kind,
                dest,
                DataTransfer.status,
                DataTransfer.unpack_status,
                func.count(),
            )
            .join(DataLocation, DataLocation.id == DataTransfer.destination_location_id)
            .join(Site, Site.id == DataLocation.site_id)
            .group_by(
                DataTransfer.route_kind, dest, DataTransfer.status, DataTransfer.unpack_status
            )
            .order_by(DataTransfer.route_kind, dest)
        )
    ]
    s.archive_transfers = {
        k.value: n
        for k, n in session.execute(
            select(LongTermArchiveTransfer.status, func.count()).group_by(
                LongTermArchiveTransfer.status
            )
        )
    }
    s.unusable_lta_copies = unusable_lta_copies(session)
    s.lost_files = lost_files_by_package(session)
    s.ingest_findings = [
        (f"{site}/{location}", kind, path, message)
        for site, location, kind, path, message in session.execute(
            select(
                Site.short_name,
                DataLocation.name,
                IngestFinding.kind,
                IngestFinding.relative_path,
                IngestFinding.message,
            )
            .join(DataLocation, DataLocation.id == IngestFinding.data_location_id)
            .join(Site, Site.id == DataLocation.site_id)
            .order_by(Site.short_name, DataLocation.name, IngestFinding.relative_path)
        )
    ]
    loc = (Site.short_name + "/" + DataLocation.name).label("loc")
    for name, kind, status, n, size in session.execute(
        select(
            loc,
            PhysicalCopy.type,
            PhysicalCopy.status,
            func.count(),
            func.coalesce(func.sum(PhysicalCopy.size), 0),
        )
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .group_by(loc, PhysicalCopy.type, PhysicalCopy.status)
    ):
        s.copies[
            (
                name,
                CopyType(kind).value if not isinstance(kind, CopyType) else kind.value,
                status.value,
            )
        ] = (int(n), int(size or 0))
    return s


def packages_missing_from_ltas(session: Session) -> list[tuple[str, str]]:
    """(package, lta) for every RawDataPackage without a PRESENT copy in an active LTA location."""
    from sqlalchemy import and_, true

    from ccat_ops_db.models import LocationType, PhysicalCopyStatus

    lta = (
        select(DataLocation.id, (Site.short_name + "/" + DataLocation.name).label("name"))
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            DataLocation.active == true(),
        )
        .subquery()
    )
    rows = session.execute(
        select(RawDataPackage.name, lta.c.name)
        .join(lta, true())
        .outerjoin(
            PhysicalCopy,
            and_(
                PhysicalCopy.raw_data_package_id == RawDataPackage.id,
                PhysicalCopy.data_location_id == lta.c.id,
                PhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            ),
        )
        .where(PhysicalCopy.id.is_(None))
        .order_by(RawDataPackage.name, lta.c.name)
    ).all()
    return [(p, loc) for p, loc in rows]
