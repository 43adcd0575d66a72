"""PhysicalCopy bookkeeping shared by every stage: one row per (object, location), never deleted.

A copy that reappears at a location (re-transfer, recovery by staging) reuses its row and goes
back to PRESENT; its history is in the audit log. Two runs recording the same copy at once share
the one row (INSERT ... ON CONFLICT DO NOTHING), never fail on it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.storage.base import Storage
from ccat_ops_db.audit import audit
from ccat_ops_db.models import DataLocation, PhysicalCopy, PhysicalCopyStatus, table_of, utcnow
from ccat_ops_db.results import required, rowcount
from ccat_ops_db.session import dialect_insert


def find_copy(
    session: Session, copy_cls: type[PhysicalCopy], fk: str, object_id: int, location_id: int
) -> PhysicalCopy | None:
    return session.scalar(
        select(copy_cls).where(
            getattr(copy_cls, fk) == object_id, copy_cls.data_location_id == location_id
        )
    )


def upsert_copy(
    session: Session,
    copy_cls: type[PhysicalCopy],
    fk: str,
    object_id: int,
    location: DataLocation,
    *,
    size: int | None,
    checksum: str | None,
    algorithm: str | None,
    reason: str,
    status: PhysicalCopyStatus = PhysicalCopyStatus.PRESENT,
    verified_at: datetime | None = None,
    run_id: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> PhysicalCopy:
    """Create or revive the copy of one object at one location, and audit the change."""
    copy = find_copy(session, copy_cls, fk, object_id, location.id)
    old = None
    if copy is None:
        created = _insert_if_absent(session, copy_cls, fk, object_id, location.id)
        copy = required(
            find_copy(session, copy_cls, fk, object_id, location.id),
            f"the {copy_cls.__name__} just recorded at location {location.id}",
        )
        old = None if created else copy.status
    else:
        old = copy.status
    copy.status = status
    copy.size = size
    copy.checksum = checksum
    copy.checksum_algorithm = algorithm
    copy.deleted_at = None
    copy.failure_reason = None
    copy.claimed_by = None
    copy.claimed_at = None
    if verified_at is not None:
        copy.verified_at = verified_at
    session.flush()
    if old != status:
        audit(
            session,
            entity_type="physical_copy",
            entity_id=copy.id,
            old_status=old,
            new_status=status,
            reason=reason,
            data_location_id=location.id,
            run_id=run_id,
            evidence=evidence,
        )
    return copy


def _insert_if_absent(
    session: Session, copy_cls: type[PhysicalCopy], fk: str, object_id: int, location_id: int
) -> bool:
    """INSERT the copy's row unless it exists; True if this call made it. A twin run recording
    the same copy at the same moment (two Dagster instances over one ops DB) is not an error:
    on PostgreSQL this waits for the twin's commit and then does nothing."""
    result = session.execute(
        dialect_insert(session, table_of(PhysicalCopy))
        .values(
            type=copy_cls.__mapper__.polymorphic_identity,
            data_location_id=location_id,
            **{fk: object_id},
        )
        .on_conflict_do_nothing()
    )
    return rowcount(result) == 1


def discard_bad_copy(
    session: Session,
    storage: Storage,
    copy_cls: type[PhysicalCopy],
    fk: str,
    object_id: int,
    location: DataLocation,
    key: str,
    *,
    reason: str,
    run_id: str | None = None,
) -> None:
    """Remove a copy that failed verification (a verified original exists elsewhere) so it is
    made again: the object is deleted and its row marked DELETED with the reason."""
    storage.delete(key)
    copy = find_copy(session, copy_cls, fk, object_id, location.id)
    if copy is None:
        return
    audit(
        session,
        entity_type="physical_copy",
        entity_id=copy.id,
        old_status=copy.status,
        new_status=PhysicalCopyStatus.DELETED,
        reason=reason,
        data_location_id=location.id,
        run_id=run_id,
    )
    copy.status = PhysicalCopyStatus.DELETED
    copy.deleted_at = utcnow()
