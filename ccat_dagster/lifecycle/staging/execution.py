"""Staging one package at one PROCESSING location, for the open StagingJobs that want it
(:mod:`ccat_dagster.lifecycle.staging.requests`).

Staging streams the package's tar from the nearest verified archive copy (same site first, then
any) straight into ``unpack_package`` at the location root, each member verified against the
manifest and the ops DB; every file gets a PRESENT RawDataFilePhysicalCopy there and the package
copy there becomes STAGED (no tar is kept: it was never written). A package counts as staged at a
location only when its copy there is STAGED, every file copy there is PRESENT *and* every file is
on disk with its recorded size; the check runs for every job that references the package, so a
new job restores files deleted by mistake (and revives DELETED copies) instead of trusting the
catalogue, and otherwise shares the files without fetching anything; two runs staging one
package at once record it once (the catalogue writes take turns per location under a planner
lock, and an identical file a twin unpacked meanwhile is accepted). A copy a cleanup run has
claimed is waited for. Failed attempts are counted in the audit log; after the policy's
``max_retries`` the jobs become FAILED. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.copies import upsert_copy
from ccat_dagster.lifecycle.common.locks import STAGING, planner_lock, scope
from ccat_dagster.lifecycle.common.outcomes import StageOutcome, stopwatch, transfer_metadata
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.common.progress import pending_on_transient
from ccat_dagster.lifecycle.common.retries import handle_failure
from ccat_dagster.lifecycle.ingest.raw_data_packages import package_files
from ccat_dagster.lifecycle.staging.requests import (
    DRILL_REQUESTER,
    ENTITY,
    verified_lta_copies,
)
from ccat_dagster.packaging import RAW_DATA_PACKAGE, ExpectedMember, unpack_package
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import (
    LocationUnavailableError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from ccat_dagster.storage.local import map_os_error, partial_dir
from ccat_ops_db.audit import audit, audit_many
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    StagingJob,
    Status,
    staging_job_raw_data_package,
    table_of,
    utcnow,
)
from ccat_ops_db.results import count

StorageFor = Callable[[DataLocation], Storage]
S = PhysicalCopyStatus
#: job statuses the staging stage still works on
OPEN = (Status.PENDING, Status.IN_PROGRESS)
#: copy statuses of a cleanup run deleting the copy right now: staging waits for it to finish
CLAIMED = (S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS)
_RETRY_PREFIX = "retry "


# --------------------------------------------------------------------------- ready work


def _claimed_at_location() -> sa.ColumnElement[bool]:
    """A copy of the package (its tar or one of its files) at the job's location that a cleanup
    run has claimed: staging waits until that deletion has finished."""
    sj, sjp = table_of(StagingJob), staging_job_raw_data_package
    package_copy = table_of(RawDataPackagePhysicalCopy).alias("claimed_package_copy")
    file_copy = table_of(RawDataFilePhysicalCopy).alias("claimed_file_copy")
    rdf = table_of(RawDataFile).alias("claimed_file")
    claimed_package = (
        sa.exists()
        .where(
            package_copy.c.raw_data_package_id == sjp.c.raw_data_package_id,
            package_copy.c.data_location_id == sj.c.destination_location_id,
            package_copy.c.status.in_(CLAIMED),
        )
        .correlate_except(package_copy)
    )
    claimed_file = (
        sa.exists()
        .where(
            rdf.c.raw_data_package_id == sjp.c.raw_data_package_id,
            file_copy.c.raw_data_file_id == rdf.c.id,
            file_copy.c.data_location_id == sj.c.destination_location_id,
            file_copy.c.status.in_(CLAIMED),
        )
        .correlate_except(file_copy, rdf)
    )
    return sa.or_(claimed_package, claimed_file)


def staging_candidates(session: Session, site: Site) -> list[tuple[int, int]]:
    """(package id, PROCESSING location id) that an open, active job at one of ``site``'s
    PROCESSING locations wants, oldest job first; every one is checked (and restored if
    needed) by :func:`stage_raw_data_package`, even if the catalogue says it is staged."""
    sj = table_of(StagingJob)
    sjp = staging_job_raw_data_package
    dl = table_of(DataLocation)
    rows = session.execute(
        sa.select(sjp.c.raw_data_package_id, sj.c.destination_location_id, sa.func.min(sj.c.id))
        .select_from(sj.join(sjp, sjp.c.staging_job_id == sj.c.id))
        .join(dl, dl.c.id == sj.c.destination_location_id)
        .where(
            sj.c.active.is_(True),
            sj.c.status.in_(OPEN),
            dl.c.site_id == site.id,
            dl.c.location_type == LocationType.PROCESSING,
            dl.c.active.is_(True),
            ~_claimed_at_location(),
            # a restore drill stages its own job, timed, from the archive it tests
            sa.or_(sj.c.requested_by.is_(None), sj.c.requested_by != DRILL_REQUESTER),
        )
        .group_by(sjp.c.raw_data_package_id, sj.c.destination_location_id)
        .order_by(sa.func.min(sj.c.id), sjp.c.raw_data_package_id)
    ).all()
    return [(pid, lid) for pid, lid, _ in rows]


def open_jobs_for(session: Session, package: RawDataPackage, location: DataLocation):
    """The active, open jobs to ``location`` that include ``package``."""
    return list(
        session.scalars(
            sa.select(StagingJob)
            .join(
                staging_job_raw_data_package,
                staging_job_raw_data_package.c.staging_job_id == StagingJob.id,
            )
            .where(
                staging_job_raw_data_package.c.raw_data_package_id == package.id,
                StagingJob.destination_location_id == location.id,
                StagingJob.active.is_(True),
                StagingJob.status.in_(OPEN),
            )
            .order_by(StagingJob.id)
            # their status is what a twin run may have changed: read it, not the session's copy
            .execution_options(populate_existing=True)
        )
    )


def has_active_job(session: Session, package: RawDataPackage, location: DataLocation) -> bool:
    """Is there an active job (any status) to ``location`` that includes ``package``?"""
    return (
        count(
            session,
            sa.select(sa.func.count())
            .select_from(StagingJob)
            .join(
                staging_job_raw_data_package,
                staging_job_raw_data_package.c.staging_job_id == StagingJob.id,
            )
            .where(
                staging_job_raw_data_package.c.raw_data_package_id == package.id,
                StagingJob.destination_location_id == location.id,
                StagingJob.active.is_(True),
            ),
        )
        > 0
    )


# --------------------------------------------------------------------------- staging one package


@dataclass(frozen=True)
class StagedState:
    """What the catalogue and the disk say about one package at one PROCESSING location."""

    package_copy: PhysicalCopyStatus | None
    file_copies: dict[int, PhysicalCopyStatus]  # raw data file id -> copy status there
    missing_on_disk: tuple[str, ...]  # relative paths absent or of the wrong size

    def intact(self, files: Sequence[RawDataFile]) -> bool:
        return (
            self.package_copy == S.STAGED
            and all(self.file_copies.get(f.id) == S.PRESENT for f in files)
            and not self.missing_on_disk
        )

    @property
    def claimed(self) -> bool:
        return self.package_copy in CLAIMED or any(s in CLAIMED for s in self.file_copies.values())


def _files(session: Session, package: RawDataPackage) -> list[RawDataFile]:
    """The files in the package's tar (files declared lost before packaging are not)."""
    return package_files(session, package)


