"""Stage 5: RawDataPackages at an LTA-site BUFFER are copied into the site's LONG_TERM_ARCHIVE
(and archive copies found BAD/LOST, and archived packages an archive lacks, from elsewhere).

docs/lifecycle.md (the path of the data, step 6). The copy is a
verified streaming write (nothing appears under the final key unless the checksum matched);
then ``confirm_lta_presence`` (the ``lta_presence`` check) looks at the stored object live, and
only a confirmed copy becomes PRESENT and makes the package ARCHIVED.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import and_, literal, select
from sqlalchemy.orm import Session, aliased

from ccat_dagster.lifecycle.archive.backfill import backfill_candidates
from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.sources import (
    Candidate,
    best_per_target,
    good_source,
    not_in_lta_and_not_failed,
    site_ltas,
    source_rank,
)
from ccat_dagster.lifecycle.archive.verification import LtaEvidence, verify_lta_copy
from ccat_dagster.lifecycle.common.copies import discard_bad_copy, find_copy, upsert_copy
from ccat_dagster.lifecycle.common.outcomes import StageOutcome, transfer_metadata
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.common.progress import set_status, tracked_copy
from ccat_dagster.lifecycle.common.retries import handle_failure
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import (
    LocationUnavailableError,
    PermanentStorageError,
    StorageError,
)
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    UNUSABLE_COPY_STATUSES,
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
from ccat_ops_db.session import dialect_insert

StorageFor = Callable[[DataLocation], Storage]


def archive_candidates(session: Session, site: Site) -> list[Candidate]:
    """(package, source, lta) for every package one of this site's active LONG_TERM_ARCHIVE
    locations should hold but does not (and whose archive transfer there has not failed for
    good), in this order of priority:

    1. first archiving: packages PRESENT at a buffer of this site;
    2. repair: packages whose copy in the archive failed a live check (BAD/LOST), from the
       best PRESENT tar left anywhere (this site's buffer, a verified copy in another archive,
       another site's buffer);
    3. backfill: archived packages the archive has never held and no bundle brings
       (:mod:`ccat_dagster.lifecycle.archive.backfill`), at most the policy's
       ``lta_backfill_max_per_run`` packages and ``lta_backfill_bytes_per_run`` bytes.
    """
    source = aliased(DataLocation)
    lta, is_site_lta = site_ltas(site)
    copy = RawDataPackagePhysicalCopy
    first_archive = (
        select(RawDataPackage, source, lta, literal(0).label("rank"))
        .join(copy, copy.raw_data_package_id == RawDataPackage.id)
        .join(source, source.id == copy.data_location_id)
        .join(lta, and_(is_site_lta, lta.site_id == source.site_id))
        .where(
            source.site_id == site.id,
            source.location_type == LocationType.BUFFER,
            copy.status == PhysicalCopyStatus.PRESENT,
            *not_in_lta_and_not_failed(lta),
        )
    )
    unusable = aliased(RawDataPackagePhysicalCopy)
    repair = (
        select(RawDataPackage, source, lta, source_rank(source, site).label("rank"))
        .join(unusable, unusable.raw_data_package_id == RawDataPackage.id)
        .join(lta, and_(is_site_lta, lta.id == unusable.data_location_id))
        .join(copy, copy.raw_data_package_id == RawDataPackage.id)
        .join(source, source.id == copy.data_location_id)
        .where(
            unusable.status.in_(UNUSABLE_COPY_STATUSES),
            *good_source(source, copy, lta),
            *not_in_lta_and_not_failed(lta),
        )
    )
    result = best_per_target(
        (package, src, archive, rank)
        for query in (first_archive, repair)
        for package, src, archive, rank in session.execute(query).all()
    )
    taken = {(package.id, archive.id) for package, _, archive in result}
    policy = get_policy(session)
    backfill = backfill_candidates(
        session,
        site,
        max_packages=policy.lta_backfill_max_per_run,
        max_bytes=policy.lta_backfill_bytes_per_run,
    )
    return result + [c for c in backfill if (c[0].id, c[2].id) not in taken]


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
        # ON CONFLICT DO NOTHING: a twin run (another Dagster instance) may create it now.
        session.execute(
            dialect_insert(session, LongTermArchiveTransfer)
            .values(
                raw_data_package_id=package.id,
                origin_location_id=buffer.id,
                destination_location_id=lta.id,
                status=Status.PENDING,
            )
            .on_conflict_do_nothing()
        )
        transfer = session.scalars(
            select(LongTermArchiveTransfer).where(
                LongTermArchiveTransfer.raw_data_package_id == package.id,
                LongTermArchiveTransfer.destination_location_id == lta.id,
            )
        ).one()
    transfer.origin_location_id = buffer.id
    return transfer


def send_data_to_long_term_archive(
    session: Session,
    package: RawDataPackage,
    source: DataLocation,
    lta: DataLocation,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Copy the package tar from ``source`` (a buffer of the archive's site; for a repair or a
    backfill any good copy) into the LTA, verified while written; not yet PRESENT."""
    transfer = _lta_transfer(session, package, source, lta)
    if transfer.status == Status.COMPLETED:
        return StageOutcome(package.name, ok=True, skipped=True)
    try:
        result = tracked_copy(
            session,
            transfer,
            entity_type="long_term_archive_transfer",
            source=storage_for(source),
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
    except PermanentStorageError as exc:  # a checksum mismatch is one too
        if _source_bad_at_rest(session, package, source, storage_for, run_id):
            # not the archive's fault: the next attempt takes another source, uncounted
            transfer.status = Status.PENDING
            transfer.failure_reason = f"source copy at {source.qualified_name} is bad: {exc}"
            session.commit()
            return StageOutcome(package.name, ok=False, error=transfer.failure_reason)
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
            source=source.qualified_name,
            destination=lta.qualified_name,
            seconds=result.seconds,
            file_count=package.file_count,
        ),
    )


