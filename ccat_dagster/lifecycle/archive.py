"""Stage 5: RawDataPackages at an LTA-site BUFFER are copied into the site's LONG_TERM_ARCHIVE.

Seeds: archive_manager (send_data_to_long_term_archive, LongTermArchiveTask). The copy is a
verified streaming write (nothing appears under the final key unless the checksum matched);
then ``confirm_lta_presence`` (the ``lta_presence`` check) looks at the stored object live, and
only a confirmed copy becomes PRESENT and makes the package ARCHIVED.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from ccat_dagster.lifecycle.copies import upsert_copy
from ccat_dagster.lifecycle.outcomes import StageOutcome, transfer_metadata
from ccat_dagster.lifecycle.policy import get_policy
from ccat_dagster.lifecycle.progress import tracked_copy
from ccat_dagster.lifecycle.retries import handle_failure
from ccat_dagster.lifecycle.verification import LtaEvidence, verify_lta_copy
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import (
    LocationUnavailableError,
    PermanentStorageError,
    StorageError,
)
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
    utcnow,
)

StorageFor = Callable[[DataLocation], Storage]


def archive_candidates(
    session: Session, site: Site
) -> list[tuple[RawDataPackage, DataLocation, DataLocation]]:
    """(package, buffer, lta) for every package PRESENT at a buffer of this site that is not
    yet PRESENT in one of the site's active LONG_TERM_ARCHIVE locations (and whose archive
    transfer has not failed for good)."""
    buffer = aliased(DataLocation)
    lta = aliased(DataLocation)
    held = aliased(RawDataPackagePhysicalCopy)
    in_lta = exists().where(
        held.raw_data_package_id == RawDataPackage.id,
        held.data_location_id == lta.id,
        held.status == PhysicalCopyStatus.PRESENT,
    )
    failed = exists().where(
        LongTermArchiveTransfer.raw_data_package_id == RawDataPackage.id,
        LongTermArchiveTransfer.destination_location_id == lta.id,
        LongTermArchiveTransfer.status == Status.FAILED,
    )
    rows = session.execute(
        select(RawDataPackage, buffer, lta)
        .join(
            RawDataPackagePhysicalCopy,
            RawDataPackagePhysicalCopy.raw_data_package_id == RawDataPackage.id,
        )
        .join(buffer, buffer.id == RawDataPackagePhysicalCopy.data_location_id)
        .join(
            lta,
            and_(
                lta.site_id == buffer.site_id,
                lta.location_type == LocationType.LONG_TERM_ARCHIVE,
                lta.active.is_(True),
            ),
        )
        .where(
            buffer.site_id == site.id,
            buffer.location_type == LocationType.BUFFER,
            RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            ~in_lta,
            ~failed,
        )
        .order_by(RawDataPackage.id, lta.priority)
    ).all()
    seen: set[tuple[int, int]] = set()
    result = []
    for package, buf, archive in rows:
        if (package.id, archive.id) not in seen:  # one source buffer per (package, lta)
            seen.add((package.id, archive.id))
            result.append((package, buf, archive))
    return result


def _lta_transfer(
    session: Session, package: RawDataPackage, buffer: DataLocation, lta: DataLocation
) -> LongTermArchiveTransfer:
    transfer = session.scalar(
        select(LongTermArchiveTransfer).where(
            LongTermArchiveTransfer.raw_data_package_id == package.id,
            LongTermArchiveTransfer.destination_location_id == lta.id,
        )
    )
    if transfer is None:
        transfer = LongTermArchiveTransfer(
            raw_data_package_id=package.id,
            origin_location_id=buffer.id,
            destination_location_id=lta.id,
            status=Status.PENDING,
        )
        session.add(transfer)
        session.flush()
    transfer.origin_location_id = buffer.id
    return transfer


def send_data_to_long_term_archive(
    session: Session,
    package: RawDataPackage,
    buffer: DataLocation,
    lta: DataLocation,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Copy the package tar from the buffer into the LTA (verified write); not yet PRESENT."""
    transfer = _lta_transfer(session, package, buffer, lta)
    if transfer.status == Status.COMPLETED:
        return StageOutcome(package.name, ok=True, skipped=True)
    try:
        result = tracked_copy(
            session,
            transfer,
            entity_type="long_term_archive_transfer",
            source=storage_for(buffer),
            destination=storage_for(lta),
            key=package.relative_path,
            checksum=package.checksum,
            algorithm=package.checksum_algorithm,
            size=package.size,
            reason=f"archiving {package.name} into {lta.qualified_name}",
            done_reason="written; awaiting lta_presence check",
            destination_id=lta.id,
            run_id=run_id,
        )
    except PermanentStorageError as exc:
        return _archive_failed(session, transfer, package, exc, run_id)
    session.commit()
    return StageOutcome(
        package.name,
        ok=True,
        metadata=transfer_metadata(
            name=package.name,
            size=result.size,
            checksum=result.checksum,
            algorithm=result.algorithm,
            source=buffer.qualified_name,
            destination=lta.qualified_name,
            seconds=result.seconds,
            file_count=package.file_count,
        ),
    )