def staged_state(
    session: Session,
    package: RawDataPackage,
    location: DataLocation,
    files: Sequence[RawDataFile],
    storage: Storage,
) -> StagedState:
    package_copy = session.scalar(
        sa.select(RawDataPackagePhysicalCopy.status).where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            RawDataPackagePhysicalCopy.data_location_id == location.id,
        )
    )
    file_copies = {
        file_id: status
        for file_id, status in session.execute(
            sa.select(RawDataFilePhysicalCopy.raw_data_file_id, RawDataFilePhysicalCopy.status)
            .join(RawDataFile, RawDataFile.id == RawDataFilePhysicalCopy.raw_data_file_id)
            .where(
                RawDataFile.raw_data_package_id == package.id,
                RawDataFilePhysicalCopy.data_location_id == location.id,
            )
        ).tuples()
        if file_id is not None  # joined on it
    }
    missing = []
    for f in files:
        st = storage.stat(f.relative_path)
        if not st.exists or st.size != f.size:
            missing.append(f.relative_path)
    return StagedState(package_copy, file_copies, tuple(missing))


def lta_sources(
    session: Session, package: RawDataPackage, location: DataLocation
) -> list[DataLocation]:
    """LONG_TERM_ARCHIVE locations holding a PRESENT, verified copy of ``package``: those at
    ``location``'s site first, then the others (by site, then location priority)."""
    rows = [lta for _, lta in session.execute(verified_lta_copies([package.id]))]
    return sorted(
        rows, key=lambda lta: (lta.site_id != location.site_id, lta.site_id, lta.priority, lta.id)
    )


