"""Stages 3 and 4 at the destination site: pull a DataTransferPackage, then unpack and verify it.

Transfers run in the destination site's code location and pull from the origin (over SSH when the
origin buffer has a host): pulling is the fast direction with paramiko. The bytes are verified
against the bundle's recorded checksum while they arrive; unpacking verifies every
RawDataPackage tar against the manifest and the ops DB. A mismatch marks the arrived copy bad
(removed: the verified original is still at the origin), and the transfer is retried from the
origin up to ``max_retries``; then FAILED, and the packages it carries with it.

A pull that does not match the recorded checksum, or fails for good (the origin's object may be
gone), re-reads the origin copy before it counts: when the bundle rotted at rest at its origin or
was removed there, every further pull would fail the same way, so the bad origin copy is removed
and the bundle goes back to bundling, which rebuilds it from its package tars (each verified on the
way; the tar bytes are a function of the content, so the rebuilt bundle has the recorded checksum).
That counts towards the bundle's retries, not the transfer's. A bundle that rotted in the buffer of
the archive site forwarding it (a secondary route) is rebuilt there from the verified copies of its
packages at that site (its buffer or archive), counted against the transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.copies import discard_bad_copy, upsert_copy
from ccat_dagster.lifecycle.common.locations import is_lta_site
from ccat_dagster.lifecycle.common.outcomes import StageOutcome, stopwatch, transfer_metadata
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.common.progress import pending_on_transient, set_status, tracked_copy
from ccat_dagster.lifecycle.common.retries import handle_failure, mark_permanent_failure
from ccat_dagster.lifecycle.transfer.data_transfer_packages import bundle_members
from ccat_dagster.packaging import (
    ExpectedMember,
    PackageSourceChangedError,
    unpack_package,
    write_package,
)
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from ccat_dagster.storage.local import map_os_error, partial_dir
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    DiskDataLocation,
    PhysicalCopyStatus,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
)
from ccat_ops_db.results import required

StorageFor = Callable[[DataLocation], Storage]


def transfers_to_site(session: Session, site: Site) -> list[DataTransfer]:
    """Transfers this site has to pull (PENDING or left over by an interrupted run)."""
    return list(
        session.scalars(
            select(DataTransfer)
            .join(DataLocation, DataLocation.id == DataTransfer.destination_location_id)
            .where(
                DataLocation.site_id == site.id,
                DataTransfer.status.in_([Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS]),
                # a bundle being rebuilt at its origin cannot be pulled until it is written again
                DataTransfer.data_transfer_package.has(
                    DataTransferPackage.status == Status.COMPLETED
                ),
            )
            .order_by(DataTransfer.id)
        )
    )


def unpacks_at_site(session: Session, site: Site) -> list[DataTransfer]:
    """Arrived bundles at this (LTA) site that still have to be unpacked."""
    if not is_lta_site(site):
        return []
    return list(
        session.scalars(
            select(DataTransfer)
            .join(DataLocation, DataLocation.id == DataTransfer.destination_location_id)
            .where(
                DataLocation.site_id == site.id,
                DataTransfer.status == Status.COMPLETED,
                DataTransfer.unpack_status.in_(
                    [Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS]
                ),
            )
            .order_by(DataTransfer.id)
        )
    )


def execute_data_transfer(
    session: Session,
    transfer: DataTransfer,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Pull the bundle from its origin into the destination buffer, verified on arrival."""
    dtp = transfer.data_transfer_package
    if transfer.status == Status.COMPLETED or dtp.status != Status.COMPLETED:
        # done already, or the bundle is being rebuilt at its origin (pulled once it is again)
        return StageOutcome(dtp.name, ok=True, skipped=True)
    origin, destination = transfer.origin_location, transfer.destination_location
    try:
        result = tracked_copy(
            session,
            transfer,
            entity_type="data_transfer",
            source=storage_for(origin),
            destination=storage_for(destination),
            key=dtp.relative_path,
            checksum=dtp.checksum,
            algorithm=dtp.checksum_algorithm,
            size=dtp.size,
            reason=f"pulling {dtp.name} from {origin.qualified_name}",
            done_reason="bytes arrived and match the recorded checksum",
            destination_id=destination.id,
            run_id=run_id,
        )
    except PermanentStorageError as exc:  # a checksum mismatch is one too
        # a mismatch, or an error that may be the origin's object being gone: re-read the
        # origin before blaming the transfer (a destination refusing the bytes reads back good)
        session.refresh(dtp)
        if dtp.status != Status.COMPLETED:
            return _wait_for_rebuild(session, transfer, exc, run_id)
        if _rotted_at_origin(storage_for(origin), dtp):
            if transfer.origin_location_id == dtp.origin_location_id:
                return _rebuild_at_origin(session, transfer, storage_for(origin), exc, run_id)
            return _rebuild_at_relay(session, transfer, storage_for, exc, run_id)
        return _transfer_failed(session, transfer, exc, run_id)
    upsert_copy(
        session,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        destination,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        reason=f"{transfer.route_kind} transfer from {origin.qualified_name}, checksum verified",
        run_id=run_id,
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
            source=origin.qualified_name,
            destination=destination.qualified_name,
            seconds=result.seconds,
            route=transfer.route_kind,
            package_count=len(dtp.raw_data_packages),
        ),
    )


