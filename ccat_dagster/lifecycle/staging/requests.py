"""StagingJobs: scientists ask for archived RawDataPackages at a PROCESSING location, and say
when they are done with them (docs/lifecycle.md: staging job, retention, the deletion matrix).

A job names a PROCESSING location and packages (directly or by ExecutedObsUnit); it is accepted
only when every package has a PRESENT, verified copy in a LONG_TERM_ARCHIVE, and nothing is
written otherwise. The staging itself is :mod:`ccat_dagster.lifecycle.staging.execution`.
``complete_staging_job`` sets ``active=False``; the deletion rules
(:mod:`ccat_dagster.lifecycle.deletion.rules`) then remove a package's files once no active job
uses it. A job's retention is the date its requester expects to be done by, for the operator
(``ccat staging list`` flags active jobs past it): it never releases the files of an active job.
No Dagster here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.locations import LocationError, resolve_location
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    ExecutedObsUnit,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    StagingJob,
    Status,
    as_utc,
    qualified_location_name,
    staging_job_raw_data_package,
)

S = PhysicalCopyStatus
#: ``requested_by`` of the staging jobs of restore drills (:mod:`.drill`): the drill stages
#: them itself, so the staging stage leaves them alone
DRILL_REQUESTER = "restore-drill"
MINUTES_PER_DAY = 24 * 60
ENTITY = "staging_job"


class StagingError(ValueError):
    """A staging request or command that cannot be carried out; nothing was changed."""


# --------------------------------------------------------------------------- jobs


def resolve_processing_location(session: Session, location: str | DataLocation) -> DataLocation:
    """The active PROCESSING disk location ``site/name`` (or a unique ``name``), else
    StagingError naming the valid ones."""
    if isinstance(location, str):
        try:
            location = resolve_location(session, location)
        except LocationError as exc:
            raise StagingError(f"{exc}; staging needs a PROCESSING location") from None
    where = location.qualified_name
    if location.location_type != LocationType.PROCESSING:
        raise StagingError(
            f"{where} is a {location.location_type.value} location, not PROCESSING; data is "
            f"staged only to PROCESSING locations: {_processing_names(session)}"
        )
    if not (location.active and location.site.active):
        raise StagingError(
            f"PROCESSING location {where} is inactive; active ones: "
            f"{_processing_names(session)} (activate it with `ccat topology apply`)"
        )
    if not isinstance(location, DiskDataLocation):
        raise StagingError(
            f"PROCESSING location {where} is {location.storage_type.value} storage; packages "
            "are unpacked only onto disk"
        )
    return location


def _processing_names(session: Session) -> str:
    rows = session.execute(
        sa.select(Site.short_name, DataLocation.name)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            DataLocation.location_type == LocationType.PROCESSING,
            DataLocation.active.is_(True),
            Site.active.is_(True),
        )
        .order_by(Site.short_name, DataLocation.name)
    ).all()
    return (
        ", ".join(qualified_location_name(s, n) for s, n in rows)
        or "(none: add one to the topology)"
    )


def _packages_by_name(session: Session, names: Sequence[str]) -> list[RawDataPackage]:
    found = {
        p.name: p
        for p in session.scalars(sa.select(RawDataPackage).where(RawDataPackage.name.in_(names)))
    }
    unknown = [n for n in names if n not in found]
    if unknown:
        raise StagingError(
            f"unknown raw data package(s): {', '.join(unknown)}; package names are shown by "
            "`ccat status` and in the Dagster UI (partitions of raw_data_packages)"
        )
    return [found[n] for n in names]


def _obs_units(session: Session, refs: Sequence[str]) -> list[ExecutedObsUnit]:
    """Obs units by name, or by numeric id when no unit has that name."""
    out = []
    unknown = []
    for ref in refs:
        unit = session.scalar(sa.select(ExecutedObsUnit).where(ExecutedObsUnit.name == ref))
        if unit is None and ref.isdigit():
            unit = session.get(ExecutedObsUnit, int(ref))
        if unit is None:
            unknown.append(ref)
        else:
            out.append(unit)
    if unknown:
        raise StagingError(f"unknown executed obs unit(s) (name or id): {', '.join(unknown)}")
    return out


def _packages_of_obs_units(
    session: Session, units: Sequence[ExecutedObsUnit]
) -> list[RawDataPackage]:
    packages: list[RawDataPackage] = []
    empty = []
    for unit in units:
        found = list(
            session.scalars(
                sa.select(RawDataPackage)
                .where(RawDataPackage.executed_obs_unit_id == unit.id)
                .order_by(RawDataPackage.name)
            )
        )
        if not found:
            empty.append(unit.name)
        packages += found
    if empty:
        raise StagingError(
            f"executed obs unit(s) {', '.join(empty)} have no RawDataPackage yet: their files "
            "are not packaged, so nothing of them is archived to stage"
        )
    return packages


def verified_lta_copies(package_ids: Iterable[int]) -> sa.Select:
    """(package id, LTA location) of every PRESENT, verified copy in an active LTA."""
    return (
        sa.select(RawDataPackagePhysicalCopy.raw_data_package_id, DataLocation)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id.in_(list(package_ids)),
            RawDataPackagePhysicalCopy.status == S.PRESENT,
            RawDataPackagePhysicalCopy.verified_at.is_not(None),
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
            DataLocation.active.is_(True),
            Site.active.is_(True),
        )
    )


def _require_archived(session: Session, packages: Sequence[RawDataPackage]) -> None:
    archived = {pid for pid, _ in session.execute(verified_lta_copies(p.id for p in packages))}
    missing = [p for p in packages if p.id not in archived]
    if missing:
        names = ", ".join(f"{p.name} ({p.state.value})" for p in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise StagingError(
            f"nothing archived yet for {len(missing)} of {len(packages)} requested package(s): "
            f"{names}{more}; only packages with a verified copy in a LONG_TERM_ARCHIVE can be "
            "staged. Wait until they are ARCHIVED (`ccat status`), or leave them out."
        )


def retention_minutes(
    session: Session, location: DataLocation, retention_days: float | None
) -> int:
    """Retention of a new job: the requested days, else the location's override, else the
    policy's ``retention_period_minutes`` (docs/lifecycle.md: retention)."""
    if retention_days is None:
        return location.retention_period_minutes or get_policy(session).retention_period_minutes
    if retention_days <= 0:
        raise StagingError(
            f"--retention-days must be positive (got {retention_days}); it is how long you "
            "expect to need the staged files (they stay until the job is completed)"
        )
    return max(1, round(retention_days * MINUTES_PER_DAY))


