"""Retry bookkeeping: get_retry_count, reset_state_on_failure, mark_permanent_failure
(docs/lifecycle.md: operation status).

Transient storage faults are retried by Dagster's RetryPolicy inside a run and never count here.
What counts is a failure that a fresh attempt from the source may cure (a checksum mismatch,
a corrupt archive): the operation goes back to PENDING with ``retry_count`` + 1 until the
policy's ``max_retries``, then FAILED with the reason, and the RawDataPackages it carries become
PackageState.FAILED so an operator sees them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from ccat_ops_db.audit import audit
from ccat_ops_db.models import PackageState, RawDataPackage, Status


def get_retry_count(operation: Any) -> int:
    """How many times this operation (package, transfer, ...) has failed and been retried."""
    return int(operation.retry_count or 0)


def reset_state_on_failure(
    session: Session,
    operation: Any,
    exc: BaseException | str,
    *,
    entity_type: str,
    status_attr: str = "status",
    retry_attr: str = "retry_count",
    reason_attr: str = "failure_reason",
    run_id: str | None = None,
) -> None:
    """Put the operation back to PENDING for another attempt, counting the failure."""
    old = getattr(operation, status_attr)
    setattr(operation, retry_attr, int(getattr(operation, retry_attr) or 0) + 1)
    setattr(operation, reason_attr, str(exc))
    setattr(operation, status_attr, Status.PENDING)
    audit(
        session,
        entity_type=entity_type,
        entity_id=operation.id,
        old_status=old,
        new_status=Status.PENDING,
        reason=f"retry {getattr(operation, retry_attr)}: {exc}",
        run_id=run_id,
    )


def mark_permanent_failure(
    session: Session,
    operation: Any,
    exc: BaseException | str,
    *,
    entity_type: str,
    packages: Iterable[RawDataPackage] = (),
    status_attr: str = "status",
    reason_attr: str = "failure_reason",
    run_id: str | None = None,
) -> None:
    """FAILED with the reason; the RawDataPackages concerned become PackageState.FAILED."""
    old = getattr(operation, status_attr)
    setattr(operation, status_attr, Status.FAILED)
    setattr(operation, reason_attr, str(exc))
    audit(
        session,
        entity_type=entity_type,
        entity_id=operation.id,
        old_status=old,
        new_status=Status.FAILED,
        reason=f"permanent failure: {exc}",
        run_id=run_id,
    )
    for package in packages:
        if package.state == PackageState.ARCHIVED:
            continue  # a package already safe in an LTA stays ARCHIVED
        audit(
            session,
            entity_type="raw_data_package",
            entity_id=package.id,
            old_status=package.state,
            new_status=PackageState.FAILED,
            reason=f"{entity_type} {operation.id} failed permanently: {exc}",
            run_id=run_id,
        )
        package.state = PackageState.FAILED
        package.failure_reason = str(exc)


def handle_failure(
    session: Session,
    operation: Any,
    exc: BaseException | str,
    *,
    max_retries: int,
    entity_type: str,
    packages: Iterable[RawDataPackage] = (),
    status_attr: str = "status",
    retry_attr: str = "retry_count",
    reason_attr: str = "failure_reason",
    run_id: str | None = None,
) -> bool:
    """Retry or fail for good; returns True when the failure is now permanent.

    As with Celery's ``max_retries``: the first attempt plus ``max_retries`` retries."""
    if int(getattr(operation, retry_attr) or 0) + 1 > max_retries:
        setattr(operation, retry_attr, int(getattr(operation, retry_attr) or 0) + 1)
        mark_permanent_failure(
            session,
            operation,
            exc,
            entity_type=entity_type,
            packages=packages,
            status_attr=status_attr,
            reason_attr=reason_attr,
            run_id=run_id,
        )
        return True
    reset_state_on_failure(
        session,
        operation,
        exc,
        entity_type=entity_type,
        status_attr=status_attr,
        retry_attr=retry_attr,
        reason_attr=reason_attr,
        run_id=run_id,
    )
    return False
