"""Status changes of an operation row, always audited, and the verified copy a transfer row tracks.

Every stage moves its operation (package, bundle, DataTransfer, LongTermArchiveTransfer)
through PENDING -> IN_PROGRESS -> COMPLETED the same way; this module is that one way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.copy import CopyResult, copy_object
from ccat_dagster.storage.errors import TransientStorageError
from ccat_ops_db.audit import audit
from ccat_ops_db.models import Status, utcnow


def set_status(
    session: Session,
    operation: Any,
    new: Any,
    *,
    entity_type: str,
    reason: str,
    data_location_id: int | None = None,
    run_id: str | None = None,
    evidence: dict[str, Any] | None = None,
    attr: str = "status",
) -> None:
    """Change ``operation.<attr>`` and record the change in the audit log."""
    old = getattr(operation, attr)
    setattr(operation, attr, new)
    audit(
        session,
        entity_type=entity_type,
        entity_id=operation.id,
        old_status=old,
        new_status=new,
        reason=reason,
        data_location_id=data_location_id,
        run_id=run_id,
        evidence=evidence,
    )


def tracked_copy(
    session: Session,
    transfer: Any,
    *,
    entity_type: str,
    source: Storage,
    destination: Storage,
    key: str,
    checksum: str | None,
    algorithm: str | None,
    size: int | None,
    reason: str,
    done_reason: str,
    destination_id: int,
    run_id: str | None,
) -> CopyResult:
    """Copy ``key`` from ``source`` to ``destination`` (verified against ``checksum``) for a
    transfer row: IN_PROGRESS (committed) before, COMPLETED with bytes and throughput after.

    A transient fault puts the row back to PENDING and re-raises (Dagster's RetryPolicy tries
    again); a permanent one (mismatch, missing source) propagates for the caller's retry
    bookkeeping. The caller commits the COMPLETED state.
    """
    set_status(
        session,
        transfer,
        Status.IN_PROGRESS,
        entity_type=entity_type,
        reason=reason,
        data_location_id=destination_id,
        run_id=run_id,
    )
    transfer.started_at = utcnow()
    transfer.run_id = run_id
    session.commit()
    try:
        result = copy_object(
            source,
            key,
            destination,
            key,
            expected_checksum=checksum,
            algorithm=algorithm or "sha256",
            size_hint=size,
        )
    except TransientStorageError:
        transfer.status = Status.PENDING
        session.commit()
        raise
    transfer.bytes_transferred = result.size
    transfer.throughput_bytes_per_s = result.bytes_per_s
    transfer.finished_at = utcnow()
    transfer.failure_reason = None
    set_status(
        session,
        transfer,
        Status.COMPLETED,
        entity_type=entity_type,
        reason=done_reason,
        data_location_id=destination_id,
        run_id=run_id,
        evidence={"size": result.size, "checksum": result.checksum, "seconds": result.seconds},
    )
    return result