class _CountingReader:
    """Counts the bytes read from the archive stream (for the materialization's metadata)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.size += len(data)
        return data


def _processing_root(location: DataLocation) -> Path:
    if not isinstance(location, DiskDataLocation):
        raise PermanentStorageError(
            f"{location.qualified_name} is not a disk location; packages are staged only onto "
            "disk PROCESSING locations"
        )
    return Path(location.path)


def _set_jobs(
    session: Session, jobs: Sequence[StagingJob], status: Status, reason: str, run_id: str | None
) -> None:
    for job in jobs:
        if job.status == status:
            continue
        audit(
            session,
            entity_type=ENTITY,
            entity_id=job.id,
            old_status=job.status,
            new_status=status,
            reason=reason,
            data_location_id=job.destination_location_id,
            run_id=run_id,
        )
        job.status = status
        if status == Status.COMPLETED:
            job.completed_at = utcnow()
            job.failure_reason = None


def _unpack_from(
    package: RawDataPackage,
    location: DataLocation,
    files: Sequence[RawDataFile],
    sources: Sequence[DataLocation],
    storage_for: StorageFor,
) -> tuple[DataLocation, int]:
    """Stream the package from the first source that works and unpack it; returns (source,
    bytes read). Every source is tried; transient trouble everywhere is re-raised as transient."""
    expected = {
        f.relative_path: ExpectedMember(
            size=f.size, checksum=f.checksum, algorithm=f.checksum_algorithm
        )
        for f in files
    }
    root = _processing_root(location)
    errors: list[StorageError] = []
    for lta in sources:
        try:
            with storage_for(lta).open_read(package.relative_path) as stream:
                reader = _CountingReader(stream)
                unpack_package(
                    cast(BinaryIO, reader),  # read() is all unpack_package uses
                    root,
                    expected=expected,
                    kind=RAW_DATA_PACKAGE,
                    name=package.name,
                    tmp_parent=partial_dir(root),
                )
            return lta, reader.size
        except StorageError as exc:
            errors.append(exc)
        except OSError as exc:  # writing at the PROCESSING location: another LTA will not help
            raise map_os_error(
                exc,
                location=location.qualified_name,
                key=None,
                reading=False,
                root=root,
            ) from exc
    detail = "; ".join(f"{lta.qualified_name}: {e}" for lta, e in zip(sources, errors, strict=True))
    if all(isinstance(e, LocationUnavailableError) for e in errors):
        raise errors[-1]  # no archive answers: the (last) one is marked, the package waits
    if any(isinstance(e, TransientStorageError) for e in errors):
        raise TransientStorageError(f"cannot stage {package.name} now: {detail}")
    raise PermanentStorageError(
        f"no long-term archive copy of {package.name} could be staged to "
        f"{location.qualified_name}: {detail}"
    )


def staging_retry_count(session: Session, job: StagingJob) -> int:
    """Failed attempts of ``job`` so far (kept in the audit log: StagingJob has no counter)."""
    from ccat_ops_db.models import AuditLog

    return count(
        session,
        sa.select(sa.func.count())
        .select_from(AuditLog)
        .where(
            AuditLog.entity_type == ENTITY,
            AuditLog.entity_id == job.id,
            AuditLog.reason.like(f"{_RETRY_PREFIX}%"),
        ),
    )


class _JobAttempts:
    """A StagingJob as :func:`handle_failure` sees an operation, its retry count from the audit
    log; status and reason go straight to the job row."""

    def __init__(self, session: Session, job: StagingJob) -> None:
        self._job = job
        self.id = job.id
        self.retry_count = staging_retry_count(session, job)

    @property
    def status(self) -> Status:
        return self._job.status

    @status.setter
    def status(self, value: Status) -> None:
        self._job.status = value

    @property
    def failure_reason(self) -> str | None:
        return self._job.failure_reason

    @failure_reason.setter
    def failure_reason(self, value: str | None) -> None:
        self._job.failure_reason = value


def _staging_failed(
    session: Session,
    package: RawDataPackage,
    location: DataLocation,
    jobs: Sequence[StagingJob],
    exc: BaseException,
    run_id: str | None,
) -> StageOutcome:
    """Every open job wanting the package goes back to PENDING for another attempt, or FAILED
    with the reason after the policy's max_retries."""
    max_retries = get_policy(session).max_retries
    permanent = True
    reason = f"{package.name} -> {location.qualified_name}: {exc}"
    for job in jobs:
        permanent &= handle_failure(
            session,
            _JobAttempts(session, job),
            reason,
            max_retries=max_retries,
            entity_type=ENTITY,
            run_id=run_id,
        )
    session.commit()
    return StageOutcome(package.name, ok=False, error=str(exc), permanent=permanent)