def create_staging_job(
    session: Session,
    *,
    location: str | DataLocation,
    packages: Sequence[str] = (),
    obs_units: Sequence[str] = (),
    retention_days: float | None = None,
    requested_by: str | None = None,
    run_id: str | None = None,
) -> StagingJob:
    """Validate the request completely, then create the StagingJob (PENDING, active) and commit.

    Raises StagingError, with nothing written, for an unknown package or obs unit, a location
    that is not an active PROCESSING disk location, or a package without a verified LTA copy.
    """
    location = resolve_processing_location(session, location)
    names = list(dict.fromkeys(packages))
    refs = list(dict.fromkeys(str(u) for u in obs_units))
    if not names and not refs:
        raise StagingError("name at least one package (--package) or obs unit (--obs-unit)")
    chosen = _packages_by_name(session, names) if names else []
    if refs:
        chosen += _packages_of_obs_units(session, _obs_units(session, refs))
    chosen = list({p.id: p for p in chosen}.values())
    _require_archived(session, chosen)
    minutes = retention_minutes(session, location, retention_days)
    job = StagingJob(
        active=True,
        status=Status.PENDING,
        destination_location_id=location.id,
        retention_period_minutes=minutes,
        requested_by=requested_by,
    )
    job.raw_data_packages.extend(chosen)
    session.add(job)
    session.flush()
    audit(
        session,
        entity_type=ENTITY,
        entity_id=job.id,
        new_status=Status.PENDING,
        reason=(
            f"staging {len(chosen)} package(s) to {location.qualified_name} requested"
            + (f" by {requested_by}" if requested_by else "")
        ),
        data_location_id=location.id,
        run_id=run_id,
        evidence={
            "packages": [p.name for p in chosen][:1000],
            "obs_units": refs,
            "retention_period_minutes": minutes,
        },
    )
    session.commit()
    return job


def get_staging_job(session: Session, job_id: int) -> StagingJob:
    job = session.get(StagingJob, job_id)
    if job is None:
        raise StagingError(f"there is no staging job {job_id}; `ccat staging list` shows them")
    return job


def complete_staging_job(
    session: Session, job_id: int, *, run_id: str | None = None
) -> tuple[StagingJob, bool]:
    """The scientist is done: ``active=False`` (audited) and commit. Returns (job, changed);
    completing an inactive job again changes nothing. Its files are deleted by the next cleanup
    of the site once no other live job uses their packages."""
    job = get_staging_job(session, job_id)
    if not job.active:
        return job, False
    job.active = False
    audit(
        session,
        entity_type=ENTITY,
        entity_id=job.id,
        old_status="ACTIVE",
        new_status="INACTIVE",
        reason=(
            f"completed (status was {job.status.value}): its staged files may be deleted once "
            "no other live staging job uses them"
        ),
        data_location_id=job.destination_location_id,
        run_id=run_id,
    )
    session.commit()
    return job, True


def list_staging_jobs(
    session: Session, *, active_only: bool = False, location: DataLocation | None = None
) -> list[StagingJob]:
    query = sa.select(StagingJob).order_by(StagingJob.id)
    if active_only:
        query = query.where(StagingJob.active.is_(True))
    if location is not None:
        query = query.where(StagingJob.destination_location_id == location.id)
    return list(session.scalars(query))


def staged_counts(session: Session, jobs: Sequence[StagingJob]) -> dict[int, int]:
    """Job id -> how many of its packages are STAGED at its destination so far: the progress of
    staging, which runs in the staging sensor's runs (one query for all ``jobs``)."""
    if not jobs:
        return {}
    link = staging_job_raw_data_package
    rows = session.execute(
        sa.select(link.c.staging_job_id, sa.func.count())
        .join(StagingJob, StagingJob.id == link.c.staging_job_id)
        .join(
            RawDataPackagePhysicalCopy,
            (RawDataPackagePhysicalCopy.raw_data_package_id == link.c.raw_data_package_id)
            & (RawDataPackagePhysicalCopy.data_location_id == StagingJob.destination_location_id),
        )
        .where(
            link.c.staging_job_id.in_([job.id for job in jobs]),
            RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.STAGED,
        )
        .group_by(link.c.staging_job_id)
    ).all()
    return {job.id: 0 for job in jobs} | {job_id: n for job_id, n in rows}


def retention_ends_at(job: StagingJob) -> datetime | None:
    """When the job's retention ends (counted from when staging finished, else from its creation),
    None = no retention. Information only: the files stay while the job is active, whatever this
    says (only ``active=False`` on every job releases them: docs/lifecycle.md, retention); ``ccat
    staging list`` flags active jobs past it so someone asks the requester to complete them."""
    if job.retention_period_minutes is None:
        return None
    start = as_utc(job.completed_at or job.created_at)
    return start + timedelta(minutes=job.retention_period_minutes)
