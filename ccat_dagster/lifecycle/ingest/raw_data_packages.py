"""Stage 1: filed RawDataFiles at a SOURCE become RawDataPackages in the site's primary BUFFER.

Steps: find the unpackaged files, group them by ExecutedObsUnit x InstrumentModule, pick the
site's primary buffer, write the tar (docs/lifecycle.md: the path of the data).
Records are created set-based (one INSERT per package, one UPDATE per package claiming its files);
the tar is then written in one read pass by :mod:`ccat_dagster.packaging`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from functools import partial

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.copies import upsert_copy
from ccat_dagster.lifecycle.common.locations import get_primary_buffer_for_site
from ccat_dagster.lifecycle.common.locks import PACKAGING, planner_lock, scope
from ccat_dagster.lifecycle.common.outcomes import StageOutcome, stopwatch, transfer_metadata
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.common.progress import pending_on_transient, set_status
from ccat_dagster.lifecycle.common.retries import handle_failure
from ccat_dagster.packaging import PackageMember, write_package
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import PermanentStorageError
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    DataLocation,
    ExecutedObsUnit,
    InstrumentModule,
    LocationType,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
    utcnow,
)
from ccat_ops_db.results import count, rowcount

StorageFor = Callable[[DataLocation], Storage]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def package_name(site: str, obs_unit: str, module: str) -> str:
    """A stable, unique name that is a valid partition key (no '|', ',', '[', ']')."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    parts = [
        site,
        _UNSAFE.sub("-", obs_unit),
        _UNSAFE.sub("-", module),
        stamp,
        uuid.uuid4().hex[:8],
    ]
    return ".".join(p.strip("-.") or "x" for p in parts)


def raw_data_package_key(name: str) -> str:
    """Object key of a RawDataPackage tar, the same at every buffer and archive."""
    return f"raw_data_packages/{name}.tar"


def unpackaged_raw_data_files(source_location: DataLocation):
    """Files filed and PRESENT at the SOURCE that are in no package yet."""
    present = exists().where(
        RawDataFilePhysicalCopy.raw_data_file_id == RawDataFile.id,
        RawDataFilePhysicalCopy.data_location_id == source_location.id,
        RawDataFilePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
    )
    return and_(
        RawDataFile.source_location_id == source_location.id,
        RawDataFile.raw_data_package_id.is_(None),
        present,
    )


def count_unpackaged_files(session: Session, source_location: DataLocation) -> int:
    return count(
        session,
        select(func.count(RawDataFile.id)).where(unpackaged_raw_data_files(source_location)),
    )


def create_raw_data_packages_for_location(
    session: Session, source_location: DataLocation, *, run_id: str | None = None
) -> list[RawDataPackage]:
    """Group the unpackaged files by ExecutedObsUnit x InstrumentModule into new PENDING packages.

    Set-based: one GROUP BY, then per group one INSERT and one UPDATE that claims exactly the
    files still unpackaged (a file filed meanwhile joins the next package, never two). Runs under
    the ``packaging:<location id>`` planner lock, so a concurrent twin (the daemon and a manual
    run) reads only after this one committed; and should one slip through anyway, a package
    whose claim got no file is not created: a package never exists without files.
    """
    if source_location.location_type != LocationType.SOURCE:
        raise ValueError(f"{source_location!r} is not a SOURCE location")
    with planner_lock(session, scope(PACKAGING, source_location.id), run_id=run_id):
        packages = _create_packages(session, source_location, run_id)
    return packages


