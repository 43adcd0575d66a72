"""The restore drill: proof that restores work, not only that archive objects exist.

Every ``restore_drill_interval_minutes`` a site with a LONG_TERM_ARCHIVE and a PROCESSING
location restores a random sample (``restore_drill_sample_size``) of the ARCHIVED packages of
each of its archives: one StagingJob (``requested_by`` ``restore-drill``) through the ordinary
staging path (:func:`~ccat_dagster.lifecycle.staging.execution.stage_raw_data_package`, read
from that archive only), then every staged file is read back and checksummed against the
catalogue. The job is completed at once, so the next cleanup deletes the staged files by the
ordinary processing rule (rule 6). A package that does not restore has its archive copy read
back by the scrub's check at once (a corrupt object is marked BAD and repaired).

The outcome of every drill is one ``audit_log`` row (entity ``restore_drill``, the PROCESSING
location; new status PASSED or FAILED; the evidence per package): the ``restore_drill_failed``
alert and the schedule's "is a drill due" read it. No Dagster here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from ccat_dagster.lifecycle.archive.reverification import reverify_lta_copy
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.ingest.raw_data_packages import package_files
from ccat_dagster.lifecycle.staging.execution import stage_raw_data_package
from ccat_dagster.lifecycle.staging.requests import (
    DRILL_REQUESTER,
    StagingError,
    complete_staging_job,
    create_staging_job,
)
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import StorageError
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    DiskDataLocation,
    LocationType,
    PackageState,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    as_utc,
    utcnow,
)

StorageFor = Callable[[DataLocation], Storage]
ENTITY = "restore_drill"
REQUESTER = DRILL_REQUESTER
PASSED, FAILED = "PASSED", "FAILED"
#: a drill cut short by an error of its own run (an archive that stopped answering, say): its
#: record says so, and the next drill is due at once (``last_drill`` counts finished drills only)
INTERRUPTED = "INTERRUPTED"
S = PhysicalCopyStatus


@dataclass
class PackageRestore:
    """One package of a drill: restored from ``lta``, every file checked, how long it took."""

    package: str
    lta: str
    ok: bool
    seconds: float
    bytes: int = 0
    files_verified: int = 0
    detail: str = ""


@dataclass
class DrillReport:
    site: str
    location: str
    started_at: datetime
    seconds: float = 0.0
    packages: list[PackageRestore] = field(default_factory=list)
    staging_job: int | None = None
    note: str = ""
    #: the error that cut the drill short, "" when it ran to its end
    interrupted: str = ""

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(p.ok for p in self.packages)

    @property
    def outcome(self) -> str:
        if self.interrupted:
            return INTERRUPTED
        return PASSED if self.ok else FAILED

    @property
    def failures(self) -> list[PackageRestore]:
        return [p for p in self.packages if not p.ok]

    def evidence(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "staging_job": self.staging_job,
            "packages": [asdict(p) for p in self.packages],
            "note": self.note,
            "interrupted": self.interrupted,
        }

    def describe(self) -> str:
        if self.interrupted:
            done = f"{len(self.packages)} package(s) restored before" if self.packages else ""
            return f"interrupted: {self.interrupted}" + (f" ({done})" if done else "")
        if self.ok:
            return "every file restored and verified"
        return "; ".join(f"{p.package} from {p.lta}: {p.detail}" for p in self.failures)


def drill_location(site: Site) -> DataLocation | None:
    """The PROCESSING disk location of ``site`` drills restore to (lowest priority number)."""
    found = [
        loc
        for loc in site.locations
        if loc.active
        and loc.location_type == LocationType.PROCESSING
        and isinstance(loc, DiskDataLocation)
    ]
    return min(found, key=lambda loc: (loc.priority, loc.id), default=None)


def drill_archives(site: Site) -> list[DataLocation]:
    return sorted(
        (
            loc
            for loc in site.locations
            if loc.active and loc.location_type == LocationType.LONG_TERM_ARCHIVE
        ),
        key=lambda loc: (loc.priority, loc.id),
    )


def drill_sample(
    session: Session, lta: DataLocation, processing: DataLocation, size: int
) -> list[RawDataPackage]:
    """Up to ``size`` ARCHIVED packages, at random, with a verified copy in ``lta`` and no
    live copy at ``processing`` (one already staged there would be shared, not restored)."""
    here = aliased(RawDataPackagePhysicalCopy)
    at_processing = sa.exists().where(
        here.raw_data_package_id == RawDataPackage.id,
        here.data_location_id == processing.id,
        here.status != S.DELETED,
    )
    copy = RawDataPackagePhysicalCopy
    return list(
        session.scalars(
            sa.select(RawDataPackage)
            .join(copy, copy.raw_data_package_id == RawDataPackage.id)
            .where(
                copy.data_location_id == lta.id,
                copy.status == S.PRESENT,
                copy.verified_at.is_not(None),
                RawDataPackage.state == PackageState.ARCHIVED,
                ~at_processing,
            )
            .order_by(sa.func.random())
            .limit(size)
        )
    )


def _verify_files(session: Session, package: RawDataPackage, storage: Storage) -> tuple[int, str]:
    """(files whose bytes match the catalogue, what is wrong: "" when all do)."""
    good = 0
    for f in package_files(session, package):
        try:
            actual, size = storage.checksum(f.relative_path, f.checksum_algorithm)
        except StorageError as exc:
            return good, f"{f.relative_path}: cannot read: {exc}"
        if actual != f.checksum or size != f.size:
            return good, f"{f.relative_path}: {f.checksum_algorithm} {actual} != catalogue"
        good += 1
    return good, ""


def _restore_one(
    session: Session,
    package: RawDataPackage,
    lta: DataLocation,
    processing: DataLocation,
    storage_for: StorageFor,
    run_id: str | None,
) -> PackageRestore:
    start = time.monotonic()
    outcome = stage_raw_data_package(
        session, package, processing, storage_for=storage_for, run_id=run_id, only_from=lta
    )
    files, detail = 0, outcome.error or ""
    if outcome.ok:
        files, detail = _verify_files(session, package, storage_for(processing))
    result = PackageRestore(
        package=package.name,
        lta=lta.qualified_name,
        ok=outcome.ok and not detail,
        seconds=round(time.monotonic() - start, 3),
        bytes=int(package.size or 0) if outcome.ok else 0,
        files_verified=files,
        detail=detail,
    )
    if not result.ok:
        _check_archive_copy(session, package, lta, storage_for, run_id)
    return result


def _check_archive_copy(
    session: Session,
    package: RawDataPackage,
    lta: DataLocation,
    storage_for: StorageFor,
    run_id: str | None,
) -> None:
    """A restore failed: read the archive copy back now; a corrupt one is marked and repaired."""
    try:
        reverify_lta_copy(session, package, lta, storage_for(lta), run_id=run_id)
    except StorageError:
        session.rollback()  # the archive does not answer: the drill's failure says enough


def run_restore_drill(
    session: Session, site: Site, *, storage_for: StorageFor, run_id: str | None = None
) -> DrillReport | None:
    """Restore a random sample of each archive of ``site`` to its PROCESSING location, verify
    it file by file, release it for the cleanup and record the outcome (committed). None when
    the site has no archive or no PROCESSING location to drill with."""
    processing = drill_location(site)
    archives = drill_archives(site)
    if processing is None or not archives:
        return None
    size = get_policy(session).restore_drill_sample_size
    samples = [(p, lta) for lta in archives for p in drill_sample(session, lta, processing, size)]
    report = DrillReport(site.short_name, processing.qualified_name, utcnow())
    start = time.monotonic()
    try:
        if not samples:
            report.note = "nothing archived to restore yet"
        else:
            _restore_samples(session, report, samples, processing, storage_for, run_id)
    except Exception as exc:
        # the run fails (and its alert says why); the drill's record says so too
        session.rollback()
        report.interrupted = f"{type(exc).__name__}: {exc}"
        _record(session, report, processing, time.monotonic() - start, run_id)
        raise
    _record(session, report, processing, time.monotonic() - start, run_id)
    return report


def _restore_samples(
    session: Session,
    report: DrillReport,
    samples: Sequence[tuple[RawDataPackage, DataLocation]],
    processing: DataLocation,
    storage_for: StorageFor,
    run_id: str | None,
) -> None:
    try:
        job = create_staging_job(
            session,
            location=processing,
            packages=list(dict.fromkeys(p.name for p, _ in samples)),
            retention_days=1,
            requested_by=REQUESTER,
            run_id=run_id,
        )
    except StagingError as exc:  # a sampled copy stopped being verified meanwhile
        report.note = f"cannot start: {exc}"
        return
    report.staging_job = job.id
    try:
        for package, lta in samples:
            report.packages.append(
                _restore_one(session, package, lta, processing, storage_for, run_id)
            )
    finally:
        # released at once: the next cleanup deletes the drill's files (rule 6)
        complete_staging_job(session, job.id, run_id=run_id)


def _record(
    session: Session,
    report: DrillReport,
    processing: DataLocation,
    seconds: float,
    run_id: str | None,
) -> None:
    """The drill's audit row (its outcome, reason and evidence), committed."""
    report.seconds = seconds
    audit(
        session,
        entity_type=ENTITY,
        entity_id=processing.id,
        new_status=report.outcome,
        reason=(
            f"restore drill of {len(report.packages)} package(s) to {processing.qualified_name}: "
            + report.describe()
        ),
        data_location_id=processing.id,
        run_id=run_id,
        evidence=report.evidence(),
    )
    session.commit()


