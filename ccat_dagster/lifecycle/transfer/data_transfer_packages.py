"""Stage 2: completed RawDataPackages at a source-site BUFFER are bundled into DataTransferPackages.

A bundle closes when it reaches ``data_transfer_package_max_bytes``, or when its oldest package
has waited ``data_transfer_package_max_wait_minutes`` (so a trickle of data still ships). The tar
of tars is written in one pass; every RawDataPackage tar is verified against its recorded
checksum on the way, so a package that rotted in the buffer never leaves the site.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.copies import discard_bad_copy, upsert_copy
from ccat_dagster.lifecycle.common.locks import BUNDLING, planner_lock, scope
from ccat_dagster.lifecycle.common.outcomes import StageOutcome, stopwatch, transfer_metadata
from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.lifecycle.common.progress import pending_on_transient, set_status
from ccat_dagster.lifecycle.common.retries import handle_failure
from ccat_dagster.packaging import (
    PackageMember,
    PackageSourceChangedError,
    PackagingError,
    write_package,
)
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import PermanentStorageError
from ccat_ops_db.audit import audit, audit_many
from ccat_ops_db.models import (
    DataLocation,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    PackageState,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Status,
    as_utc,
    utcnow,
)
from ccat_ops_db.results import required, rowcount

StorageFor = Callable[[DataLocation], Storage]


def data_transfer_package_key(name: str) -> str:
    return f"data_transfer_packages/{name}.tar"


def bundle_candidates(session: Session, buffer: DataLocation) -> list[RawDataPackage]:
    """COMPLETED, WAITING packages PRESENT at this buffer and in no DataTransferPackage yet."""
    present = exists().where(
        RawDataPackagePhysicalCopy.raw_data_package_id == RawDataPackage.id,
        RawDataPackagePhysicalCopy.data_location_id == buffer.id,
        RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
    )
    return list(
        session.scalars(
            select(RawDataPackage)
            .where(
                RawDataPackage.status == Status.COMPLETED,
                RawDataPackage.state == PackageState.WAITING,
                RawDataPackage.data_transfer_package_id.is_(None),
                present,
            )
            .order_by(RawDataPackage.created_at, RawDataPackage.id)
            .execution_options(populate_existing=True)
        )
    )


def plan_bundles(
    packages: Sequence[RawDataPackage], policy: Policy, now: datetime
) -> list[list[RawDataPackage]]:
    """Greedy, in arrival order: close a bundle when the next package would exceed max_bytes;
    the last, partial bundle ships only once its oldest package has waited max_wait."""
    max_bytes = policy.data_transfer_package_max_bytes
    bundles: list[list[RawDataPackage]] = []
    current: list[RawDataPackage] = []
    current_bytes = 0
    for package in packages:
        size = package.size or 0
        if current and current_bytes + size > max_bytes:
            bundles.append(current)
            current, current_bytes = [], 0
        current.append(package)
        current_bytes += size
    if current:
        oldest = min(as_utc(p.created_at) for p in current)
        waited = now - oldest >= timedelta(minutes=policy.data_transfer_package_max_wait_minutes)
        if current_bytes >= max_bytes or waited:
            bundles.append(current)
    return bundles


def create_data_transfer_packages(
    session: Session,
    buffer: DataLocation,
    *,
    now: datetime | None = None,
    run_id: str | None = None,
) -> list[DataTransferPackage]:
    """Create DataTransferPackage rows for the bundles that are ready; packages -> TRANSFERRING.

    Runs under the ``bundling:<buffer id>`` planner lock, so a concurrent twin reads only after
    this one committed. Should one slip through anyway, a package is bundled only while it is in
    no bundle, and a bundle that did not get every package it was planned with is not made.
    """
    with planner_lock(session, scope(BUNDLING, buffer.id), run_id=run_id):
        policy = get_policy(session)
        bundles = plan_bundles(bundle_candidates(session, buffer), policy, now or utcnow())
        created = [
            dtp for bundle in bundles if (dtp := _create_bundle(session, buffer, bundle, run_id))
        ]
        session.commit()
    for p in (p for b in bundles for p in b):
        session.refresh(p)
    return created


def _create_bundle(
    session: Session, buffer: DataLocation, bundle: list[RawDataPackage], run_id: str | None
) -> DataTransferPackage | None:
    name = f"{buffer.site.short_name}.{utcnow():%Y%m%dT%H%M%S}.{uuid.uuid4().hex[:8]}"
    dtp = DataTransferPackage(
        name=name,
        relative_path=data_transfer_package_key(name),
        status=Status.PENDING,
        origin_location_id=buffer.id,
    )
    session.add(dtp)
    session.flush()
    ids = [p.id for p in bundle]
    bundled = rowcount(
        session.execute(
            update(RawDataPackage)
            .where(
                RawDataPackage.id.in_(ids),
                RawDataPackage.data_transfer_package_id.is_(None),
                RawDataPackage.state == PackageState.WAITING,
            )
            .values(data_transfer_package_id=dtp.id, state=PackageState.TRANSFERRING)
            .execution_options(synchronize_session=False)
        )
    )
    if bundled != len(ids):
        # A twin bundled some of them first: undo this bundle, its packages stay where they were.
        session.execute(
            update(RawDataPackage)
            .where(RawDataPackage.data_transfer_package_id == dtp.id)
            .values(data_transfer_package_id=None, state=PackageState.WAITING)
            .execution_options(synchronize_session=False)
        )
        session.delete(dtp)
        session.flush()
        return None
    audit_many(
        session,
        [
            {
                "entity_type": "raw_data_package",
                "entity_id": pid,
                "old_status": PackageState.WAITING,
                "new_status": PackageState.TRANSFERRING,
                "reason": f"bundled into data transfer package {name}",
                "run_id": run_id,
            }
            for pid in ids
        ],
    )
    return dtp


def _rebuild_corrupt_package(
    session: Session,
    dtp: DataTransferPackage,
    package: RawDataPackage,
    storage: Storage,
    exc: PackagingError | PermanentStorageError,
    run_id: str | None,
) -> StageOutcome:
    """A RawDataPackage tar rotted in the buffer (``exc`` from packaging) or is gone from it
    (``exc`` from the storage): remove the bad copy, take the package out of this bundle and
    re-package it from the SOURCE files (counting towards its retries); the bundle is retried
    with the others."""
    buffer = dtp.origin_location
    found = "gone from" if isinstance(exc, PermanentStorageError) else "corrupt in"
    discard_bad_copy(
        session,
        storage,
        RawDataPackagePhysicalCopy,
        "raw_data_package_id",
        package.id,
        buffer,
        package.relative_path,
        reason=f"{found} {buffer.qualified_name}, removed to re-package from SOURCE: {exc}",
        run_id=run_id,
    )
    package.data_transfer_package_id = None
    permanent = handle_failure(
        session,
        package,
        exc,
        max_retries=get_policy(session).max_retries,
        entity_type="raw_data_package",
        packages=[package],
        run_id=run_id,
    )
    if not permanent:
        audit(
            session,
            entity_type="raw_data_package",
            entity_id=package.id,
            old_status=package.state,
            new_status=PackageState.WAITING,
            reason=f"taken out of bundle {dtp.name} to be re-packaged",
            run_id=run_id,
        )
        package.state = PackageState.WAITING
    remaining = [p for p in dtp.raw_data_packages if p.id != package.id]
    dtp.status = Status.PENDING if remaining else Status.FAILED
    if not remaining:
        dtp.failure_reason = f"its only package {package.name} was corrupt in the buffer"
    session.commit()
    return StageOutcome(dtp.name, ok=False, error=str(exc), permanent=permanent)


def pending_data_transfer_packages(session: Session, buffer: DataLocation):
    return list(
        session.scalars(
            select(DataTransferPackage)
            .where(
                DataTransferPackage.origin_location_id == buffer.id,
                DataTransferPackage.status.in_(
                    [Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS]
                ),
            )
            .order_by(DataTransferPackage.id)
        )
    )


def bundle_members(
    packages: Sequence[RawDataPackage], storage_of: Callable[[RawDataPackage], Storage]
) -> list[PackageMember]:
    """The members of a bundle: each package tar, read from ``storage_of(package)`` and checked
    against its recorded size and checksum as it is written (in the order given)."""
    return [
        PackageMember(
            arcname=f"{p.name}.tar",
            size=required(p.size, f"size of package {p.name}"),
            checksum=required(p.checksum, f"checksum of package {p.name}"),
            open=partial(storage_of(p).open_read, p.relative_path),
        )
        for p in packages
    ]


def build_data_transfer_package(
    session: Session,
    dtp: DataTransferPackage,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Write the tar of RawDataPackage tars at its buffer, verifying each against the ops DB."""
    if dtp.status == Status.COMPLETED:
        return StageOutcome(dtp.name, ok=True, skipped=True)
    buffer = dtp.origin_location
    storage = storage_for(buffer)
    packages = sorted(dtp.raw_data_packages, key=lambda p: p.name)
    members = bundle_members(packages, lambda _package: storage)
    set_status(
        session,
        dtp,
        Status.IN_PROGRESS,
        entity_type="data_transfer_package",
        reason=f"bundling {len(packages)} packages at {buffer.qualified_name}",
        run_id=run_id,
    )
    session.commit()
    try:
        with (
            pending_on_transient(session, dtp, entity_type="data_transfer_package", run_id=run_id),
            stopwatch() as watch,
            storage.open_write(dtp.relative_path) as out,
        ):
            result = write_package(out, members, kind="data_transfer_package", name=dtp.name)
    except PackageSourceChangedError as exc:
        corrupt = next((p for p in packages if f"{p.name}.tar" == exc.member), None)
        if corrupt is None:
            raise
        return _rebuild_corrupt_package(session, dtp, corrupt, storage, exc, run_id)
    except PermanentStorageError as exc:
        # a package tar removed from the buffer (before an audit saw it): re-made like a
        # corrupt one, not the bundle's fault (a missing mount raises here, and waits)
        gone = next((p for p in packages if not storage.stat(p.relative_path).exists), None)
        if gone is not None:
            return _rebuild_corrupt_package(session, dtp, gone, storage, exc, run_id)
        permanent = handle_failure(
            session,
            dtp,
            exc,
            max_retries=get_policy(session).max_retries,
            entity_type="data_transfer_package",
            packages=packages,
            run_id=run_id,
        )
        session.commit()
        return StageOutcome(dtp.name, ok=False, error=str(exc), permanent=permanent)
    dtp.size = result.size
    dtp.checksum = result.checksum
    dtp.checksum_algorithm = result.algorithm
    dtp.failure_reason = None
    upsert_copy(
        session,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        buffer,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        reason="bundle written and checksummed in one pass",
        run_id=run_id,
    )
    set_status(
        session,
        dtp,
        Status.COMPLETED,
        entity_type="data_transfer_package",
        reason=f"bundled {len(packages)} packages",
        data_location_id=buffer.id,
        run_id=run_id,
        evidence={"size": result.size, "checksum": result.checksum},
    )
    session.commit()
    return StageOutcome(
        dtp.name,
        ok=True,
        metadata=transfer_metadata(
            name=dtp.name,
            size=result.size,
            checksum=result.checksum,
            algorithm=result.algorithm,
            source=buffer.qualified_name,
            destination=buffer.qualified_name,
            seconds=watch.seconds,
            package_count=len(packages),
            raw_data_packages=", ".join(p.name for p in packages[:50]),
        ),
    )