def _archive_failed(
    session: Session,
    transfer: LongTermArchiveTransfer,
    package: RawDataPackage,
    exc: BaseException | str,
    run_id: str | None,
) -> StageOutcome:
    permanent = handle_failure(
        session,
        transfer,
        exc,
        max_retries=get_policy(session).max_retries,
        entity_type="long_term_archive_transfer",
        packages=[package],
        run_id=run_id,
    )
    session.commit()
    return StageOutcome(package.name, ok=False, error=str(exc), permanent=permanent)


def confirm_lta_presence(
    session: Session,
    package: RawDataPackage,
    lta: DataLocation,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> LtaEvidence:
    """The ``lta_presence`` check: look at the archived object live; only if it exists with the
    recorded size and checksum, the copy becomes PRESENT and the package ARCHIVED. A failed
    check sends the archive transfer back for another attempt (or FAILED after max_retries)."""
    try:
        # the freshly written copy is read back in full: its bytes, not the metadata, are checked
        evidence = verify_lta_copy(storage_for(lta), package, prefer_stored_checksum=False)
    except LocationUnavailableError:
        raise  # the archive does not answer: nothing is known about the copy, nothing counted
    except StorageError as exc:
        evidence = LtaEvidence(
            ok=False,
            exists=False,
            location=lta.qualified_name,
            key=package.relative_path,
            checked_at=utcnow(),
            detail=f"cannot verify: {exc}",
        )
    transfer = session.scalar(
        select(LongTermArchiveTransfer).where(
            LongTermArchiveTransfer.raw_data_package_id == package.id,
            LongTermArchiveTransfer.destination_location_id == lta.id,
        )
    )
    if not evidence.ok:
        if transfer is not None and transfer.status == Status.COMPLETED:
            _archive_failed(session, transfer, package, f"lta_presence: {evidence.detail}", run_id)
        return evidence
    upsert_copy(
        session,
        RawDataPackagePhysicalCopy,
        "raw_data_package_id",
        package.id,
        lta,
        size=evidence.size,
        checksum=evidence.checksum,
        algorithm=evidence.checksum_algorithm,
        verified_at=utcnow(),
        reason="lta_presence check passed",
        run_id=run_id,
        evidence=evidence.as_dict(),
    )
    if package.state != PackageState.ARCHIVED:
        audit(
            session,
            entity_type="raw_data_package",
            entity_id=package.id,
            old_status=package.state,
            new_status=PackageState.ARCHIVED,
            reason=f"verified in {lta.qualified_name}",
            data_location_id=lta.id,
            run_id=run_id,
            evidence=evidence.as_dict(),
        )
        package.state = PackageState.ARCHIVED
        package.failure_reason = None
    session.commit()
    return evidence