def stage_raw_data_package(
    session: Session,
    package: RawDataPackage,
    location: DataLocation,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
    only_from: DataLocation | None = None,
) -> StageOutcome:
    """Make ``package`` staged and intact at the PROCESSING ``location`` for its open jobs.

    Already intact (catalogue and disk): nothing is fetched (the files are shared). Otherwise
    the package is streamed from the nearest verified LTA copy into the location root and
    verified; files already there with identical content are kept, missing ones restored, and a
    different file in the way stops it (nothing is overwritten). Then the copies are recorded
    and every open job whose packages are all intact there becomes COMPLETED. With
    ``only_from`` the package is read from that archive only (the restore drill tests each
    archive), provided it holds a verified copy.
    """
    files = _files(session, package)
    target = storage_for(location)
    # The catalogue writes of staging take turns per location: a twin run staging the same
    # package at once (a sensor run and a partition materialized by hand) reads what this one
    # recorded instead of recording the copies and completing the jobs a second time.
    lock = scope(STAGING, location.id)
    with planner_lock(session, lock, run_id=run_id):
        jobs = open_jobs_for(session, package, location)
        state = staged_state(session, package, location, files, target)
        if state.claimed:
            return StageOutcome(
                package.name,
                ok=False,
                error=(
                    f"a cleanup run is deleting copies of {package.name} at "
                    f"{location.qualified_name}; staging retries after it finished"
                ),
            )
        if state.intact(files):
            _complete_jobs(session, location, jobs, target, run_id=run_id, just_checked=package.id)
            return StageOutcome(
                package.name,
                ok=True,
                skipped=True,
                metadata={"note": f"already staged at {location.qualified_name}; files shared"},
            )
        _set_jobs(session, jobs, Status.IN_PROGRESS, f"staging {package.name} from the LTA", run_id)
    sources = lta_sources(session, package, location)
    if only_from is not None:
        sources = [lta for lta in sources if lta.id == only_from.id]
    if not sources:
        return _staging_failed(
            session,
            package,
            location,
            jobs,
            PermanentStorageError("no PRESENT, verified copy in any LONG_TERM_ARCHIVE"),
            run_id,
        )
    try:
        with (
            pending_on_transient(
                session, jobs, entity_type=ENTITY, run_id=run_id, data_location_id=location.id
            ),
            stopwatch() as watch,
        ):
            source, bytes_read = _unpack_from(package, location, files, sources, storage_for)
    except PermanentStorageError as exc:
        return _staging_failed(session, package, location, jobs, exc, run_id)
    missing = set(state.missing_on_disk)
    with planner_lock(session, lock, run_id=run_id):
        jobs = open_jobs_for(session, package, location)  # a twin may have completed them
        _record_staged(session, package, location, files, state, source, run_id)
        _complete_jobs(session, location, jobs, target, run_id=run_id, just_checked=package.id)
    return StageOutcome(
        package.name,
        ok=True,
        metadata=transfer_metadata(
            name=package.name,
            size=package.size,
            checksum=package.checksum,
            algorithm=package.checksum_algorithm,
            source=source.qualified_name,
            destination=location.qualified_name,
            seconds=watch.seconds,
            file_count=len(files),
            files_bytes=sum(f.size for f in files),
            bytes_read=bytes_read,
            files_written=len(state.missing_on_disk),
            files_restored=sum(
                1 for f in files if f.relative_path in missing and f.id in state.file_copies
            ),
            staging_jobs=", ".join(str(j.id) for j in jobs) or "none open",
        ),
    )


