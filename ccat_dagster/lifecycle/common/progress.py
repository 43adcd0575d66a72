"""Status changes of an operation row, always audited, and the verified copy a transfer row tracks.

Every stage moves its operation (package, bundle, DataTransfer, LongTermArchiveTransfer)
through PENDING -> IN_PROGRESS -> COMPLETED the same way; this module is that one way. A
transient storage fault (a dropped connection, or a location that does not answer) puts the row
back to PENDING, audited, without counting a retry, and propagates: the caller (Dagster's retry
policy, or the stage runner that defers work waiting for a location) decides what comes next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


@contextmanager
def pending_on_transient(
    session: Session,
    operations: Any | Sequence[Any],
    *,
    entity_type: str,
    attr: str = "status",
    run_id: str | None = None,
    data_location_id: int | None = None,
) -> Iterator[None]:
    """Work on ``operations`` (one row or several); on a TransientStorageError (including a
    location that is unavailable) put each row that is SCHEDULED or IN_PROGRESS back to
    PENDING, audited with the error and committed, ``retry_count`` untouched, and re-raise."""
    rows = list(operations) if isinstance(operations, list | tuple) else [operations]
    try:
        yield
    except TransientStorageError as exc:
        session.rollback()  # nothing half-done of this attempt is kept
        for row in rows:
            if getattr(row, attr) in (Status.SCHEDULED, Status.IN_PROGRESS):
                set_status(
                    session,
                    row,
                    Status.PENDING,
                    entity_type=entity_type,
                    reason=f"waiting, not counted as a failure: {exc}",
                    data_location_id=data_location_id,
                    run_id=run_id,
                    attr=attr,
                )
        session.commit()
        raise


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

    A transient fault (also a location that does not answer) puts the row back to PENDING and
    re-raises, counting nothing; a permanent one (mismatch, missing source) propagates for the
    caller's retry bookkeeping. The caller commits the COMPLETED state.
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
    with pending_on_transient(
        session, transfer, entity_type=entity_type, run_id=run_id, data_location_id=destination_id
    ):
        result = copy_object(
            source,
            key,
            destination,
            key,
            expected_checksum=checksum,
            algorithm=algorithm or "sha256",
            size_hint=size,
        )
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