def _create_packages(
    session: Session, source_location: DataLocation, run_id: str | None
) -> list[RawDataPackage]:
    groups = session.execute(
        select(
            RawDataFile.executed_obs_unit_id,
            RawDataFile.instrument_module_id,
            ExecutedObsUnit.name,
            InstrumentModule.name,
        )
        .join(ExecutedObsUnit, ExecutedObsUnit.id == RawDataFile.executed_obs_unit_id)
        .join(InstrumentModule, InstrumentModule.id == RawDataFile.instrument_module_id)
        .where(unpackaged_raw_data_files(source_location))
        .group_by(
            RawDataFile.executed_obs_unit_id,
            RawDataFile.instrument_module_id,
            ExecutedObsUnit.name,
            InstrumentModule.name,
        )
        .order_by(RawDataFile.executed_obs_unit_id, RawDataFile.instrument_module_id)
    ).all()
    site = source_location.site
    packages = []
    for obs_unit_id, module_id, obs_name, module_name in groups:
        name = package_name(site.short_name, obs_name, module_name)
        package = RawDataPackage(
            name=name,
            relative_path=raw_data_package_key(name),
            status=Status.PENDING,
            state=PackageState.WAITING,
            source_location_id=source_location.id,
            executed_obs_unit_id=obs_unit_id,
            instrument_module_id=module_id,
        )
        session.add(package)
        session.flush()
        # Only files still in no package: on PostgreSQL a twin's claim of the same rows waits
        # for this one and then matches none of them.
        claimed = rowcount(
            session.execute(
                update(RawDataFile)
                .where(
                    unpackaged_raw_data_files(source_location),
                    RawDataFile.executed_obs_unit_id == obs_unit_id,
                    RawDataFile.instrument_module_id == module_id,
                )
                .values(raw_data_package_id=package.id)
                .execution_options(synchronize_session=False)
            )
        )
        if claimed == 0:
            # A twin packaged them first: this package is not created (never an empty one).
            session.delete(package)
            session.flush()
            continue
        package.file_count = claimed
        audit(
            session,
            entity_type="raw_data_package",
            entity_id=package.id,
            new_status=Status.PENDING,
            reason=f"created from {claimed} files of {obs_name} x {module_name}",
            data_location_id=source_location.id,
            run_id=run_id,
        )
        packages.append(package)
    session.commit()
    return packages


def package_files(session: Session, package: RawDataPackage) -> list[RawDataFile]:
    """The files that go into ``package``'s tar: its files, less those declared lost."""
    return list(
        session.scalars(
            select(RawDataFile)
            .where(RawDataFile.raw_data_package_id == package.id, RawDataFile.lost_at.is_(None))
            .order_by(RawDataFile.relative_path)
        )
    )


def has_files_to_package():
    """SQL condition: the RawDataPackage has at least one file not declared lost."""
    return exists().where(
        RawDataFile.raw_data_package_id == RawDataPackage.id, RawDataFile.lost_at.is_(None)
    )


def close_package_without_files(
    session: Session, package: RawDataPackage, *, run_id: str | None = None
) -> str:
    """A package with no file left to package is closed, never written as an empty tar:
    status and state FAILED (both audited), ``file_count`` 0 and a ``failure_reason`` that
    starts with "nothing to archive". Returns that reason; the caller commits."""
    lost = session.scalar(
        select(func.count(RawDataFile.id)).where(
            RawDataFile.raw_data_package_id == package.id, RawDataFile.lost_at.is_not(None)
        )
    )
    if lost:
        reason = (
            f"nothing to archive: all {lost} file(s) of {package.name} were declared lost "
            "(`ccat status` lists them with the reason); no tar is written"
        )
    else:
        reason = (
            f"nothing to archive: {package.name} has no files (an empty package, e.g. left by "
            "two planners racing before planner locks); it is never written or archived"
        )
    package.file_count = 0
    package.failure_reason = reason
    set_status(
        session,
        package,
        Status.FAILED,
        entity_type="raw_data_package",
        reason=reason,
        run_id=run_id,
    )
    if package.state != PackageState.FAILED:
        set_status(
            session,
            package,
            PackageState.FAILED,
            entity_type="raw_data_package",
            reason=reason,
            run_id=run_id,
            attr="state",
        )
    return reason


def pending_raw_data_packages(session: Session, site: Site) -> list[RawDataPackage]:
    """Packages of this site's SOURCE locations whose tar still has to be written."""
    return list(
        session.scalars(
            select(RawDataPackage)
            .join(DataLocation, DataLocation.id == RawDataPackage.source_location_id)
            .where(
                DataLocation.site_id == site.id,
                RawDataPackage.status.in_([Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS]),
            )
            .order_by(RawDataPackage.id)
        )
    )