def _transfer_failed(
    session: Session,
    transfer: DataTransfer,
    exc: BaseException | str,
    run_id: str | None,
    *,
    permanent: bool = False,
) -> StageOutcome:
    """Count the failure against the transfer's retries (FAILED at once when ``permanent``)."""
    if permanent:
        mark_permanent_failure(
            session,
            transfer,
            exc,
            entity_type="data_transfer",
            packages=transfer.data_transfer_package.raw_data_packages,
            run_id=run_id,
        )
        session.commit()
        return StageOutcome(
            transfer.data_transfer_package.name, ok=False, error=str(exc), permanent=True
        )
    permanent = handle_failure(
        session,
        transfer,
        exc,
        max_retries=get_policy(session).max_retries,
        entity_type="data_transfer",
        packages=transfer.data_transfer_package.raw_data_packages,
        run_id=run_id,
    )
    session.commit()
    return StageOutcome(
        transfer.data_transfer_package.name, ok=False, error=str(exc), permanent=permanent
    )


def _rotted_at_origin(origin: Storage, dtp: DataTransferPackage) -> bool:
    """Re-read the bundle at its origin: True when those bytes are not the recorded ones (or
    the object is gone). An origin that cannot be read now proves nothing: False."""
    try:
        checksum, size = origin.checksum(dtp.relative_path, dtp.checksum_algorithm or "sha256")
    except TransientStorageError:
        return False
    except PermanentStorageError:
        return True
    return checksum != dtp.checksum or size != dtp.size


def _rebuild_at_origin(
    session: Session,
    transfer: DataTransfer,
    origin: Storage,
    exc: StorageError,
    run_id: str | None,
) -> StageOutcome:
    """The bundle rotted at rest at its origin: remove that copy and send the bundle back to
    bundling (counted against the bundle's retries); this transfer waits for it, uncounted."""
    dtp = transfer.data_transfer_package
    location = transfer.origin_location
    discard_bad_copy(
        session,
        origin,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        location,
        dtp.relative_path,
        reason=f"rotted at rest in {location.qualified_name} (re-read after a failed pull: "
        f"{exc}); removed to rebuild the bundle from its package tars",
        run_id=run_id,
    )
    why = f"bundle rotted at rest in {location.qualified_name}, rebuilding it: {exc}"
    permanent = handle_failure(
        session,
        dtp,
        why,
        max_retries=get_policy(session).max_retries,
        entity_type="data_transfer_package",
        packages=dtp.raw_data_packages,
        run_id=run_id,
    )
    if permanent:
        return _transfer_failed(session, transfer, why, run_id, permanent=True)
    return _wait_for_rebuild(session, transfer, exc, run_id)