def _record_staged(
    session: Session,
    package: RawDataPackage,
    location: DataLocation,
    files: Sequence[RawDataFile],
    before: StagedState,
    source: DataLocation,
    run_id: str | None,
) -> None:
    now = utcnow()
    reason = (
        f"staged from {source.qualified_name} for processing, verified against the manifest "
        "and the ops DB"
    )
    missing = set(before.missing_on_disk)
    # Copies the catalogue had as PRESENT whose file was gone: upsert_copy sees no status
    # change there, so the restore is recorded separately.
    restored = [
        f for f in files if f.relative_path in missing and before.file_copies.get(f.id) == S.PRESENT
    ]
    copies = {
        f.id: upsert_copy(
            session,
            RawDataFilePhysicalCopy,
            "raw_data_file_id",
            f.id,
            location,
            size=f.size,
            checksum=f.checksum,
            algorithm=f.checksum_algorithm,
            reason=reason,
            verified_at=now,
            run_id=run_id,
        )
        for f in files
    }
    audit_many(
        session,
        [
            {
                "entity_type": "physical_copy",
                "entity_id": copies[f.id].id,
                "data_location_id": location.id,
                "old_status": S.PRESENT,
                "new_status": S.PRESENT,
                "reason": f"restored from {source.qualified_name}: the file was missing on disk",
                "run_id": run_id,
                "evidence": {"key": f.relative_path},
            }
            for f in restored
        ],
    )
    upsert_copy(
        session,
        RawDataPackagePhysicalCopy,
        "raw_data_package_id",
        package.id,
        location,
        size=package.size,
        checksum=package.checksum,
        algorithm=package.checksum_algorithm,
        status=S.STAGED,
        reason=(
            f"unpacked at {location.qualified_name} from a stream of {source.qualified_name}; "
            "no package archive is kept there"
        ),
        verified_at=now,
        run_id=run_id,
    )


def _complete_jobs(
    session: Session,
    location: DataLocation,
    jobs: Sequence[StagingJob],
    storage: Storage,
    *,
    run_id: str | None,
    just_checked: int,
) -> None:
    """COMPLETED for every job whose packages are all intact at ``location`` (catalogue, then
    disk; ``just_checked`` is the package this call has just made intact)."""
    cache: dict[int, bool] = {just_checked: True}
    for job in jobs:
        ok = True
        for package in job.raw_data_packages:
            if package.id not in cache:
                files = _files(session, package)
                cache[package.id] = staged_state(session, package, location, files, storage).intact(
                    files
                )
            if not cache[package.id]:
                ok = False
                break
        if ok:
            _set_jobs(
                session,
                [job],
                Status.COMPLETED,
                f"all {len(job.raw_data_packages)} package(s) staged and intact at "
                f"{location.qualified_name}",
                run_id,
            )