def last_drill(session: Session, site: Site) -> AuditLog | None:
    """The latest finished drill of ``site`` (its audit row), None before the first one; an
    interrupted drill is not one (the next is due at once)."""
    return session.scalar(
        sa.select(AuditLog)
        .join(DataLocation, DataLocation.id == AuditLog.data_location_id)
        .where(
            AuditLog.entity_type == ENTITY,
            DataLocation.site_id == site.id,
            AuditLog.new_status != INTERRUPTED,
        )
        .order_by(AuditLog.id.desc())
        .limit(1)
    )


def drill_due(session: Session, site: Site, *, now: datetime | None = None) -> str | None:
    """Why a drill of ``site`` is due now (None: not due): the latest drill, or before the first
    one the site's oldest archive copy, is older than ``restore_drill_interval_minutes``."""
    if drill_location(site) is None or not drill_archives(site):
        return None
    now = now or utcnow()
    interval = timedelta(minutes=get_policy(session).restore_drill_interval_minutes)
    last = last_drill(session, site)
    if last is not None:
        since = as_utc(last.created_at)
        what = "the last restore drill"
    else:
        copy = RawDataPackagePhysicalCopy
        first = session.scalar(
            sa.select(sa.func.min(copy.created_at)).where(
                copy.data_location_id.in_([lta.id for lta in drill_archives(site)]),
                copy.status == S.PRESENT,
            )
        )
        if first is None:
            return None
        since = as_utc(first)
        what = "the first archive copy (no drill yet)"
    if now - since < interval:
        return None
    return f"{what} was at {since.isoformat()}, more than {interval} ago"