def _rebuild_at_relay(
    session: Session,
    transfer: DataTransfer,
    storage_for: StorageFor,
    exc: StorageError,
    run_id: str | None,
) -> StageOutcome:
    """The bundle rotted at rest in the buffer of the archive site that forwards it (a
    secondary route): its packages were unpacked and archived at that site, so the bundle is
    rebuilt there from their verified copies (that buffer, else that site's archive; the tar is
    a function of the content, so it gets the recorded checksum) and pulled again. Counted
    against the transfer's retries, so a bundle that keeps rotting ends FAILED, not in a loop."""
    dtp, relay = transfer.data_transfer_package, transfer.origin_location
    target = storage_for(relay)
    where = relay.qualified_name
    discard_bad_copy(
        session,
        target,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        relay,
        dtp.relative_path,
        reason=f"rotted at rest in {where} (re-read after a failed pull: {exc}); removed to "
        "rebuild the bundle there",
        run_id=run_id,
    )
    session.commit()
    packages = sorted(dtp.raw_data_packages, key=lambda p: p.name)
    sources = {p.id: _verified_copy_at_site(session, p.id, relay) for p in packages}
    missing = [p.name for p in packages if sources[p.id] is None]
    if missing:
        why = (
            f"{exc}; the bundle cannot be rebuilt at {where}: package(s) {', '.join(missing)} "
            f"have no verified copy at {relay.site.short_name} (restore them, then `ccat retry`)"
        )
        return _transfer_failed(session, transfer, why, run_id)
    members = bundle_members(packages, lambda p: storage_for(required(sources[p.id], p.name)))
    try:
        with target.open_write(dtp.relative_path) as out:
            result = write_package(out, members, kind="data_transfer_package", name=dtp.name)
            if result.checksum != dtp.checksum:
                raise ChecksumMismatchError(  # raised inside: nothing is left under the key
                    expected=required(dtp.checksum, f"checksum of {dtp.name}"),
                    actual=result.checksum,
                    algorithm=result.algorithm,
                    location=where,
                    key=dtp.relative_path,
                )
    except (PackageSourceChangedError, StorageError) as err:
        return _transfer_failed(session, transfer, f"{exc}; rebuilding at {where}: {err}", run_id)
    upsert_copy(
        session,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        relay,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        reason=f"rebuilt from the verified copies of its packages at {relay.site.short_name} "
        "after it rotted at rest",
        run_id=run_id,
    )
    return _transfer_failed(
        session, transfer, f"bundle rotted at rest in {where}, rebuilt: {exc}", run_id
    )


def _verified_copy_at_site(
    session: Session, package_id: int, relay: DataLocation
) -> DataLocation | None:
    """A location of ``relay``'s site holding a PRESENT copy of the package: ``relay`` itself
    first, then the others (its archive)."""
    rows = session.execute(
        select(RawDataPackagePhysicalCopy.data_location_id)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package_id,
            RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            DataLocation.site_id == relay.site_id,
            DataLocation.active.is_(True),
        )
    ).scalars()
    ids = sorted(rows, key=lambda i: i != relay.id)
    return session.get(DataLocation, ids[0]) if ids else None


def _wait_for_rebuild(
    session: Session, transfer: DataTransfer, exc: BaseException, run_id: str | None
) -> StageOutcome:
    """Back to PENDING without counting a retry: the bundle is rebuilt at its origin first."""
    dtp = transfer.data_transfer_package
    set_status(
        session,
        transfer,
        Status.PENDING,
        entity_type="data_transfer",
        reason=f"waiting for {dtp.name} to be rebuilt at {dtp.origin_location.qualified_name}",
        data_location_id=transfer.destination_location_id,
        run_id=run_id,
    )
    transfer.failure_reason = str(exc)
    session.commit()
    return StageOutcome(dtp.name, ok=False, error=f"bundle rotted at its origin, rebuilding: {exc}")


def local_root(location: DataLocation) -> Path:
    """The directory of a disk location on this host (unpacking needs a local filesystem)."""
    if not isinstance(location, DiskDataLocation):
        raise PermanentStorageError(
            f"{location.qualified_name} is not a disk location; bundles can only be unpacked "
            "into a disk BUFFER"
        )
    return Path(location.path)