def build_raw_data_package(
    session: Session,
    package: RawDataPackage,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Write the package's tar to the site's primary BUFFER.

    Each file is read once; its checksum is compared with the one recorded at filing while the
    tar is written. A mismatch (the file changed or rotted at the SOURCE) is retried up to
    ``max_retries`` and then marks the package FAILED; nothing is written under the final name.
    Files declared lost (``ccat files declare-lost``) are left out. A package with no file left
    is never written: it is closed as FAILED with nothing to archive (see
    :func:`close_package_without_files`).
    """
    if package.status == Status.COMPLETED:
        return StageOutcome(package.name, ok=True, skipped=True)
    files = package_files(session, package)
    if not files:
        reason = close_package_without_files(session, package, run_id=run_id)
        session.commit()
        return StageOutcome(package.name, ok=False, error=reason, permanent=True)
    site = package.source_location.site
    buffer = get_primary_buffer_for_site(session, site)
    if buffer is None:
        raise PermanentStorageError(
            f"site {site.short_name!r} has no active BUFFER to package {package.name} into; "
            "activate one in the topology (ccat topology apply)"
        )
    policy = get_policy(session)
    set_status(
        session,
        package,
        Status.IN_PROGRESS,
        entity_type="raw_data_package",
        reason=f"packaging into {buffer.qualified_name}",
        run_id=run_id,
    )
    session.commit()

    source = storage_for(package.source_location)
    target = storage_for(buffer)
    members = [
        PackageMember(
            arcname=f.relative_path,
            size=f.size,
            checksum=f.checksum,
            algorithm=f.checksum_algorithm,
            open=partial(source.open_read, f.relative_path),
        )
        for f in files
    ]
    try:
        with (
            pending_on_transient(session, package, entity_type="raw_data_package", run_id=run_id),
            stopwatch() as watch,
            target.open_write(package.relative_path) as out,
        ):
            result = write_package(out, members, kind="raw_data_package", name=package.name)
    except PermanentStorageError as exc:
        permanent = handle_failure(
            session,
            package,
            exc,
            max_retries=policy.max_retries,
            entity_type="raw_data_package",
            packages=[package],
            run_id=run_id,
        )
        session.commit()
        return StageOutcome(package.name, ok=False, error=str(exc), permanent=permanent)

    if package.checksum is not None and package.checksum != result.checksum:
        # Only a re-package (no tar of the package left anywhere) can get here: the raw files
        # were verified member by member, so their new tar is the package from now on.
        audit(
            session,
            entity_type="raw_data_package",
            entity_id=package.id,
            old_status=package.status,
            new_status=package.status,
            reason=f"re-packaged tar differs from the recorded one: {package.checksum} -> "
            f"{result.checksum} ({result.algorithm}); the raw files matched their checksums",
            data_location_id=buffer.id,
            run_id=run_id,
        )
    package.size = result.size
    package.checksum = result.checksum
    package.checksum_algorithm = result.algorithm
    package.file_count = len(files)
    package.failure_reason = None
    upsert_copy(
        session,
        RawDataPackagePhysicalCopy,
        "raw_data_package_id",
        package.id,
        buffer,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        reason="tar written and checksummed in one pass",
        run_id=run_id,
    )
    set_status(
        session,
        package,
        Status.COMPLETED,
        entity_type="raw_data_package",
        reason=f"packaged {len(files)} files into {buffer.qualified_name}",
        data_location_id=buffer.id,
        run_id=run_id,
        evidence={"size": result.size, "checksum": result.checksum, "algorithm": result.algorithm},
    )
    session.commit()
    return StageOutcome(
        package.name,
        ok=True,
        metadata=transfer_metadata(
            name=package.name,
            size=result.size,
            checksum=result.checksum,
            algorithm=result.algorithm,
            source=package.source_location.qualified_name,
            destination=buffer.qualified_name,
            seconds=watch.seconds,
            file_count=len(files),
        ),
    )