def _source_bad_at_rest(
    session: Session,
    package: RawDataPackage,
    source: DataLocation,
    storage_for: StorageFor,
    run_id: str | None,
) -> bool:
    """After a checksum mismatch or a permanent error while copying: is the source copy itself
    bad or gone (rather than the bytes damaged on the way, or the archive refusing them)? A bad
    or missing archive copy is marked BAD/LOST for repair; a buffer copy that is gone is marked
    LOST (someone removed it: the package is taken from another copy, which the site's archive
    may then backfill from anywhere); a bad one is removed (the buffer is re-filled from a good
    copy when one is needed)."""
    storage = storage_for(source)
    try:
        evidence = verify_lta_copy(storage, package, prefer_stored_checksum=False)
    except StorageError:
        return False
    if not evidence.definite_failure:
        return False
    if source.location_type == LocationType.LONG_TERM_ARCHIVE:
        record_lta_check(session, package, source, evidence, run_id=run_id)
    elif not evidence.exists:
        copy = find_copy(
            session, RawDataPackagePhysicalCopy, "raw_data_package_id", package.id, source.id
        )
        if copy is not None and copy.status == PhysicalCopyStatus.PRESENT:
            set_status(
                session,
                copy,
                PhysicalCopyStatus.LOST,
                entity_type="physical_copy",
                reason=f"gone from {source.qualified_name} before it was archived: "
                f"{evidence.detail}",
                data_location_id=source.id,
                run_id=run_id,
            )
    else:
        discard_bad_copy(
            session,
            storage,
            RawDataPackagePhysicalCopy,
            "raw_data_package_id",
            package.id,
            source,
            package.relative_path,
            reason=f"corrupt at {source.qualified_name}, removed: {evidence.detail}",
            run_id=run_id,
        )
    session.commit()
    return True


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
        evidence = LtaEvidence.cannot_verify(package, lta, exc)
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