def unpack_data_transfer(
    session: Session,
    transfer: DataTransfer,
    *,
    storage_for: StorageFor,
    run_id: str | None = None,
) -> StageOutcome:
    """Unpack an arrived bundle into its buffer: every RawDataPackage verified, then PRESENT."""
    dtp = transfer.data_transfer_package
    if transfer.unpack_status == Status.COMPLETED:
        return StageOutcome(dtp.name, ok=True, skipped=True)
    buffer = transfer.destination_location
    packages = list(dtp.raw_data_packages)
    expected = {
        f"{p.name}.tar": ExpectedMember(
            size=required(p.size, f"size of package {p.name}"),
            checksum=required(p.checksum, f"checksum of package {p.name}"),
            algorithm=p.checksum_algorithm or "sha256",
        )
        for p in packages
    }
    set_status(
        session,
        transfer,
        Status.IN_PROGRESS,
        entity_type="data_transfer",
        reason=f"unpacking {dtp.name} at {buffer.qualified_name}",
        data_location_id=buffer.id,
        run_id=run_id,
        attr="unpack_status",
    )
    session.commit()
    storage = storage_for(buffer)
    try:
        with (
            pending_on_transient(
                session,
                transfer,
                entity_type="data_transfer",
                attr="unpack_status",
                run_id=run_id,
                data_location_id=buffer.id,
            ),
            stopwatch() as watch,
            storage.open_read(dtp.relative_path) as stream,
        ):
            _unpack_into(stream, buffer, expected, dtp.name, storage.name, dtp.relative_path)
    except PermanentStorageError as exc:
        return _unpack_failed(session, transfer, storage, exc, run_id)
    for p in packages:
        upsert_copy(
            session,
            RawDataPackagePhysicalCopy,
            "raw_data_package_id",
            p.id,
            buffer,
            size=p.size,
            checksum=p.checksum,
            algorithm=p.checksum_algorithm,
            reason=f"unpacked from {dtp.name}, verified against manifest and ops DB",
            run_id=run_id,
        )
    transfer.unpack_failure_reason = None
    set_status(
        session,
        transfer,
        Status.COMPLETED,
        entity_type="data_transfer",
        reason=f"unpacked {len(packages)} packages at {buffer.qualified_name}",
        data_location_id=buffer.id,
        run_id=run_id,
        attr="unpack_status",
    )
    session.commit()
    return StageOutcome(
        dtp.name,
        ok=True,
        metadata=transfer_metadata(
            name=dtp.name,
            size=dtp.size,
            checksum=dtp.checksum,
            algorithm=dtp.checksum_algorithm,
            source=buffer.qualified_name,
            destination=buffer.qualified_name,
            seconds=watch.seconds,
            package_count=len(packages),
        ),
    )


def _unpack_into(
    stream, buffer: DataLocation, expected: dict, name: str, storage_name: str, key: str
) -> None:
    """Unpack into the buffer's directory; an OS error writing there (disk full, root gone) is
    that location's storage error, not a crash."""
    root = local_root(buffer)
    try:
        unpack_package(
            stream,
            root / "raw_data_packages",
            expected=expected,
            kind="data_transfer_package",
            name=name,
            tmp_parent=partial_dir(root),
        )
    except OSError as exc:
        raise map_os_error(exc, location=storage_name, key=key, reading=False, root=root) from exc


def _unpack_failed(
    session: Session,
    transfer: DataTransfer,
    storage: Storage,
    exc: BaseException,
    run_id: str | None,
) -> StageOutcome:
    """The arrived copy is bad: remove it (the verified original is still at the origin) and
    re-transfer, counting towards the transfer's retries."""
    dtp = transfer.data_transfer_package
    buffer = transfer.destination_location
    discard_bad_copy(
        session,
        storage,
        DataTransferPackagePhysicalCopy,
        "data_transfer_package_id",
        dtp.id,
        buffer,
        dtp.relative_path,
        reason=f"arrived copy failed verification, removed for re-transfer: {exc}",
        run_id=run_id,
    )
    transfer.unpack_status = Status.PENDING
    transfer.unpack_failure_reason = str(exc)
    transfer.unpack_retry_count += 1
    outcome = _transfer_failed(session, transfer, exc, run_id)
    if outcome.permanent:
        transfer.unpack_status = Status.FAILED
        session.commit()
    return outcome
