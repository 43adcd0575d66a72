"""Archive copies that failed a live check: marked in the catalogue, kept out of every decision,
and repaired from a good copy.

A live check (``lta_presence`` before a deletion, later fixity) that finds an LTA object missing
makes its copy LOST, one with other bytes BAD; "cannot check" (the archive did not answer)
changes nothing. Marking resets the package's LongTermArchiveTransfer to that archive, so the
archive stage copies the package again, from the best PRESENT copy that still exists (a buffer of
the archive's own site, a verified copy in another archive, any other buffer). When no copy of
the package tar is left anywhere, the SOURCE site re-packages it from its raw files (the tar is a
function of the files' bytes, so it comes out the same) into its buffer, and the archive copies
it from there. The same holds for a package not bundled yet whose only tar (in the SOURCE site's
buffer) was found BAD or LOST, by the consistency audit say: it is packaged again. Until every
archive copy of a package is good again, the deletion rules keep every copy of its data outside
the archives (:mod:`ccat_dagster.lifecycle.deletion.rules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.verification import LtaEvidence
from ccat_dagster.lifecycle.common.locks import PACKAGING, planner_lock, scope
from ccat_dagster.lifecycle.common.progress import set_status
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    UNUSABLE_COPY_STATUSES,
    CopyType,
    DataLocation,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Status,
    named_alias,
    table_of,
)
from ccat_ops_db.results import rowcount

S = PhysicalCopyStatus
RULE_LTA_COPY_UNUSABLE = "lta_presence_failed"
REASON_REPACKAGE = "re-packaging from the SOURCE files: no good copy of the package tar is left"

pc_t = table_of(PhysicalCopy)
dl_t = table_of(DataLocation)
rdf_t = table_of(RawDataFile)


def unusable_status(evidence: LtaEvidence) -> PhysicalCopyStatus:
    """LOST for an object that is gone, BAD for one with other bytes than recorded."""
    return S.LOST if not evidence.exists else S.BAD


def record_lta_check(
    session: Session,
    package: RawDataPackage,
    lta: DataLocation,
    evidence: LtaEvidence,
    *,
    run_id: str | None = None,
) -> PhysicalCopyStatus | None:
    """Record the outcome of one live check of ``package`` in ``lta``: a pass refreshes
    ``verified_at``; a definite failure marks the copy BAD or LOST (audited with the evidence)
    and sends the package back to the archive stage for that archive. Returns the new status
    when the copy was marked. The caller commits."""
    copy = session.scalar(
        sa.select(RawDataPackagePhysicalCopy).where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            RawDataPackagePhysicalCopy.data_location_id == lta.id,
        )
    )
    if copy is None or copy.status != S.PRESENT:
        return None
    if evidence.ok:
        copy.verified_at = evidence.checked_at
        return None
    if not evidence.definite_failure:
        return None
    new = unusable_status(evidence)
    audit(
        session,
        entity_type="physical_copy",
        entity_id=copy.id,
        old_status=copy.status,
        new_status=new,
        reason=f"{RULE_LTA_COPY_UNUSABLE}: {evidence.detail}",
        data_location_id=lta.id,
        run_id=run_id,
        evidence=evidence.as_dict(),
    )
    copy.status = new
    copy.failure_reason = evidence.detail
    _send_back_to_archive(session, package, lta, evidence.detail, run_id)
    return new


def _send_back_to_archive(
    session: Session, package: RawDataPackage, lta: DataLocation, detail: str, run_id: str | None
) -> None:
    transfer = session.scalar(
        sa.select(LongTermArchiveTransfer).where(
            LongTermArchiveTransfer.raw_data_package_id == package.id,
            LongTermArchiveTransfer.destination_location_id == lta.id,
        )
    )
    if transfer is None:
        return  # the archive stage creates one when it picks the package up
    set_status(
        session,
        transfer,
        Status.PENDING,
        entity_type="long_term_archive_transfer",
        reason=f"re-archiving: the archive copy failed a live check ({detail})",
        data_location_id=lta.id,
        run_id=run_id,
    )
    transfer.retry_count = 0
    transfer.failure_reason = detail


def unusable_lta_copy(package_id: Any) -> sa.Exists:
    """EXISTS a BAD or LOST copy of ``package_id`` in an active LONG_TERM_ARCHIVE: a repair is
    pending, so nothing that holds the package's data outside the archives may go."""
    pc = named_alias(pc_t, "unusable_copy")
    dl = named_alias(dl_t, "unusable_lta")
    return (
        sa.exists()
        .where(
            pc.c.type == CopyType.RAW_DATA_PACKAGE,
            pc.c.raw_data_package_id == package_id,
            pc.c.status.in_(UNUSABLE_COPY_STATUSES),
            dl.c.id == pc.c.data_location_id,
            dl.c.location_type == LocationType.LONG_TERM_ARCHIVE,
            dl.c.active == sa.true(),
        )
        .correlate_except(pc, dl)
    )


def _tar_anywhere(package_id: Any, statuses: Sequence[PhysicalCopyStatus]) -> sa.Exists:
    """EXISTS a copy of the package tar in one of ``statuses``, at any location."""
    pc = named_alias(pc_t, "tar_copy")
    return (
        sa.exists()
        .where(
            pc.c.type == CopyType.RAW_DATA_PACKAGE,
            pc.c.raw_data_package_id == package_id,
            pc.c.status.in_(list(statuses)),
        )
        .correlate_except(pc)
    )


def _file_missing_at_source(package: Any) -> sa.Exists:
    """EXISTS a file of the package (not declared lost) without a copy on disk at its SOURCE."""
    rdf = named_alias(rdf_t, "member")
    held = named_alias(pc_t, "member_copy")
    on_disk = (
        sa.exists()
        .where(
            held.c.type == CopyType.RAW_DATA_FILE,
            held.c.raw_data_file_id == rdf.c.id,
            held.c.data_location_id == package.c.source_location_id,
            held.c.status.in_([S.PRESENT, S.DELETION_POSSIBLE]),
        )
        .correlate_except(held)
    )
    return (
        sa.exists()
        .where(rdf.c.raw_data_package_id == package.c.id, rdf.c.lost_at.is_(None), ~on_disk)
        .correlate_except(rdf)
    )


def packages_to_repackage(session: Session, source_location_ids: Sequence[int]) -> list[int]:
    """COMPLETED packages of these SOURCE locations with no PRESENT tar left anywhere and every
    raw file still on disk at the SOURCE (one SELECT) that need a tar: one with a BAD/LOST
    archive copy, or one not bundled yet whose tar was found BAD or LOST (the consistency audit
    confirmed the only copy in the buffer gone; bundling would wait for it for good)."""
    if not source_location_ids:
        return []
    rdp = named_alias(table_of(RawDataPackage), "rdp")
    return list(
        session.scalars(
            sa.select(rdp.c.id)
            .where(
                rdp.c.source_location_id.in_(list(source_location_ids)),
                rdp.c.status == Status.COMPLETED,
                sa.or_(
                    unusable_lta_copy(rdp.c.id),
                    sa.and_(
                        rdp.c.state == PackageState.WAITING,
                        rdp.c.data_transfer_package_id.is_(None),
                        _tar_anywhere(rdp.c.id, UNUSABLE_COPY_STATUSES),
                    ),
                ),
                ~_tar_anywhere(rdp.c.id, [S.PRESENT]),
                ~_file_missing_at_source(rdp),
            )
            .order_by(rdp.c.id)
        )
    )


def plan_repackaging(
    session: Session, source_location: DataLocation, *, run_id: str | None = None
) -> int:
    """The packaging planner's repair part for one SOURCE: under its packaging lock, send the
    packages of :func:`packages_to_repackage` back to packaging. Commits."""
    with planner_lock(session, scope(PACKAGING, source_location.id), run_id=run_id):
        return mark_for_repackaging(
            session, packages_to_repackage(session, [source_location.id]), run_id=run_id
        )


def mark_for_repackaging(
    session: Session, package_ids: Sequence[int], *, run_id: str | None = None
) -> int:
    """Send these packages back to the packaging stage (COMPLETED -> PENDING, audited, retries
    reset); conditional, so two planners cannot both do it. The caller commits."""
    rdp = table_of(RawDataPackage)
    marked = 0
    for package_id in package_ids:
        done = rowcount(
            session.execute(
                sa.update(rdp)
                .where(rdp.c.id == package_id, rdp.c.status == Status.COMPLETED)
                .values(status=Status.PENDING, retry_count=0, failure_reason=REASON_REPACKAGE)
            )
        )
        if done:
            marked += 1
            audit(
                session,
                entity_type="raw_data_package",
                entity_id=package_id,
                old_status=Status.COMPLETED,
                new_status=Status.PENDING,
                reason=REASON_REPACKAGE,
                run_id=run_id,
            )
    return marked


def unusable_lta_copies(session: Session) -> list[tuple[str, str, str, str | None]]:
    """(package, "site/location", status, reason) of every BAD or LOST archive copy."""
    from ccat_ops_db.models import Site

    rows = session.execute(
        sa.select(
            RawDataPackage.name,
            Site.short_name + "/" + DataLocation.name,
            PhysicalCopy.status,
            PhysicalCopy.failure_reason,
        )
        .join(PhysicalCopy, PhysicalCopy.raw_data_package_id == RawDataPackage.id)
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            PhysicalCopy.status.in_(UNUSABLE_COPY_STATUSES),
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
        )
        .order_by(RawDataPackage.name, DataLocation.id)
    ).all()
    return [(name, loc, status.value, reason) for name, loc, status, reason in rows]
